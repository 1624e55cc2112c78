"""
The list/watch loop against a fake API that fails, for days of simulated time.

The loop's sleep, clock and random draws are injected: the test's sleep advances a fake
clock instead of waiting, so days of back-off run in a moment.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any, cast

import httpx2 as httpx
import lightkube
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Pod

from podiam.kube.watcher import ListWatcher, WatchHealth
from podiam.observability.metrics import Metrics
from podiam.settings import KubeSettings

DAY = 86400.0


class FakeListing:
    """What lightkube's list returns: the objects, then the list's resourceVersion."""

    def __init__(self, api: FakeApi) -> None:
        self._api = api
        self.resourceVersion = "7"

    async def __aiter__(self) -> AsyncIterator[Any]:
        self._api.lists += 1
        if self._api.failing:
            raise httpx.ConnectError("All connection attempts failed")
        objects: list[Any] = []
        for obj in objects:
            yield obj


class FakeApi:
    """The two calls a ListWatcher makes; every call fails while ``failing``."""

    def __init__(self) -> None:
        self.failing = True
        self.lists = 0
        self.watches = 0
        self.streams_end_at_once = False
        self.watching = asyncio.Event()

    def list(self, resource: type[Any], **_: Any) -> FakeListing:
        return FakeListing(self)

    async def watch(self, resource: type[Any], **_: Any) -> AsyncIterator[tuple[str, Any]]:
        if self.failing:
            raise httpx.ConnectError("All connection attempts failed")
        self.watches += 1
        if self.streams_end_at_once:
            await asyncio.sleep(0)  # yield, as a real stream does, so a busy loop cannot hang the test
            return  # a server (or proxy) that closes every watch at once, empty
        self.watching.set()
        await asyncio.Event().wait()  # a healthy watch with nothing to report, until cancelled
        yield ("ADDED", None)  # pragma: no cover - never reached; makes this an async generator


class Sink:
    def __init__(self) -> None:
        self.replaced: list[list[Any]] = []

    def replace(self, objects: list[Any]) -> None:
        self.replaced.append(objects)

    def apply(self, kind: str, obj: Any) -> None:
        raise AssertionError("no events expected")


async def test_a_watch_failing_for_days_keeps_retrying_within_bounds_and_resumes() -> None:
    settings = KubeSettings(node_name="node-1")
    api, sink, metrics = FakeApi(), Sink(), Metrics()
    now = 0.0
    delays: list[float] = []
    seen: list[WatchHealth] = []
    watcher: ListWatcher

    async def sleep(seconds: float) -> None:
        nonlocal now
        delays.append(seconds)
        if len(delays) == 1:
            seen.append(watcher.health())
        now += seconds
        if now >= 2 * DAY:
            seen.append(watcher.health())
            api.failing = False  # the API is back (or RBAC was fixed)

    watcher = ListWatcher(cast(lightkube.AsyncClient, api), Pod, sink, settings, metrics, what="pods on node-1",
                          sleep=sleep, clock=lambda: now, rng=random.Random(7).random)  # noqa: S311
    task = asyncio.create_task(watcher.run(), name="watcher-under-test")
    try:
        resumed = asyncio.create_task(api.watching.wait(), name="resumed")
        await asyncio.wait({task, resumed}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
        resumed.cancel()
        # Still running: no count of failures ends the loop (0.1 * 2**failures overflowed at ~1024).
        assert not task.done(), task.exception()
        assert api.watching.is_set()
        assert sink.replaced == [[]]  # listed again once the API answered
        assert len(delays) > 2 * DAY / settings.watch_retry_max  # retried all along, never more than the cap apart
        low = settings.watch_retry_initial * (1 - settings.watch_retry_jitter)
        assert all(low <= d <= settings.watch_retry_max for d in delays), (min(delays), max(delays))
        assert max(delays) > settings.watch_retry_max * (1 - settings.watch_retry_jitter)  # the cap was reached

        first, last = seen
        assert not first.synced and first.failing_since == 0.0 and first.failures == 1
        assert first.last_error == "ConnectError: All connection attempts failed"
        assert not last.synced and last.failing_for(now) >= 2 * DAY and last.failures == len(delays)
        healthy = watcher.health()
        assert healthy.synced and healthy.failing_since is None and healthy.last_error is None
        assert metrics.registry.get_sample_value("podiam_watch_synced", {"resource": "pod"}) == 1
        assert metrics.registry.get_sample_value("podiam_watch_failing_seconds", {"resource": "pod"}) == 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_failing_seconds_are_exported_while_the_watch_fails() -> None:
    api, metrics = FakeApi(), Metrics()
    now = 100.0
    stalled = asyncio.Event()

    async def sleep(seconds: float) -> None:
        stalled.set()
        await asyncio.Event().wait()  # hold the loop in its back-off: the state is then stable

    watcher = ListWatcher(cast(lightkube.AsyncClient, api), Pod, Sink(), KubeSettings(node_name="n"), metrics,
                          what="pods on n", sleep=sleep, clock=lambda: now)
    task = asyncio.create_task(watcher.run(), name="watcher-under-test")
    try:
        async with asyncio.timeout(10):
            await stalled.wait()
        now = 142.0
        assert metrics.registry.get_sample_value("podiam_watch_failing_seconds", {"resource": "pod"}) == 42
        assert metrics.registry.get_sample_value("podiam_watch_synced", {"resource": "pod"}) == 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_watch_streams_that_end_at_once_are_retried_with_back_off_not_in_a_busy_loop() -> None:
    api, settings = FakeApi(), KubeSettings(node_name="n")
    api.failing, api.streams_end_at_once = False, True
    now = 0.0
    delays: list[float] = []
    enough = asyncio.Event()

    async def sleep(seconds: float) -> None:
        nonlocal now
        delays.append(seconds)
        now += seconds
        if len(delays) >= 50:
            enough.set()
            await asyncio.Event().wait()

    watcher = ListWatcher(cast(lightkube.AsyncClient, api), Pod, Sink(), settings, Metrics(), what="pods on n",
                          sleep=sleep, clock=lambda: now, rng=random.Random(3).random)  # noqa: S311
    task = asyncio.create_task(watcher.run(), name="watcher-under-test")
    try:
        waiter = asyncio.create_task(enough.wait(), name="enough")
        done, _ = await asyncio.wait({task, waiter}, timeout=5, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        assert task not in done
        assert enough.is_set(), f"{api.watches} watches without a single back-off"
        assert api.watches == 50  # one wait per stream
        assert max(delays) > settings.watch_retry_max * (1 - settings.watch_retry_jitter)  # growing up to the cap
        assert watcher.health().last_error == "WatchEndedAtOnce: the API server ended the watch at once, with no event"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class BacklogApi(FakeApi):
    """A watch whose events are all buffered already (a server that fell behind, catching up):
    each one comes without the stream suspending, as lines already read from the socket do."""

    def __init__(self, events: int) -> None:
        super().__init__()
        self.failing = False
        self.events = events

    async def watch(self, resource: type[Any], **_: Any) -> AsyncIterator[tuple[str, Any]]:
        self.watches += 1
        for i in range(self.events):
            yield ("MODIFIED", Pod(metadata=ObjectMeta(name=f"p{i}", resourceVersion=str(8 + i))))
        await asyncio.Event().wait()  # then a healthy watch with nothing more to report


async def test_a_backlog_of_watch_events_leaves_the_event_loop_to_others_between_events() -> None:
    """The loop is shared with the metadata endpoint (agent), the agents' streams (server) and the
    probes: catching up on thousands of events must not hold it for all of them at once."""
    api, ticks, seen = BacklogApi(events=50), [0], []
    applied = asyncio.Event()

    class TickingSink(Sink):
        def apply(self, kind: str, obj: Any) -> None:
            seen.append(ticks[0])
            if len(seen) == api.events:
                applied.set()

    async def others() -> None:  # whatever else the loop runs: it counts the turns it gets
        while True:
            ticks[0] += 1
            await asyncio.sleep(0)

    watcher = ListWatcher(cast(lightkube.AsyncClient, api), Pod, TickingSink(), KubeSettings(node_name="n"),
                          Metrics(), what="pods on n")
    tasks = [asyncio.create_task(others(), name="others"), asyncio.create_task(watcher.run(), name="watcher")]
    try:
        async with asyncio.timeout(10):
            await applied.wait()
        assert len(set(seen)) == api.events, f"{api.events} events applied in {len(set(seen))} turns of the loop"
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
