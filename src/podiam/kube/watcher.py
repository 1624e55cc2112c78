"""
Keeps the pod index equal to the API server's view of this node's pods: list, then watch
from the list's resourceVersion; resume from the last seen version after a dropped stream;
re-list (replacing the index, so pods deleted meanwhile go) after 410 Gone.

lightkube's own 410 handling restarts the watch without a version, which replays the
current pods as ADDED but never reports the ones deleted during the gap; their IPs would
stay claimed by dead pods. So this loop owns list, resume and re-list itself.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from typing import Any

import httpx2 as httpx
import lightkube
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import Pod

from podiam.kube.pod_index import PodIndex
from podiam.observability.metrics import Metrics
from podiam.pods import PodInfo
from podiam.settings import KubeSettings

log = logging.getLogger(__name__)

INACTIVITY_MARGIN = 30.0
"""Seconds past the server-side watch timeout after which a silent stream is presumed dead."""


class WatchGone(Exception):
    """The API server no longer has our resourceVersion (410): only a re-list helps."""


def pod_info(pod: Pod) -> PodInfo:
    """The fields podiam needs from a Pod object."""
    meta, spec, status = pod.metadata, pod.spec, pod.status
    assert meta is not None and meta.name is not None
    namespace = meta.namespace or "default"
    return PodInfo(
        namespace=namespace,
        name=meta.name,
        uid=meta.uid or f"{namespace}/{meta.name}",
        ip=(status.podIP or None) if status else None,
        phase=status.phase if status else None,
        host_network=bool(spec and spec.hostNetwork),
        deleting=meta.deletionTimestamp is not None,
        service_account=spec.serviceAccountName if spec else None,
        annotations=dict(meta.annotations or {}),
    )


def _is_gone(error: BaseException) -> bool:
    if isinstance(error, ApiError) and error.status is not None:
        return error.status.code == 410
    return isinstance(error, httpx.HTTPStatusError) and error.response.status_code == 410


class PodWatcher:
    """The root task that feeds the pod index; run() returns only when cancelled."""

    def __init__(
        self, client: lightkube.AsyncClient, index: PodIndex, settings: KubeSettings, metrics: Metrics
    ) -> None:
        self._client = client
        self._index = index
        self._settings = settings
        self._metrics = metrics
        self._fields: dict[str, Any] = {"spec.nodeName": settings.node_name}

    async def run(self) -> None:
        version: str | None = None
        failures = 0
        while True:
            try:
                if version is None:
                    version = await self._relist()
                async for seen in self._watch(version):
                    version, failures = seen, 0
            except WatchGone:
                log.info("pod watch: resourceVersion %s expired (410 Gone); re-listing", version)
                self._metrics.watch_restarts.labels("relist").inc()
                version = None
            except (httpx.HTTPError, TimeoutError, OSError, ValueError) as e:
                # ValueError: a malformed object or line; the stream is no longer trusted.
                failures += 1
                delay = min(self._settings.watch_retry_max, 0.1 * 2**failures) * random.uniform(0.5, 1.0)  # noqa: S311
                log.warning("pod watch interrupted (%s: %s); resuming from %s in %.1fs",
                            type(e).__name__, e, version or "a fresh list", delay)
                self._metrics.watch_restarts.labels("resume").inc()
                await asyncio.sleep(delay)

    async def _relist(self) -> str:
        # ALL_NS: without it lightkube lists the kubeconfig's namespace only.
        listing = self._client.list(Pod, namespace=lightkube.ALL_NS, fields=self._fields)
        pods = [pod_info(pod) async for pod in listing]
        self._index.replace(pods)
        self._metrics.pods_indexed.set(len(self._index))
        self._metrics.index_synced.set(1)
        log.info("pod index synced: %d active pods of %d on node %s",
                 len(self._index), len(pods), self._settings.node_name)
        return listing.resourceVersion

    async def _watch(self, version: str) -> AsyncIterator[str]:
        """Apply events from ``version`` on; yields each new resourceVersion."""
        stream = self._client.watch(
            Pod,
            namespace=lightkube.ALL_NS,
            fields=self._fields,
            resource_version=version,
            server_timeout=int(self._settings.watch_timeout),
        ).__aiter__()
        inactivity = self._settings.watch_timeout + INACTIVITY_MARGIN
        try:
            while True:
                try:
                    async with asyncio.timeout(inactivity):
                        kind, pod = await anext(stream)
                except StopAsyncIteration:
                    return
                except httpx.HTTPStatusError as e:
                    if _is_gone(e):
                        raise WatchGone() from e
                    raise
                if pod.metadata is not None and pod.metadata.resourceVersion:
                    version = pod.metadata.resourceVersion
                if kind in ("ADDED", "MODIFIED"):
                    self._index.upsert(pod_info(pod))
                elif kind == "DELETED":
                    self._index.delete(pod_info(pod))
                self._metrics.pods_indexed.set(len(self._index))
                yield version
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
