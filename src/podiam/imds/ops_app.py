"""
The operator-facing endpoint on the metrics port: /metrics, /healthz, /readyz.

Separate from the app port on purpose: every pod can reach the app port through the DNAT
rule, and metrics name roles and pods (a complaint about kube2iam, which served both on one).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from podiam.observability.metrics import Metrics


def make_ops_app(
    metrics: Metrics,
    not_ready: Callable[[], str | None],
    debug_pods: Callable[[], list[dict[str, Any]]] | None = None,
) -> web.Application:
    """``not_ready`` says why the agent is not ready, or None when it is (podiam.readiness)."""

    async def metrics_handler(request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        reason = not_ready()
        if reason is None:
            return web.Response(text="ready\n")
        return web.Response(status=503, text=f"{reason}\n")

    async def pods_handler(request: web.Request) -> web.Response:
        # It names every pod, IP and role of the node: for someone on the node, not for the
        # pods, which can reach HOST_IP:metrics-port too.
        if not _is_loopback(request.remote):
            return web.Response(status=403, text="/debug/pods is served to loopback callers only\n")
        assert debug_pods is not None
        return web.json_response({"pods": debug_pods()})

    app = web.Application()
    if debug_pods is not None:  # --debug: on this port and loopback only, never where pods are sent
        app.router.add_get("/debug/pods", pods_handler)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


def _is_loopback(remote: str | None) -> bool:
    try:
        return remote is not None and ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False
