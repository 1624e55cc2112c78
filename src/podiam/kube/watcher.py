"""
Keeps an in-memory view (a sink) equal to the API server's: list, then watch from the
list's resourceVersion; resume from the last seen version after a dropped stream; re-list
(replacing the view, so objects deleted meanwhile go) after 410 Gone. One loop serves the
pod index (this node's pods) and the namespace index.

lightkube's own 410 handling restarts the watch without a version, which replays the
current pods as ADDED but never reports the ones deleted during the gap; their IPs would
stay claimed by dead pods. So this loop owns list, resume and re-list itself.

Failures are retried forever, with the shared capped back-off (podiam.backoff): an API
that is unreachable for days, or RBAC that is missing, must leave the agent serving what it
last saw and resuming when the API answers, never exiting. ``health()`` tells readiness
and the metrics whether the view was ever synced and since when it has been failing.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import httpx2 as httpx
import lightkube
import structlog
from lightkube.core.exceptions import ApiError
from lightkube.core.resource import NamespacedResource

from podiam.backoff import Backoff
from podiam.observability.metrics import Metrics
from podiam.settings import KubeSettings

log = structlog.stdlib.get_logger(__name__)

MAX_ERROR = 200
"""Characters of an error message kept in the health state (it is shown on /readyz)."""


@dataclass(frozen=True)
class WatchHealth:
    """What a watcher can say about itself; no secrets (error texts are the client's)."""

    synced: bool
    """A list has succeeded at least once: the sink has held a complete view since."""
    failing_since: float | None
    """Monotonic seconds of the first failure since the last success; None when not failing."""
    last_error: str | None
    """``Type: message`` of the latest failure, cut to MAX_ERROR; None when not failing."""
    failures: int
    """Consecutive failed attempts (what the back-off counts)."""

    def failing_for(self, now: float) -> float:
        """Seconds the watch has been failing at monotonic ``now``; 0 when it is not."""
        return 0.0 if self.failing_since is None else max(now - self.failing_since, 0.0)


MIN_QUIET_STREAM = 1.0
"""Seconds: a watch stream that ends sooner than this without an event counts as a failure."""


class WatchEndedAtOnce(Exception):
    """The API server closed a watch stream at once, with nothing in it."""


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
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        """
        what: how logs and /readyz name this view, e.g. ``pods on node-1``.
        sleep: waits out a back-off delay (tests pass one that advances a fake clock).
        clock: monotonic seconds, for how long the watch has been failing.
        rng: draws in [0, 1) for the back-off's jitter.
        """
        self._client = client
        self._resource = resource
        self._sink = sink
        self._settings = settings
        self._metrics = metrics.watches
        self._fields = fields
        self.what = what
        self._sleep, self._clock, self._rng = sleep, clock, rng
        self._backoff = Backoff(settings.watch_retry_initial, settings.watch_retry_max,
                                settings.watch_retry_jitter)
        self._label = resource.__name__.lower()
        self._synced = False
        self._failing_since: float | None = None
        self._last_error: str | None = None
        self._failures = 0
        self._metrics.watch_synced.labels(self._label).set(0)
        self._metrics.watch_failing_seconds.labels(self._label).set_function(lambda: self.health().failing_for(clock()))
        # ALL_NS for namespaced resources: without it lightkube uses the kubeconfig's namespace.
        namespaced = issubclass(resource, NamespacedResource)
        self._scope: dict[str, Any] = {"namespace": lightkube.ALL_NS} if namespaced else {}

    def health(self) -> WatchHealth:
        return WatchHealth(synced=self._synced, failing_since=self._failing_since, last_error=self._last_error,
                           failures=self._failures)

    async def run(self) -> None:
        version: str | None = None
        while True:
            try:
                if version is None:
                    version = await self._relist()
                    self._succeeded(reset_backoff=False)
                opened, events = self._clock(), 0
                async for seen in self._watch(version):
                    version, events = seen, events + 1
                    self._succeeded(reset_backoff=True)
                if not events and self._clock() - opened < MIN_QUIET_STREAM:
                    # A stream the server ends at once, empty, is retried like a failure: an API
                    # (or proxy) that closes every watch must not turn this loop into a busy one.
                    delay = self._failed(WatchEndedAtOnce("the API server ended the watch at once, with no event"))
                    log.warning("watch ended at once; resuming", resource=self._label, view=self.what,
                                resource_version=version, retry_in=round(delay, 1))
                    self._metrics.watch_restarts.labels(self._label, "resume").inc()
                    await self._sleep(delay)
            except WatchGone:
                log.info("watch resourceVersion expired (410 Gone); re-listing", resource=self._label,
                         view=self.what, resource_version=version)
                self._metrics.watch_restarts.labels(self._label, "relist").inc()
                version = None
            except Exception as e:
                # Expected: httpx errors, timeouts, OSError; ValueError for a malformed object or
                # line; lightkube's own KeyError for an error answer without a Content-Type.
                delay = self._failed(e)
                # resource_version None: the next attempt starts with a fresh list.
                log.warning("watch interrupted; resuming", resource=self._label, view=self.what,
                            error=self._last_error, resource_version=version, retry_in=round(delay, 1))
                self._metrics.watch_restarts.labels(self._label, "resume").inc()
                await self._sleep(delay)

    def _succeeded(self, *, reset_backoff: bool) -> None:
        if not self._synced:
            self._synced = True
            self._metrics.watch_synced.labels(self._label).set(1)
        self._failing_since, self._last_error = None, None
        # A list that succeeds does not reset the back-off: a watch that fails right after
        # every list must not turn into a tight loop of lists.
        if reset_backoff:
            self._failures = 0

    def _failed(self, error: Exception) -> float:
        """Record one failure; the seconds to wait before the next attempt."""
        self._failures += 1
        if self._failing_since is None:
            self._failing_since = self._clock()
        self._last_error = f"{type(error).__name__}: {error}"[:MAX_ERROR]
        return self._backoff.delay(self._failures, self._rng())

    async def _relist(self) -> str:
        listing = self._client.list(self._resource, fields=self._fields, **self._scope)
        objects = [obj async for obj in listing]
        self._sink.replace(objects)
        log.info("watch listed", resource=self._label, view=self.what, objects=len(objects))
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
        inactivity = self._settings.watch_timeout + self._settings.watch_inactivity_margin
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
                # Events already read from the socket come without a suspension: catching up on a
                # backlog would hold the loop for all of them, and the server's streams to the
                # agents and its probes with it (measured: sends stalled 5-9 s, benchmark 8).
                await asyncio.sleep(0)
                yield version
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
