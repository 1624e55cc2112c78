"""
The event recorder against the Kubernetes API emulator over real HTTP: the Event a first
warning creates, aggregation into one patch per interval, separate events per pod and
reason, recreation after 404, API failures (an error answer, a refused connection, a hang)
counted and dropped without stalling the writer, forget, the LRU bound, and the flush at exit.

Time is a fake clock that the tests step; the writer sleeps on the loop's timer, so after a
step the test calls ``wake()``. One test runs on the real clock to check that the writer
wakes up by itself.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kmock
import lightkube
import pytest
import pytest_asyncio

from podiam.kube.connection import make_client
from podiam.kube.events import EventRecorder, random_suffix
from podiam.observability.metrics import Metrics
from podiam.pods import PodInfo
from podiam.settings import EventSettings, KubeSettings
from podiam_sandbox.kubeapi import run_kubeapi, write_kubeconfig
from podiam_sandbox.kubeapi_emulator import KubeApiEmulator

NODE = "node-1"
INTERVAL = 60.0
DEADLINE = 10.0
FORBIDDEN, INVALID, FAILED = "IAMRoleForbidden", "IAMRoleInvalid", "IAMCredentialsFailed"
START = dt.datetime(2030, 1, 2, 3, 4, 5, 678_000, tzinfo=dt.UTC)


def pod(name: str, namespace: str = "ns") -> PodInfo:
    return PodInfo(namespace=namespace, name=name, uid=f"uid-{namespace}-{name}", ip="10.0.0.1")


@dataclass
class FakeTime:
    """The recorder's monotonic clock and wall time, stepped together by the test."""

    monotonic: float = 1000.0
    wall: dt.datetime = START

    def clock(self) -> float:
        return self.monotonic

    def now(self) -> dt.datetime:
        return self.wall

    def advance(self, seconds: float) -> None:
        self.monotonic += seconds
        self.wall += dt.timedelta(seconds=seconds)


@dataclass
class Setup:
    emulator: KubeApiEmulator
    client: lightkube.AsyncClient
    metrics: Metrics
    time: FakeTime = field(default_factory=FakeTime)
    barriers: int = 0

    def recorder(self, name_suffix: Callable[[], str] = random_suffix, **settings: Any) -> EventRecorder:
        """A recorder on the fake clock, with ``settings`` overriding EventSettings' defaults."""
        return EventRecorder(self.client, self.metrics, node=NODE,
                             settings=EventSettings(**({"interval": INTERVAL} | settings)),
                             clock=self.time.clock, now=self.time.now, name_suffix=name_suffix)

    async def events(self, namespace: str = "ns", pod_name: str | None = None) -> list[dict[str, Any]]:
        found = await self.emulator.list_objects("events", namespace=namespace)
        return [e for e in found if pod_name is None or e["involvedObject"]["name"] == pod_name]

    def writes(self, method: kmock.method, namespace: str = "ns") -> int:
        """Event writes the emulator received, whatever it answered."""
        return sum(
            1 for r in self.emulator
            if r.resource is not None and r.resource.plural == "events" and r.namespace == namespace
            and r.method == method
        )

    def outcome(self, reason: str, outcome: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "podiam_kube_events_total", {"reason": reason, "outcome": outcome})
        return value or 0.0

    async def until(self, check: Callable[[], Awaitable[bool] | bool], what: str) -> None:
        try:
            async with asyncio.timeout(DEADLINE):
                while True:
                    result = check()
                    if await result if isinstance(result, Awaitable) else result:
                        return
                    await asyncio.sleep(0.01)
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}; events: {await self.events()}") from None

    async def barrier(self, recorder: EventRecorder) -> None:
        """Wait until the writer has done everything due now.

        The writer is one task taking writes in due order: once a new pod's Event, queued
        now, exists, every write that was due before it has been made.
        """
        self.barriers += 1
        name = f"barrier-{self.barriers}"
        recorder.warn(pod(name, "barriers"), "Barrier", "sync")

        async def created() -> bool:
            return bool(await self.events("barriers", name))

        await self.until(created, f"the barrier event {name}")


@pytest_asyncio.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    async with run_kubeapi() as api:
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        client = make_client(KubeSettings(node_name=NODE, kubeconfig=str(kubeconfig)))
        try:
            yield Setup(api.emulator, client, Metrics())
        finally:
            await client.close()


async def count_is(s: Setup, pod_name: str, count: int) -> bool:
    return [e["count"] for e in await s.events(pod_name=pod_name)] == [count]


async def events_are(s: Setup, number: int) -> bool:
    return len(await s.events()) == number


