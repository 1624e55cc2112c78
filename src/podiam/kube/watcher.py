"""
Keeps an in-memory view (a sink) equal to the API server's: list, then watch from the
list's resourceVersion; resume from the last seen version after a dropped stream; re-list
(replacing the view, so objects deleted meanwhile go) after 410 Gone. One loop serves the
pod index (this node's pods) and the namespace index.

lightkube's own 410 handling restarts the watch without a version, which replays the
current pods as ADDED but never reports the ones deleted during the gap; their IPs would
stay claimed by dead pods. So this loop owns list, resume and re-list itself.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from typing import Any, Protocol

import httpx2 as httpx
import lightkube
from lightkube.core.exceptions import ApiError
from lightkube.core.resource import NamespacedResource

from podiam.observability.metrics import Metrics
from podiam.settings import KubeSettings

log = logging.getLogger(__name__)

INACTIVITY_MARGIN = 30.0
"""Seconds past the server-side watch timeout after which a silent stream is presumed dead."""


class WatchGone(Exception):
    """The API server no longer has our resourceVersion (410): only a re-list helps."""


def _is_gone(error: BaseException) -> bool:
    if isinstance(error, ApiError) and error.status is not None:
        return error.status.code == 410
    return isinstance(error, httpx.HTTPStatusError) and error.response.status_code == 410


class WatchSink(Protocol):
    """Where a watcher puts what it sees. Objects are lightkube resource instances."""

    def replace(self, objects: list[Any]) -> None:
        """The complete current state (after a list): anything not in it is gone."""

    def apply(self, kind: str, obj: Any) -> None:
        """One watch event: ADDED, MODIFIED or DELETED."""


class ListWatcher:
    """A root task that feeds one sink; run() returns only when cancelled."""

    def __init__(
        self,
        client: lightkube.AsyncClient,
        resource: type[Any],
        sink: WatchSink,
        settings: KubeSettings,
        metrics: Metrics,
        *,
        fields: dict[str, Any] | None = None,
        what: str,
    ) -> None:
        self._client = client
        self._resource = resource
        self._sink = sink
        self._settings = settings
        self._metrics = metrics
        self._fields = fields
        self._what = what
        # ALL_NS for namespaced resources: without it lightkube uses the kubeconfig's namespace.
        namespaced = issubclass(resource, NamespacedResource)
        self._scope: dict[str, Any] = {"namespace": lightkube.ALL_NS} if namespaced else {}

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
                log.info("%s watch: resourceVersion %s expired (410 Gone); re-listing", self._what, version)
                self._metrics.watch_restarts.labels(self._resource.__name__.lower(), "relist").inc()
                version = None
            except Exception as e:
                # Expected: httpx errors, timeouts, OSError; ValueError for a malformed object or
                # line; lightkube's own KeyError for an error answer without a Content-Type.
                failures += 1
                delay = min(self._settings.watch_retry_max, 0.1 * 2**failures) * random.uniform(0.5, 1.0)  # noqa: S311
                log.warning("%s watch interrupted (%s: %s); resuming from %s in %.1fs",
                            self._what, type(e).__name__, e, version or "a fresh list", delay)
                self._metrics.watch_restarts.labels(self._resource.__name__.lower(), "resume").inc()
                await asyncio.sleep(delay)

    async def _relist(self) -> str:
        listing = self._client.list(self._resource, fields=self._fields, **self._scope)
        objects = [obj async for obj in listing]
        self._sink.replace(objects)
        log.info("%s listed: %d", self._what, len(objects))
        return listing.resourceVersion

    async def _watch(self, version: str) -> AsyncIterator[str]:
        """Apply events from ``version`` on; yields each new resourceVersion."""
        stream = self._client.watch(
            self._resource,
            fields=self._fields,
            resource_version=version,
            server_timeout=int(self._settings.watch_timeout),
            **self._scope,
        ).__aiter__()
        inactivity = self._settings.watch_timeout + INACTIVITY_MARGIN
        try:
            while True:
                try:
                    async with asyncio.timeout(inactivity):
                        kind, obj = await anext(stream)
                except StopAsyncIteration:
                    return
                except httpx.HTTPStatusError as e:
                    if _is_gone(e):
                        raise WatchGone() from e
                    raise
                if obj.metadata is not None and obj.metadata.resourceVersion:
                    version = obj.metadata.resourceVersion
                if kind in ("ADDED", "MODIFIED", "DELETED"):  # BOOKMARK only moves the version
                    self._sink.apply(kind, obj)
                yield version
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
