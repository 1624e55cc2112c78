"""
Warning Events on the pods podiam refuses or fails, so that a pod's owner sees why with
``kubectl describe pod`` instead of debugging blind (kube2iam records nothing; kiam did this).

``warn(pod, reason, message)`` runs on the metadata request path: it only updates memory.
One background task, the writer, does every API call. Repeats are aggregated as the
kubelet's recorder does it: per (pod uid, reason) the first occurrence creates an Event,
later ones bump an in-memory count, and at most one merge PATCH per ``interval`` writes
``count``, ``lastTimestamp`` and the latest ``message``. A pod hammering the endpoint is then
one API write a minute, not one per request.

Counts are absolute, never increments, so a write whose answer was lost is safe to repeat;
and an Event's name is chosen once per create, so a create retried after a lost answer meets
409 and turns into a patch rather than a duplicate. A patch answered 404 (the Event expired,
after about an hour by default, or was deleted) creates a new Event.

Events are best effort. A failed write is logged (once per reason until a write for that
reason succeeds again), counted, and dropped: nothing retries on its own. Its occurrences
stay counted, and the next occurrence of the same (pod, reason) writes them, still at most
once per interval.

``warn_node(reason, message)`` records the same kind of Warning on this agent's Node (the
DNAT rule was found missing and restored): what is wrong with the node, not with a pod, is
seen with ``kubectl describe node`` and ``kubectl get events``.

Intervals run on the injected ``clock``; the writer sleeps on the event loop until the
earliest due write, or until ``warn`` (or ``wake``) tells it something changed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import heapq
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Self

import lightkube
import structlog
from lightkube.core.exceptions import ApiError
from lightkube.models.core_v1 import EventSource, ObjectReference
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Event
from lightkube.types import PatchType

from podiam.observability.metrics import Metrics
from podiam.pods import PodInfo
from podiam.settings import EventSettings

log = structlog.stdlib.get_logger(__name__)

COMPONENT = "podiam"
"""source.component and reportingComponent: what ``kubectl describe`` shows as "From"."""

MAX_MESSAGE = 1024
"""Characters of a message that are kept; the rest is cut (an STS message can be long)."""

MAX_NAME = 253
"""The longest object name the API server accepts (a DNS subdomain)."""

Outcome = Literal["created", "updated"]


def _utc(moment: dt.datetime) -> dt.datetime:
    """UTC, whole seconds: Event timestamps are metav1.Time, which has second precision."""
    return moment.astimezone(dt.UTC).replace(microsecond=0)


def _rfc3339(moment: dt.datetime) -> str:
    return _utc(moment).strftime("%Y-%m-%dT%H:%M:%SZ")


def random_suffix() -> str:
    """Random rather than a timestamp, so two agents (or one restarted) never collide."""
    return secrets.token_hex(8)


def _event_name(pod_name: str, suffix: str) -> str:
    """``<pod name>.<16 hex>``, like the kubelet's."""
    return f"{pod_name[: MAX_NAME - len(suffix) - 1]}.{suffix}"


NODE_EVENT_NAMESPACE = "default"
"""Where Events on a Node (cluster-scoped) are stored: the kubelet's choice, where
``kubectl describe node`` looks."""


@dataclass(frozen=True)
class _Subject:
    """What an Event is about: a pod, or this agent's node."""

    kind: str
    name: str
    uid: str
    namespace: str | None
    """The object's namespace; None for a Node."""

    @classmethod
    def of_pod(cls, pod: PodInfo) -> _Subject:
        return cls("Pod", pod.name, pod.uid, pod.namespace)

    @classmethod
    def of_node(cls, name: str) -> _Subject:
        # The kubelet also uses the node's name as its uid in Events: no API read needed.
        return cls("Node", name, name, None)

    @property
    def key(self) -> str:
        """Unique per object: pod uids and node names cannot collide."""
        return f"{self.kind}/{self.uid}"

    @property
    def event_namespace(self) -> str:
        return self.namespace or NODE_EVENT_NAMESPACE

    @property
    def ref(self) -> str:
        return f"pod {self.namespace}/{self.name}" if self.namespace is not None else f"node {self.name}"


@dataclass(eq=False)
class _Entry:
    """One (object, reason): what the API holds as far as we know, and what is still to write."""

    subject: _Subject
    reason: str
    message: str
    first: dt.datetime
    last: dt.datetime
    name: str | None = None
    """The Event's name once a create was attempted; None before the first one."""
    created: bool = False
    """Whether the Event is known to exist (a create or patch succeeded, or a create met 409)."""
    written: int = 0
    """The count the Event holds."""
    pending: int = 0
    """Occurrences not written yet."""
    last_write: float | None = None
    """Clock time of the last write attempt, successful or not: the interval runs from it."""
    ticket: int | None = None
    """The writer's queue item that will write this entry; None when no write is scheduled."""


