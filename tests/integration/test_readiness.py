"""
/readyz on the operator port, fed by podiam.readiness: a pod watch that cannot reach the
API makes the agent not ready at once before its first list, and says why; each other
reason in its order of precedence.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from podiam.imds.ops_app import make_ops_app
from podiam.kube.connection import make_client
from podiam.kube.pod_index import PodIndex
from podiam.kube.pod_watcher import pod_watcher
from podiam.kube.watcher import WatchHealth
from podiam.observability.metrics import Metrics
from podiam.policy import RolePolicy
from podiam.readiness import Readiness
from podiam.settings import KubeSettings, RoleSettings
from podiam_sandbox.kubeapi import write_kubeconfig


def closed_port() -> int:
    """A port nothing listens on: connections to it are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def readyz(readiness: Readiness, metrics: Metrics) -> tuple[int, str]:
    async with TestClient(TestServer(make_ops_app(metrics, readiness.reason))) as client:
        resp = await client.get("/readyz")
        return resp.status, await resp.text()


@pytest.fixture
async def unreachable(tmp_path: Path) -> AsyncIterator[tuple[Readiness, Metrics]]:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{closed_port()}")
    settings = KubeSettings(node_name="node-1", kubeconfig=str(kubeconfig))
    index = PodIndex(RolePolicy.from_settings(RoleSettings(), None).identity)
    metrics = Metrics()
    client = make_client(settings)
    watcher = pod_watcher(client, index, settings, metrics)
    task = asyncio.create_task(watcher.run(), name="pod-watcher")
    try:
        async with asyncio.timeout(10):
            while watcher.health().failing_since is None:
                await asyncio.sleep(0.01)
        yield Readiness(started=lambda: True, stopping=lambda: False, index_synced=index.synced.is_set,
                        watches=[watcher], unready_after=30.0), metrics
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()


async def test_a_pod_watch_that_cannot_reach_the_api_is_the_reason(unreachable: tuple[Readiness, Metrics]) -> None:
    readiness, metrics = unreachable
    status, text = await readyz(readiness, metrics)
    assert status == 503
    assert text.startswith("pods on node-1 watch failing for ")
    assert "ConnectError" in text
    assert metrics.registry.get_sample_value("podiam_watch_synced", {"resource": "pod"}) == 0
    assert not readiness()  # the metadata endpoint's /readyz reads the same decision


class Watch:
    what = "pods on node-1"

    def __init__(self, health: WatchHealth) -> None:
        self._health = health

    def health(self) -> WatchHealth:
        return self._health


SYNCED_FAILING = WatchHealth(synced=True, failing_since=100.0, last_error="ReadTimeout: timed out", failures=3)


@pytest.mark.parametrize(("state", "expected"), [
    ({"stopping": True, "rule": "iptables rule missing"}, "stopping"),
    ({"started": False}, "starting"),
    ({"rule": "iptables rule missing", "now": 200.0}, "iptables rule missing"),
    ({"now": 129.0}, None),  # a synced watch failing for 29 s: still ready
    ({"now": 142.0}, "pods on node-1 watch failing for 42s: ReadTimeout: timed out"),
    ({"synced": False}, "pod index not synced yet"),
    ({}, None),
])
async def test_each_reason_in_its_order(state: dict[str, object], expected: str | None) -> None:
    readiness = Readiness(
        started=lambda: bool(state.get("started", True)),
        stopping=lambda: bool(state.get("stopping", False)),
        index_synced=lambda: bool(state.get("synced", True)),
        watches=[Watch(SYNCED_FAILING)],
        rule_missing=lambda: str(state["rule"]) if "rule" in state else None,
        unready_after=30.0,
        clock=lambda: float(str(state.get("now", 101.0))),
    )
    assert readiness.reason() == expected
    status, text = await readyz(readiness, Metrics())
    assert (status, text) == ((200, "ready\n") if expected is None else (503, f"{expected}\n"))