async def test_the_first_warning_creates_one_event_with_every_field(setup: Setup) -> None:
    long_message = "role arn:aws:iam::123456789012:role/x is not permitted in namespace ns; " + "x" * 2000
    async with setup.recorder() as recorder:
        recorder.warn(pod("a"), FORBIDDEN, long_message)
        await setup.until(lambda: count_is(setup, "a", 1), "the event")
    [event] = await setup.events()
    assert re.fullmatch(r"a\.[0-9a-f]{16}", event["metadata"]["name"])
    assert event["metadata"]["namespace"] == "ns"
    assert event["involvedObject"] == {
        "apiVersion": "v1", "kind": "Pod", "namespace": "ns", "name": "a", "uid": "uid-ns-a",
    }
    assert (event["reason"], event["type"]) == (FORBIDDEN, "Warning")
    assert event["message"] == long_message[:1024]
    assert event["source"] == {"component": "podiam", "host": NODE}
    assert (event["reportingComponent"], event["reportingInstance"]) == ("podiam", NODE)
    assert event["count"] == 1
    assert event["firstTimestamp"] == event["lastTimestamp"] == "2030-01-02T03:04:05Z"
    assert event.get("eventTime") is None
    assert setup.writes(kmock.method.POST) == 1 and setup.writes(kmock.method.PATCH) == 0
    assert setup.outcome(FORBIDDEN, "created") == 1


async def test_a_node_warning_is_an_event_on_the_node_aggregated_like_a_pods(setup: Setup) -> None:
    async with setup.recorder() as recorder:
        recorder.warn_node("IptablesRuleRestored", "the rule was missing")
        await setup.until(lambda: count_is_node(setup, 1), "the node event")
        setup.time.advance(1)
        recorder.warn_node("IptablesRuleRestored", "the rule was missing again")
        setup.time.advance(INTERVAL)
        recorder.wake()
        await setup.until(lambda: count_is_node(setup, 2), "the aggregated node event")
    [event] = await setup.events("default")
    assert re.fullmatch(rf"{NODE}\.[0-9a-f]{{16}}", event["metadata"]["name"])
    # Cluster-scoped: no namespace in the reference; the kubelet's convention of the name as uid.
    assert event["involvedObject"] == {"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": NODE}
    assert (event["reason"], event["type"], event["message"]) == (
        "IptablesRuleRestored", "Warning", "the rule was missing again")
    assert event["source"] == {"component": "podiam", "host": NODE}
    assert setup.outcome("IptablesRuleRestored", "created") == 1
    assert setup.outcome("IptablesRuleRestored", "updated") == 1


async def count_is_node(s: Setup, count: int) -> bool:
    return [e["count"] for e in await s.events("default") if e["involvedObject"]["kind"] == "Node"] == [count]


async def test_repeats_within_the_interval_become_one_patch_after_it(setup: Setup) -> None:
    async with setup.recorder() as recorder:
        recorder.warn(pod("a"), FAILED, "AccessDenied: attempt 1")
        await setup.until(lambda: count_is(setup, "a", 1), "the event")
        for attempt in range(2, 51):
            setup.time.advance(1)  # 49 s in all: still inside the interval
            recorder.warn(pod("a"), FAILED, f"AccessDenied: attempt {attempt}")
        recorder.wake()
        await setup.barrier(recorder)
        assert setup.writes(kmock.method.POST) == 1 and setup.writes(kmock.method.PATCH) == 0
        assert setup.outcome(FAILED, "aggregated") == 49

        setup.time.advance(INTERVAL - 49 + 1)
        recorder.wake()
        await setup.until(lambda: count_is(setup, "a", 50), "the aggregated patch")
        [event] = await setup.events()
        assert event["message"] == "AccessDenied: attempt 50"
        assert event["lastTimestamp"] == "2030-01-02T03:04:54Z"  # the 50th occurrence, not the patch
        assert event["firstTimestamp"] == "2030-01-02T03:04:05Z"

        await setup.barrier(recorder)
        assert setup.writes(kmock.method.POST) == 1 and setup.writes(kmock.method.PATCH) == 1
        assert setup.outcome(FAILED, "updated") == 1