class EventRecorder:
    """Records Warning Events on pods; ``async with`` owns the one task that writes them.

    ``warn`` is synchronous and cheap: call it from anywhere on the loop. On exit the
    writer gets ``flush_timeout`` seconds to write what is scheduled, then is cancelled.
    """

    def __init__(
        self,
        client: lightkube.AsyncClient,
        metrics: Metrics,
        *,
        node: str,
        settings: EventSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        name_suffix: Callable[[], str] = random_suffix,
    ) -> None:
        """
        settings: interval, max_tracked, write and flush timeouts (settings.py explains each).
        clock: monotonic seconds; all interval logic runs on it (tests pass a fake one).
        now: wall time, for the Events' timestamps.
        """
        settings = settings or EventSettings()
        self._client = client
        self._metrics = metrics.events
        self._node = node
        self._interval = settings.interval
        self._clock = clock
        self._now = now
        self._max_tracked = settings.max_tracked
        self._write_timeout = settings.write_timeout
        self._flush_timeout = settings.flush_timeout
        self._name_suffix = name_suffix
        # Insertion order is recency order: warn() moves an entry to the end, eviction pops the front.
        self._entries: collections.OrderedDict[tuple[str, str], _Entry] = collections.OrderedDict()
        self._reasons_by_uid: dict[str, set[str]] = {}
        # (due clock time, ticket, entry); an item whose ticket the entry no longer holds is stale
        # (written early at exit, forgotten, evicted) and is skipped when it comes up.
        self._queue: list[tuple[float, int, _Entry]] = []
        self._tickets = 0
        self._wake = asyncio.Event()
        self._failing: set[str] = set()
        """Reasons whose write failure was logged; cleared by the next success for the reason."""
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    async def __aenter__(self) -> Self:
        if self._task is not None or self._closing:
            raise RuntimeError("an EventRecorder is entered once")
        self._task = asyncio.create_task(self._run(), name="event-recorder")
        self._task.add_done_callback(self._crashed)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._closing = True
        self._wake.set()
        task = self._task
        if task is None:
            return
        try:
            async with asyncio.timeout(self._flush_timeout):
                await asyncio.shield(task)  # shielded: on timeout we cancel it ourselves, below
        except TimeoutError:
            log.warning("pending events not written at shutdown; dropped", flush_timeout=self._flush_timeout)
        except Exception:  # noqa: S110  # already logged by _crashed; exit must not fail for an Event
            pass
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def __len__(self) -> int:
        """(pod, reason) entries tracked now."""
        return len(self._entries)

    # -- the request path: memory only ---------------------------------------------------

    def warn(self, pod: PodInfo, reason: str, message: str, occurrences: int = 1) -> None:
        """Record ``occurrences`` (one, or a split agent's aggregated count) of ``reason`` for ``pod``;
        the writer writes them. Never raises."""
        try:
            self._record(_Subject.of_pod(pod), reason, message, occurrences)
        except Exception:
            # A bug here must not turn a refused credentials request into a 500.
            log.exception("event occurrence not recorded", reason=reason, pod=pod.ref)

    def warn_node(self, reason: str, message: str) -> None:
        """Record one occurrence of ``reason`` on this agent's Node; aggregated as for pods."""
        try:
            self._record(_Subject.of_node(self._node), reason, message)
        except Exception:
            log.exception("event occurrence not recorded", reason=reason, node=self._node)

    def forget(self, pod: PodInfo) -> None:
        """Drop the pod's entries, occurrences not written yet included (the pod is gone)."""
        key = _Subject.of_pod(pod).key
        for reason in self._reasons_by_uid.pop(key, ()):
            entry = self._entries.pop((key, reason), None)
            if entry is not None:
                entry.ticket = None

    def wake(self) -> None:
        """Make the writer look again at what is due now.

        The writer sleeps on the event loop's timer for ``due - clock()``; a clock that does
        not advance with the loop (a test's fake clock) calls this after stepping.
        """
        self._wake.set()

    def _record(self, subject: _Subject, reason: str, message: str, occurrences: int = 1) -> None:
        if self._closing:
            return  # the writer is flushing or gone: a new entry would never be written
        key = (subject.key, reason)
        now, moment = self._clock(), self._now()
        message = message[:MAX_MESSAGE]
        entry = self._entries.get(key)
        if entry is None:
            entry = _Entry(subject=subject, reason=reason, message=message, first=moment, last=moment,
                           pending=occurrences)
            self._track(key, entry)
            self._schedule(entry, now)
            return
        self._entries.move_to_end(key)
        entry.pending += occurrences
        entry.message, entry.last = message, moment
        due = now if entry.last_write is None else max(now, entry.last_write + self._interval)
        if entry.ticket is not None or due > now:
            self._metrics.events.labels(reason, "aggregated").inc()
        self._schedule(entry, due)

    def _track(self, key: tuple[str, str], entry: _Entry) -> None:
        self._entries[key] = entry
        self._reasons_by_uid.setdefault(key[0], set()).add(key[1])
        while len(self._entries) > self._max_tracked:
            (uid, reason), evicted = self._entries.popitem(last=False)
            evicted.ticket = None
            reasons = self._reasons_by_uid.get(uid)
            if reasons is not None:
                reasons.discard(reason)
                if not reasons:
                    del self._reasons_by_uid[uid]

    def _schedule(self, entry: _Entry, due: float) -> None:
        """Queue the entry's write at ``due`` unless one is queued already (it is never later)."""
        if entry.ticket is not None:
            return
        self._tickets += 1
        entry.ticket = self._tickets
        heapq.heappush(self._queue, (due, self._tickets, entry))
        self._wake.set()

    # -- the writer ----------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._closing:
            # Cleared before looking: a warn() during the writes below sets it again, and the
            # wait then returns at once instead of missing it.
            self._wake.clear()
            while self._queue and self._queue[0][0] <= self._clock() and not self._closing:
                entry = self._pop()
                if entry is not None:
                    await self._write(entry)
            if self._closing:
                break
            await self._sleep()
        # Shutdown: what is scheduled is written now rather than lost, intervals notwithstanding.
        while self._queue:
            entry = self._pop()
            if entry is not None:
                await self._write(entry)

    def _pop(self) -> _Entry | None:
        """The next queued entry, or None for a stale item."""
        _, ticket, entry = heapq.heappop(self._queue)
        if entry.ticket != ticket:
            return None
        entry.ticket = None
        return entry

    async def _sleep(self) -> None:
        if not self._queue:
            await self._wake.wait()
            return
        delay = self._queue[0][0] - self._clock()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(delay, 0.0)):
                await self._wake.wait()

    async def _write(self, entry: _Entry) -> None:
        """One write of everything pending for ``entry``; failures are logged, counted, dropped."""
        sending = entry.pending
        if sending == 0:
            return
        entry.last_write = self._clock()
        count = entry.written + sending
        try:
            async with asyncio.timeout(self._write_timeout):
                outcome = await self._send(entry, count, entry.message, entry.last)
        except Exception as e:  # best effort: no API answer may stop the writer
            self._failed(entry, e)
            return
        # Occurrences that arrived during the call stay pending; the next write carries them.
        entry.written, entry.pending = count, entry.pending - sending
        self._metrics.events.labels(entry.reason, outcome).inc()
        self._failing.discard(entry.reason)

    async def _send(self, entry: _Entry, count: int, message: str, last: dt.datetime) -> Outcome:
        namespace = entry.subject.event_namespace
        if entry.created and entry.name is not None:
            try:
                await self._patch(entry.name, namespace, count, message, last)
            except ApiError as e:
                if e.status.code != 404:
                    raise
                entry.created = False
                entry.name = None  # expired or deleted: a new Event, under a new name
            else:
                return "updated"
        if entry.name is None:
            entry.name = _event_name(entry.subject.name, self._name_suffix())
        try:
            await self._client.create(self._event(entry, entry.name, count, message, last))
        except ApiError as e:
            if e.status.code != 409:
                raise
            # Our own earlier create arrived although its answer did not (a timeout).
            entry.created = True
            await self._patch(entry.name, namespace, count, message, last)
            return "updated"
        entry.created = True
        return "created"

    async def _patch(self, name: str, namespace: str, count: int, message: str, last: dt.datetime) -> None:
        patch: dict[str, Any] = {"count": count, "lastTimestamp": _rfc3339(last), "message": message}
        await self._client.patch(Event, name, patch, namespace=namespace, patch_type=PatchType.MERGE)

    def _event(self, entry: _Entry, name: str, count: int, message: str, last: dt.datetime) -> Event:
        subject = entry.subject
        # eventTime stays unset (null): it belongs to the events.k8s.io series API, and kubectl
        # shows core/v1 Events by firstTimestamp, lastTimestamp and count.
        return Event(
            metadata=ObjectMeta(name=name, namespace=subject.event_namespace),
            involvedObject=ObjectReference(
                apiVersion="v1", kind=subject.kind, namespace=subject.namespace, name=subject.name, uid=subject.uid,
            ),
            reason=entry.reason,
            message=message,
            type="Warning",
            source=EventSource(component=COMPONENT, host=self._node),
            reportingComponent=COMPONENT,
            reportingInstance=self._node,
            count=count,
            firstTimestamp=_utc(entry.first),
            lastTimestamp=_utc(last),
        )

    def _failed(self, entry: _Entry, error: Exception) -> None:
        self._metrics.events.labels(entry.reason, "failed").inc()
        if isinstance(error, ApiError):
            cause = f"{error.status.code} {error.status.reason}: {(error.status.message or '')[:200]}"
        else:
            cause = f"{type(error).__name__}: {str(error)[:200]}"
        # Once per reason: during an API outage every pod would otherwise log the same line.
        emit = log.debug if entry.reason in self._failing else log.warning
        self._failing.add(entry.reason)
        emit("event not written; its next occurrence tries again", reason=entry.reason, subject=entry.subject.ref,
             error=cause)

    def _crashed(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("event recorder stopped unexpectedly; no more Events are written",
                      exc_info=task.exception())
