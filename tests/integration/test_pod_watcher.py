"""
The pod watcher against the Kubernetes API emulator over real HTTP: the initial list, live
events, resume after a dropped stream with no lost or duplicated event, re-list after
410 Gone (pods deleted meanwhile leave the index), and the node field selector.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest_asyncio

from podiam.errors import PodNotFound
from podiam.kube.connection import make_client
from podiam.kube.pod_index import PodIndex
from podiam.kube.pod_watcher import pod_watcher
from podiam.observability.metrics import Metrics
from podiam.pods import PodEntry
from podiam.policy import RolePolicy
from podiam.settings import KubeSettings, RoleSettings
from podiam_sandbox.kubeapi import run_kubeapi
from podiam_sandbox.kubeapi_emulator import KubeApiEmulator

NODE = "node-1"


class Recorder:
    """Counts what the index tells its listeners, per pod name."""

    def __init__(self) -> None:
        self.active: Counter[str] = Counter()
        self.gone: Counter[str] = Counter()

    def pod_active(self, entry: PodEntry) -> None:
        self.active[entry.pod.name] += 1

    def pod_gone(self, entry: PodEntry) -> None:
        self.gone[entry.pod.name] += 1


@dataclass
class Setup:
    emulator: KubeApiEmulator
    index: PodIndex
    recorder: Recorder
    metrics: Metrics

    async def add(self, name: str, ip: str, node: str = NODE) -> None:
        await self.emulator.create_object("pods", {
            "metadata": {"name": name, "namespace": "ns", "annotations": {"iam.amazonaws.com/role": "r"}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]},
        })
        await self.emulator.patch_object("pods", name, {"status": {"phase": "Running", "podIP": ip}},
                                         namespace="ns", subresource="status")

    async def delete(self, name: str) -> None:
        await self.emulator.delete_object("pods", name, namespace="ns")

    def names(self) -> list[str]:
        return sorted(e.pod.name for e in self.index.entries())

    def restarts(self, reason: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "podiam_watch_restarts_total", {"resource": "pod", "reason": reason})
        return value or 0.0

    async def until(self, check: Callable[[], bool], what: str) -> None:
        try:
            async with asyncio.timeout(10):
                while not check():
                    await asyncio.sleep(0.01)
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}; index has {self.names()}") from None


@pytest_asyncio.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    async with run_kubeapi() as api:
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        settings = KubeSettings(node_name=NODE, kubeconfig=str(kubeconfig), watch_retry_max=0.2)
        index = PodIndex(RolePolicy.from_settings(RoleSettings(), "arn:aws:iam::123456789012:role/").identity)
        recorder, metrics = Recorder(), Metrics()
        index.subscribe(recorder)
        client = make_client(settings)
        s = Setup(api.emulator, index, recorder, metrics)
        await s.add("before", "10.0.0.1")
        await s.add("elsewhere", "10.0.9.9", node="node-2")
        task = asyncio.create_task(pod_watcher(client, index, settings, metrics).run(), name="pod-watcher")
        try:
            await s.until(index.synced.is_set, "the initial list")
            yield s
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await client.close()


async def test_initial_list_and_live_events_for_this_node_only(setup: Setup) -> None:
    assert setup.names() == ["before"]
    await setup.add("live", "10.0.0.2")
    await setup.add("other-node", "10.0.9.8", node="node-2")
    await setup.until(lambda: setup.names() == ["before", "live"], "the live pod")
    await setup.delete("before")
    await setup.until(lambda: setup.names() == ["live"], "the deletion")
    assert setup.index.lookup("10.0.0.2").pod.name == "live"


async def test_resume_after_a_dropped_stream_loses_and_repeats_nothing(setup: Setup) -> None:
    await setup.add("a", "10.0.0.2")
    await setup.until(lambda: "a" in setup.names(), "pod a")
    await setup.emulator.disconnect_watches()
    # Changes while the watch is down or reconnecting must all arrive, exactly once.
    await setup.add("b", "10.0.0.3")
    await setup.delete("a")
    await setup.add("c", "10.0.0.4")
    await setup.until(lambda: setup.names() == ["b", "before", "c"], "b and c, without a")
    assert setup.restarts("resume") >= 1
    assert setup.restarts("relist") == 0
    assert setup.recorder.active == Counter({"before": 1, "a": 1, "b": 1, "c": 1})
    assert setup.recorder.gone == Counter({"a": 1})


async def test_relist_after_410_drops_pods_deleted_meanwhile(setup: Setup) -> None:
    await setup.add("doomed", "10.0.0.2")
    await setup.until(lambda: "doomed" in setup.names(), "the doomed pod")
    # Drop the stream, then change and compact before the watcher can reconnect (the
    # emulator's writes do not yield to the loop): its resume must get 410 and re-list.
    await setup.emulator.disconnect_watches()
    await setup.delete("doomed")
    await setup.add("newcomer", "10.0.0.2")  # the same IP, a different pod
    setup.emulator.compact()
    await setup.until(lambda: setup.names() == ["before", "newcomer"], "the re-list")
    assert setup.restarts("relist") == 1
    assert setup.index.lookup("10.0.0.2").pod.name == "newcomer"
    assert setup.recorder.gone["doomed"] == 1


async def test_an_ip_is_never_answered_for_a_finished_pod(setup: Setup) -> None:
    await setup.add("job", "10.0.0.7")
    await setup.until(lambda: "job" in setup.names(), "the job pod")
    await setup.emulator.patch_object("pods", "job", {"status": {"phase": "Succeeded"}}, namespace="ns",
                                      subresource="status")
    await setup.until(lambda: "job" not in setup.names(), "the finished job to leave the index")
    try:
        setup.index.lookup("10.0.0.7")
    except PodNotFound:
        pass
    else:
        raise AssertionError("a finished pod's IP is still served")