async def test_each_pod_and_reason_gets_its_own_event(setup: Setup) -> None:
    async with setup.recorder() as recorder:
        recorder.warn(pod("a"), FORBIDDEN, "forbidden")
        recorder.warn(pod("a"), INVALID, "invalid")
        recorder.warn(pod("b"), FORBIDDEN, "forbidden")
        recorder.warn(pod("a", namespace="other"), FORBIDDEN, "forbidden")

        async def all_created() -> bool:
            return len(await setup.events()) == 3 and len(await setup.events("other")) == 1

        await setup.until(all_created, "four events")
    keys = sorted((e["involvedObject"]["name"], e["reason"], e["count"]) for e in await setup.events())
    assert keys == [("a", FORBIDDEN, 1), ("a", INVALID, 1), ("b", FORBIDDEN, 1)]
    [elsewhere] = await setup.events("other")
    assert elsewhere["involvedObject"]["uid"] == "uid-other-a"
    assert (setup.outcome(FORBIDDEN, "created"), setup.outcome(INVALID, "created")) == (3, 1)


async def test_a_deleted_event_is_recreated(setup: Setup) -> None:
    async with setup.recorder() as recorder:
        recorder.warn(pod("a"), FORBIDDEN, "first")
        await setup.until(lambda: count_is(setup, "a", 1), "the event")
        [old] = await setup.events()
        await setup.emulator.delete_object("events", old["metadata"]["name"], namespace="ns")

        recorder.warn(pod("a"), FORBIDDEN, "second")
        setup.time.advance(INTERVAL)
        recorder.wake()
        await setup.until(lambda: count_is(setup, "a", 2), "the new event")
    [new] = await setup.events()
    assert new["metadata"]["name"] != old["metadata"]["name"]
    assert new["message"] == "second"
    assert new["firstTimestamp"] == old["firstTimestamp"]  # the series goes on under a new name
    assert setup.writes(kmock.method.PATCH) == 1  # answered 404
    assert (setup.outcome(FORBIDDEN, "created"), setup.outcome(FORBIDDEN, "updated")) == (2, 0)


async def test_a_create_whose_answer_was_lost_becomes_a_patch(setup: Setup) -> None:
    # As if an earlier create reached the server but its answer timed out: the name is taken.
    name = "a.00000000000000ff"
    earlier = {"metadata": {"name": name}, "involvedObject": {"kind": "Pod", "name": "a"}, "count": 1}
    await setup.emulator.create_object("events", earlier, namespace="ns")
    async with setup.recorder(name_suffix=lambda: "00000000000000ff") as recorder:
        recorder.warn(pod("a"), FORBIDDEN, "forbidden")
        await setup.until(lambda: setup.outcome(FORBIDDEN, "updated") == 1, "the patch after 409")
    [event] = await setup.events()
    assert (event["metadata"]["name"], event["message"]) == (name, "forbidden")
    assert setup.outcome(FORBIDDEN, "failed") == 0


async def test_an_api_error_is_counted_logged_once_and_dropped(
    setup: Setup, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="podiam.kube.events")
    outage = {"on": True}
    error = kmock.KubernetesError(status=500, reason="InternalError", message="etcdserver: request timed out")
    setup.emulator["post /api/v1/namespaces/ns/events"][lambda _: outage["on"]] << error
    async with setup.recorder() as recorder:
        recorder.warn(pod("a"), FORBIDDEN, "forbidden")
        recorder.warn(pod("b"), FORBIDDEN, "forbidden")
        await setup.until(lambda: setup.outcome(FORBIDDEN, "failed") == 2, "two failed writes")
        warnings = [r for r in caplog.records if r.name == "podiam.kube.events" and r.levelno == logging.WARNING]
        assert len(warnings) == 1
        # The record carries structlog's event dict (tests/conftest.py routes structlog through stdlib).
        warning = warnings[0].msg
        assert isinstance(warning, dict)
        assert warning["event"] == "event not written; its next occurrence tries again"
        assert warning["reason"] == "IAMRoleForbidden"
        assert warning["subject"] in ("pod ns/a", "pod ns/b")
        assert warning["error"].startswith("500 InternalError: etcdserver: request timed out")

        outage["on"] = False
        recorder.warn(pod("c"), FORBIDDEN, "forbidden")  # the writer goes on with later writes
        await setup.until(lambda: count_is(setup, "c", 1), "pod c's event")

        # Nothing retried a's failed create on its own; its next occurrence writes both.
        assert setup.writes(kmock.method.POST) == 3
        setup.time.advance(INTERVAL)
        recorder.warn(pod("a"), FORBIDDEN, "forbidden again")
        await setup.until(lambda: count_is(setup, "a", 2), "pod a's event, with both occurrences")
    assert setup.outcome(FORBIDDEN, "failed") == 2


