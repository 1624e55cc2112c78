"""
One watch stream, with the API server's semantics.

- From a resourceVersion: replay the logged changes after it, then live ones; if the
  version fell off the log, one ERROR event (410 Expired) and the end of the stream.
- Without one: a synthetic ADDED for every current object, then live changes.
- Selectors are applied to both the old and the new state of every change, so an object
  that starts matching arrives as ADDED and one that stops matching leaves as DELETED
  (a pod bound to a node appears in that node's ``spec.nodeName=`` watch as ADDED).
- Bookmarks when asked for, and the end of the stream after ``timeoutSeconds``.

The stream knows nothing of HTTP: it yields event dicts, ends normally on timeout, and
raises WatchDisconnected when the emulator is told to break live watches.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kmock

from podiam_sandbox.kubeapi_changes import Change, ChangeLog, ResourceExpired, Subscription, with_version
from podiam_sandbox.kubeapi_selectors import ObjectFilter

WatchEvent = dict[str, Any]


class WatchDisconnected(Exception):
    """The emulator was told to break live watches; the HTTP layer drops the connection."""


@dataclass(frozen=True)
class WatchOptions:
    """What one watch request asked for, already validated."""

    resource: kmock.resource
    kind: str
    """The resource's kind, for bookmark objects."""
    api_version: str
    """The resource's group/version, for bookmark objects."""
    filter: ObjectFilter = field(default_factory=ObjectFilter)
    since: int | None = None
    """The resourceVersion to resume after; None for "current state first" ("" or "0" on the wire)."""
    bookmarks: bool = False
    bookmark_interval: float = 1.0
    timeout: float | None = None
    """Seconds until the server ends the stream; None for never."""


async def watch_events(
    log: ChangeLog,
    options: WatchOptions,
    snapshot: Callable[[], Iterable[Mapping[str, Any]]],
) -> AsyncIterator[WatchEvent]:
    """Yield the watch's events until the timeout; ``snapshot`` lists current matching objects."""
    loop = asyncio.get_running_loop()
    deadline = None if options.timeout is None else loop.time() + options.timeout
    try:
        initial, subscription, seen = _open(log, options, snapshot)
    except ResourceExpired as e:
        yield expired_event(e)
        return
    try:
        for event in initial:
            _check_connected(subscription)
            yield event
        async for event in _live(subscription, options, seen, deadline):
            yield event
    finally:
        log.unsubscribe(subscription)


def translate(change: Change, matches: Callable[[Mapping[str, Any]], bool]) -> WatchEvent | None:
    """The event a filtered watch sees for a change, if any (the API server's cacheWatcher rules)."""
    if change.type == "DELETED":
        return {"type": "DELETED", "object": change.obj} if matches(change.obj) else None
    old = change.old
    old_matches = old is not None and matches(old)
    if matches(change.obj):
        return {"type": "MODIFIED" if old_matches else "ADDED", "object": change.obj}
    if old is not None and old_matches:
        return {"type": "DELETED", "object": with_version(old, change.resource_version)}
    return None


def expired_event(error: ResourceExpired) -> WatchEvent:
    """The ERROR event a real server streams (after HTTP 200) for a version that is too old."""
    return {
        "type": "ERROR",
        "object": {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": str(error),
            "reason": "Expired",
            "code": 410,
        },
    }


def bookmark_event(options: WatchOptions, version: int) -> WatchEvent:
    """A BOOKMARK: an object with only kind, apiVersion and the version the watch has reached."""
    return {
        "type": "BOOKMARK",
        "object": {
            "kind": options.kind,
            "apiVersion": options.api_version,
            "metadata": {"resourceVersion": str(version)},
        },
    }


def _open(
    log: ChangeLog,
    options: WatchOptions,
    snapshot: Callable[[], Iterable[Mapping[str, Any]]],
) -> tuple[list[WatchEvent], Subscription, int]:
    """Take the replay (or the current state) and subscribe in one step: no gap, no duplicate."""
    if options.since is None:
        initial = [{"type": "ADDED", "object": obj} for obj in snapshot()]
    else:
        changes = log.since(options.since)
        initial = [event for change in changes if (event := _visible(change, options)) is not None]
    return initial, log.subscribe(), log.version


async def _live(
    subscription: Subscription, options: WatchOptions, seen: int, deadline: float | None,
) -> AsyncIterator[WatchEvent]:
    """Live changes, bookmarks in the quiet periods, until the deadline (in loop time)."""
    loop = asyncio.get_running_loop()
    next_bookmark = loop.time() + options.bookmark_interval if options.bookmarks else None
    floor = options.since or 0
    while True:
        _check_connected(subscription)
        wake_at = min((t for t in (deadline, next_bookmark) if t is not None), default=None)
        try:
            async with asyncio.timeout_at(wake_at):
                change = await subscription.queue.get()
        except TimeoutError:
            if deadline is not None and loop.time() >= deadline:
                return
            next_bookmark = loop.time() + options.bookmark_interval
            yield bookmark_event(options, seen)
            continue
        if change is None:
            continue  # a wake-up call: the check above ends the stream
        seen = change.resource_version
        if seen > floor and (event := _visible(change, options)) is not None:
            yield event


def _visible(change: Change, options: WatchOptions) -> WatchEvent | None:
    if change.resource != options.resource:
        return None
    return translate(change, options.filter.matches)


def _check_connected(subscription: Subscription) -> None:
    if subscription.disconnected:
        raise WatchDisconnected
