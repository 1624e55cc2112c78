"""
Split mode's Warning events: a split agent has no Kubernetes access, so the refusals its
endpoint makes for a reason a pod's owner can act on (another pod's role asked for:
IAMRoleForbidden; STS failed for the pod: IAMCredentialsFailed) are reported to the server,
which checks the pod is on the agent's node and writes the events with its EventRecorder.

Agent side, ``RefusalReporter`` (the endpoint's EventSink): ``warn`` runs on the request
path and only updates memory; repeats are aggregated per (pod uid, reason) into a count and
the latest message, in at most ``max_pending`` pairs (a new pair beyond it is dropped and
counted: an unreachable server costs bounded memory). One owned task sends them, a batch per
ReportRefusals call, each call with a deadline, on the channel of the open WatchNode stream
(so to the server that serves this node); after a failure, or while no stream is open, it
waits the shared back-off. The server's EventRecorder does the per-interval aggregation into
Event writes, as in agent mode.

Counts are of occurrences since the last report; a report whose answer was lost is sent
again, so an event's count may be slightly high after a broken call, never low.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self

import grpc
import structlog
from prometheus_client import Counter

from podiam.backoff import Backoff
from podiam.observability.metrics import Metrics
from podiam.pods import PodInfo
from podiam.remote import podiam_pb2 as pb
from podiam.remote import podiam_pb2_grpc as pb_grpc
from podiam.settings import ReportSettings

log = structlog.stdlib.get_logger(__name__)

MAX_MESSAGE = 1024
"""Characters of a reported message that are kept (the server's recorder cuts at the same)."""


@dataclass(frozen=True)
class ReportedRefusal:
    """One (pod, reason) as an agent reported it; the pod is named, not yet trusted."""

    pod_uid: str
    namespace: str
    name: str
    reason: str
    message: str
    count: int


class RefusalRecorder(Protocol):
    """The server's side: records a reported refusal if the pod is on ``node``; whether it did."""

    def record(self, node: str, refusal: ReportedRefusal) -> bool: ...


def refusals_from_wire(request: pb.ReportRefusalsRequest, max_count: int) -> list[ReportedRefusal]:
    return [ReportedRefusal(r.pod_uid, r.namespace, r.name, r.reason, r.message[:MAX_MESSAGE],
                            min(max(r.count, 1), max_count)) for r in request.refusals]


@dataclass(eq=False)
class _Pending:
    pod: PodInfo
    reason: str
    message: str
    count: int


class ReportMetrics:
    def __init__(self, metrics: Metrics) -> None:
        r = metrics.registry
        self.sent = Counter("podiam_remote_refusals_reported_total",
                            "Refusal occurrences reported to a podiam server for its Warning events.", registry=r)
        self.dropped = Counter("podiam_remote_refusals_dropped_total",
                               "Refusal occurrences dropped unreported, by reason (buffer_full, shutdown).", ["reason"],
                               registry=r)
        self.failures = Counter("podiam_remote_report_failures_total",
                                "ReportRefusals calls that failed or could not be made, by code.", ["code"],
                                registry=r)


class RefusalReporter:
    """A split agent's EventSink; ``async with`` owns the one task that sends the reports."""

    def __init__(self, node: str, channel: Callable[[], grpc.aio.Channel | None], settings: ReportSettings,
                 metrics: Metrics, *, rng: Callable[[], float] = random.random) -> None:
        """channel: the open stream's channel, or None while no server is connected."""
        self._node, self._channel, self._settings = node, channel, settings
        self._metrics = ReportMetrics(metrics)
        self._backoff = Backoff(settings.retry_initial, settings.retry_max)
        self._rng = rng
        self._pending: collections.OrderedDict[tuple[str, str], _Pending] = collections.OrderedDict()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        """(pod, reason) pairs waiting to be sent."""
        return len(self._pending)

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._run(), name="refusal-reporter")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self._stop_sender()

    async def _stop_sender(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def flush(self) -> None:
        """At shutdown, once the endpoint takes no more requests and while the stream is still
        open: what is pending is sent now, not left to a back-off that will never end; what
        cannot be sent within ``call_timeout`` is dropped and counted (reason shutdown)."""
        await self._stop_sender()  # one sender at a time, or a batch would be counted twice
        code: str | None = None
        try:
            async with asyncio.timeout(self._settings.call_timeout):
                while self._pending and (code := await self._send()) is None:
                    pass
        except TimeoutError:
            code = "DEADLINE_EXCEEDED"
        if code is not None:
            self._metrics.failures.labels(code).inc()
        if self._pending:
            lost = sum(entry.count for entry in self._pending.values())
            self._metrics.dropped.labels("shutdown").inc(lost)
            log.warning("refusals not reported to the podiam server at shutdown", code=code,
                        occurrences=lost, pods=len({uid for uid, _ in self._pending}))
            self._pending.clear()

    # -- the request path: memory only ---------------------------------------------------------

    def warn(self, pod: PodInfo, reason: str, message: str) -> None:
        key = (pod.uid, reason)
        entry = self._pending.get(key)
        if entry is not None:
            entry.count += 1
            entry.message = message[:MAX_MESSAGE]
        elif len(self._pending) >= self._settings.max_pending:
            self._metrics.dropped.labels("buffer_full").inc()
            return
        else:
            self._pending[key] = _Pending(pod, reason, message[:MAX_MESSAGE], 1)
        self._wake.set()

    def forget(self, pod: PodInfo) -> None:
        for key in [k for k in self._pending if k[0] == pod.uid]:
            del self._pending[key]

    # -- the sender ----------------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                code = await self._send()
                if code is None:
                    failures = 0
                    continue
                failures += 1
                self._metrics.failures.labels(code).inc()
                delay = self._backoff.delay(failures, self._rng())
                (log.warning if failures == 1 else log.debug)(
                    "refusals not reported to the podiam server; retrying", code=code, pending=len(self._pending),
                    retry_in=round(delay, 2))
                await asyncio.sleep(delay)

    async def _send(self) -> str | None:
        """One ReportRefusals call with the oldest pairs; None on success, else why it failed."""
        channel = self._channel()
        if channel is None:
            return "no_stream"
        batch = [(key, entry, entry.count) for key, entry in list(self._pending.items())[:self._settings.batch]]
        request = pb.ReportRefusalsRequest(node=self._node, refusals=[
            pb.ReportedRefusal(pod_uid=e.pod.uid, namespace=e.pod.namespace, name=e.pod.name, reason=e.reason,
                               message=e.message, count=count) for _, e, count in batch])
        try:
            await pb_grpc.PodiamStub(channel).ReportRefusals(request, timeout=self._settings.call_timeout)
        except grpc.aio.AioRpcError as e:
            return e.code().name
        except grpc.aio.UsageError:  # the stream's channel closed under us: the next one is used
            return "channel_closed"
        for key, entry, count in batch:
            entry.count -= count  # occurrences during the call stay for the next report
            if entry.count <= 0 and self._pending.get(key) is entry:
                del self._pending[key]
        self._metrics.sent.inc(sum(count for _, _, count in batch))
        return None
