"""
The cluster's write history: one resourceVersion counter, a bounded log, live subscribers.

A watch client resumes from the last resourceVersion it saw and must get every later change
exactly once. The real API server guarantees this with etcd's revision counter and a
bounded watch cache; here one counter numbers every write cluster-wide, the log keeps the
latest changes, and what falls off the log makes older versions "too old" (410 Expired).

Every method here is synchronous on purpose: with one event loop, a write (bump, store,
log, fan-out) and a watch's start (replay snapshot and subscription) can never interleave,
so a watch has no gap and no duplicate between what it replays and what it gets live.
"""

from __future__ import annotations

import asyncio
import collections
import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import kmock

ChangeType = Literal["ADDED", "MODIFIED", "DELETED"]


@dataclass(frozen=True)
class Change:
    """One write, as the watch cache keeps it: the new state and the state it replaced."""

    resource_version: int
    resource: kmock.resource
    type: ChangeType
    obj: Mapping[str, Any]
    """The state after the write; for DELETED, the last state stamped with the deletion's version."""
    old: Mapping[str, Any] | None
    """The state before the write; None for ADDED. Needed to turn MODIFIED into ADDED/DELETED."""


class ResourceExpired(Exception):
    """The requested version fell off the log: the client must re-list (HTTP 410 Gone)."""

    def __init__(self, requested: int, compacted: int) -> None:
        super().__init__(f"too old resource version: {requested} ({compacted})")  # the server's wording
        self.requested = requested
        self.compacted = compacted


@dataclass(eq=False)
class Subscription:
    """A live watcher's inbox, and the two signals of its end."""

    queue: asyncio.Queue[Change | None] = field(default_factory=asyncio.Queue)
    """Changes in version order; a ``None`` only wakes the watcher to see ``disconnected``."""
    disconnected: bool = False
    """Drop the connection now, even with changes still queued: that is what a network failure does."""
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the watch has ended and unsubscribed."""


class ChangeLog:
    """The resourceVersion counter, the bounded change log and the live subscribers."""

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError(f"the change log limit must be >= 0, got {limit}")
        self._limit = limit
        self._version = 0
        self._compacted = 0  # the newest version dropped from the log; older ones are expired
        self._changes: collections.deque[Change] = collections.deque()
        self._subscriptions: set[Subscription] = set()
        self._closed = False

    @property
    def version(self) -> int:
        """The newest resourceVersion handed out (0 before the first write)."""
        return self._version

    @property
    def compacted(self) -> int:
        """The newest version no longer in the log; watching from an older one gets 410."""
        return self._compacted

    @property
    def subscriber_count(self) -> int:
        """How many watches are live (for tests that wait for a watch to be established)."""
        return len(self._subscriptions)

    def next_version(self) -> int:
        """Reserve the version of the write about to be published."""
        self._version += 1
        return self._version

    def publish(self, change: Change) -> None:
        """Log a write and hand it to every live watch, in version order."""
        if change.resource_version != self._version:
            raise RuntimeError("changes must be published in the order their versions were reserved")
        self._changes.append(change)
        for subscription in self._subscriptions:
            subscription.queue.put_nowait(change)
        while len(self._changes) > self._limit:
            self._drop_oldest()

    def since(self, version: int) -> list[Change]:
        """Every logged change after ``version``, oldest first; ResourceExpired if some fell off."""
        if version < self._compacted:
            raise ResourceExpired(version, self._compacted)
        return [change for change in self._changes if change.resource_version > version]

    def subscribe(self) -> Subscription:
        """Start receiving changes published from now on; pair with ``unsubscribe``.

        After ``close``, the subscription is born disconnected: the watch ends at once.
        """
        subscription = Subscription(disconnected=self._closed)
        self._subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Stop delivering to a watch that ended (idempotent)."""
        self._subscriptions.discard(subscription)
        subscription.closed.set()

    def compact(self, keep: int = 0) -> None:
        """Drop all but the newest ``keep`` changes, as etcd compaction does."""
        while len(self._changes) > keep:
            self._drop_oldest()

    def close(self) -> list[Subscription]:
        """Disconnect every live watch and every later one: a server shutting down waits on none."""
        self._closed = True
        return self.disconnect_all()

    def disconnect_all(self) -> list[Subscription]:
        """Tell every live watch to drop its connection, as a network failure would; return them."""
        subscriptions = list(self._subscriptions)
        for subscription in subscriptions:
            subscription.disconnected = True
            subscription.queue.put_nowait(None)
        return subscriptions

    def _drop_oldest(self) -> None:
        self._compacted = self._changes.popleft().resource_version


def with_version(obj: Mapping[str, Any], version: int) -> dict[str, Any]:
    """A copy of the object stamped with another resourceVersion (deleted objects, transitions)."""
    stamped = copy.deepcopy(dict(obj))
    stamped.setdefault("metadata", {})["resourceVersion"] = str(version)
    return stamped