async def test_an_unreachable_api_server_fails_each_write_once(setup: Setup, tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again below: nothing listens there
    kubeconfig = write_kubeconfig(tmp_path / "unreachable", f"http://127.0.0.1:{port}")
    client = make_client(KubeSettings(node_name=NODE, kubeconfig=str(kubeconfig)))
    try:
        recorder = EventRecorder(client, setup.metrics, node=NODE, clock=setup.time.clock, now=setup.time.now)
        async with recorder:
            recorder.warn(pod("a"), FAILED, "AccessDenied")
            recorder.warn(pod("b"), FAILED, "AccessDenied")
            await setup.until(lambda: setup.outcome(FAILED, "failed") == 2, "two failed writes")
        # Failed writes are dropped, not rescheduled: the flush at exit tried neither again.
        assert setup.outcome(FAILED, "failed") == 2
    finally:
        await client.close()


async def test_a_hanging_api_server_is_bounded_by_the_write_timeout(setup: Setup) -> None:
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    setup.emulator["post /api/v1/namespaces/ns/events"] << never
    try:
        async with setup.recorder(write_timeout=0.2) as recorder:
            recorder.warn(pod("a"), FORBIDDEN, "forbidden")
            await setup.until(lambda: setup.outcome(FORBIDDEN, "failed") == 1, "the write to time out")
            await setup.barrier(recorder)  # other namespaces are still written
    finally:
        never.cancel()


async def test_exit_gives_up_on_a_hanging_write_after_the_flush_deadline(setup: Setup) -> None:
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    setup.emulator["post /api/v1/namespaces/ns/events"] << never
    try:
        async with asyncio.timeout(DEADLINE):
            async with setup.recorder(write_timeout=300, flush_timeout=0.2) as recorder:
                recorder.warn(pod("a"), FORBIDDEN, "forbidden")
                await setup.until(lambda: setup.writes(kmock.method.POST) == 1, "the write to start")
    finally:
        never.cancel()
    assert setup.outcome(FORBIDDEN, "failed") == 0  # cancelled, not failed: the agent is stopping


async def test_exit_writes_what_is_scheduled(setup: Setup) -> None:
    async with setup.recorder() as recorder:
        recorder.warn(pod("a"), FORBIDDEN, "first")
        await setup.until(lambda: count_is(setup, "a", 1), "the event")
        recorder.warn(pod("a"), FORBIDDEN, "second")  # due in a minute
    [event] = await setup.events()
    assert (event["count"], event["message"]) == (2, "second")


async def test_forget_drops_the_pods_entries(setup: Setup) -> None:
    async with setup.recorder() as recorder:
        recorder.warn(pod("a"), FORBIDDEN, "forbidden")
        recorder.warn(pod("a"), INVALID, "invalid")
        recorder.warn(pod("b"), FORBIDDEN, "forbidden")
        await setup.until(lambda: events_are(setup, 3), "three events")
        recorder.warn(pod("a"), FORBIDDEN, "again")  # scheduled, then forgotten
        recorder.forget(pod("a"))
        assert len(recorder) == 1
    # Exit flushed nothing for a: its pending occurrence went with it.
    assert setup.writes(kmock.method.PATCH) == 0
    assert sorted(e["count"] for e in await setup.events()) == [1, 1, 1]


async def test_the_least_recently_warned_entry_is_evicted(setup: Setup) -> None:
    async with setup.recorder(max_tracked=2) as recorder:
        recorder.warn(pod("a"), FORBIDDEN, "forbidden")
        recorder.warn(pod("b"), FORBIDDEN, "forbidden")
        await setup.until(lambda: events_are(setup, 2), "two events")
        recorder.warn(pod("a"), FORBIDDEN, "forbidden")  # a is now the most recent
        recorder.warn(pod("c"), FORBIDDEN, "forbidden")  # evicts b
        assert len(recorder) == 2
        recorder.warn(pod("b"), FORBIDDEN, "forbidden")  # b starts over: a new event; evicts a
        await setup.until(lambda: events_are(setup, 4), "b's second event and c's")
    counts = sorted((e["involvedObject"]["name"], e["count"]) for e in await setup.events())
    # a's scheduled occurrence went with its eviction; b has two events of one occurrence each.
    assert counts == [("a", 1), ("b", 1), ("b", 1), ("c", 1)]


async def test_the_writer_wakes_by_itself_when_the_interval_ends(setup: Setup) -> None:
    async with EventRecorder(setup.client, setup.metrics, node=NODE,
                             settings=EventSettings(interval=0.2)) as recorder:
        recorder.warn(pod("a"), FORBIDDEN, "first")
        await setup.until(lambda: count_is(setup, "a", 1), "the event")
        recorder.warn(pod("a"), FORBIDDEN, "second")  # no wake(): the real clock runs out the interval
        await setup.until(lambda: count_is(setup, "a", 2), "the patch")
    assert setup.outcome(FORBIDDEN, "updated") == 1
