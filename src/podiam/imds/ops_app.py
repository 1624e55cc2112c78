"""
The operator-facing endpoint on the metrics port: /metrics, /healthz, /readyz, and with
--debug /debug/pods (rendered by ``debug_pods`` from the pod index and the credential
cache, which it reads through small protocols: imds/ does not import kube/ or sts/).

Separate from the app port on purpose: every pod can reach the app port through the DNAT
rule, and metrics name roles and pods (a complaint about kube2iam, which served both on one).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from podiam.credentials import Identity
from podiam.observability.metrics import Metrics
from podiam.pods import PodEntry


class IndexedPods(Protocol):
    """The pod index, as /debug/pods reads it."""

    def entries(self) -> list[PodEntry]: ...


class CachedIdentity(Protocol):
    """What the credential cache knows about one identity (sts.cache.EntryState)."""

    @property
    def expiration(self) -> dt.datetime | None: ...

    @property
    def last_error_code(self) -> str | None: ...

    @property
    def fetching(self) -> bool: ...


class CacheStates(Protocol):
    """The credential cache, as /debug/pods reads it."""

    def state(self) -> Mapping[Identity, CachedIdentity]: ...


def debug_pods(index: IndexedPods, cache: CacheStates) -> list[dict[str, Any]]:
    """The pod index and each identity's cache state, for /debug/pods. No secrets."""
    state = cache.state()
    rows = []
    for entry in sorted(index.entries(), key=lambda e: (e.pod.namespace, e.pod.name)):
        row: dict[str, Any] = {"namespace": entry.pod.namespace, "pod": entry.pod.name, "ip": entry.pod.ip,
                               "uid": entry.pod.uid}
        if entry.identity is None:
            row["refused"] = str(entry.problem)
        else:
            cached = state.get(entry.identity)
            row |= {"role_arn": entry.identity.role_arn, "session_name": entry.identity.session_name,
                    "credentials_expire": cached.expiration.isoformat() if cached and cached.expiration else None,
                    "last_error": cached.last_error_code if cached else None,
                    "fetching": cached.fetching if cached else False}
        rows.append(row)
    return rows


def make_ops_app(
    metrics: Metrics,
    not_ready: Callable[[], str | None],
    pods_report: Callable[[], list[dict[str, Any]]] | None = None,
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
        assert pods_report is not None
        return web.json_response({"pods": pods_report()})

    app = web.Application()
    if pods_report is not None:  # --debug: on this port and loopback only, never where pods are sent
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
