"""The node-ready taint against the Kubernetes API emulator over real HTTP, and split mode's
ReportReady over real mutual-TLS gRPC:

- one removal: the key's taints go, every other stays; a node without it is not written;
  a node changed between the read and the patch answers 409 and is left as the other writer
  left it; a missing node and a failing API are errors (the caller retries);
- split mode: the agent, once its mirror is synced, reports ready on its stream's channel and
  the server removes its own key's taint; a server without --node-ready-taint answers and
  writes nothing; a replica that cannot reach the API fails the report, and the agent's next
  report, on its new stream to another replica, removes the taint.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kmock
import lightkube
import pytest
import pytest_asyncio
import trustme

from podiam.errors import KubeError, NodeChanged, NodeNotFound
from podiam.kube.connection import make_client
from podiam.kube.node_taint import patch_node, read_node_taints, remove_node_taint
from podiam.kube.pod_index import PodIndex
from podiam.node.ready_taint import ReadyTaintRemoval, TaintOutcome
from podiam.observability.metrics import Metrics
from podiam.policy import RolePolicy
from podiam.remote.client import ServerStream, StreamSettings
from podiam.remote.feed import ClusterFeed, FeedLimits
from podiam.remote.mirror import Mirror
from podiam.remote.ready import report_ready
from podiam.remote.server import GrpcServer, ServiceSettings
from podiam.remote.tls import TlsFiles
from podiam.server_runner import NodeReadyTaint
from podiam.settings import KubeSettings, ReadyTaintSettings, RoleSettings
from podiam_sandbox.kubeapi import KubeApi, run_kubeapi, write_kubeconfig
from podiam_sandbox.kubeapi_emulator import KubeApiEmulator
from podiam_sandbox.world import wait_until
from tls_files import leaf_files

NODE = "node-1"
KEY = "podiam.io/agent-not-ready"
OURS = {"key": KEY, "value": "true", "effect": "NoSchedule"}
OTHER = {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}
DEAD_API = "http://127.0.0.1:9"  # the discard port: nothing listens there
FAST = ReadyTaintSettings(key=KEY, ready_poll=0.02, call_timeout=2.0, report_timeout=3.0, retry_initial=0.05,
                          retry_max=0.2)


@pytest_asyncio.fixture
async def api() -> AsyncIterator[KubeApi]:
    async with run_kubeapi() as running:
        yield running


@pytest_asyncio.fixture
async def client(api: KubeApi, tmp_path: Path) -> AsyncIterator[lightkube.AsyncClient]:
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    kube = make_client(KubeSettings(node_name=NODE, kubeconfig=str(kubeconfig)))
    yield kube
    await kube.close()


async def add_node(emulator: KubeApiEmulator, *taints: dict[str, Any], name: str = NODE) -> dict[str, Any]:
    spec = {"taints": list(taints)} if taints else {}
    return await emulator.create_object("nodes", {"metadata": {"name": name}, "spec": spec})


async def taints_of(emulator: KubeApiEmulator, name: str = NODE) -> list[dict[str, Any]]:
    return list((await emulator.get_object("nodes", name)).get("spec", {}).get("taints") or [])


def writes(emulator: KubeApiEmulator, name: str = NODE) -> int:
    """PATCH requests on the Node the emulator received, whatever it answered."""
    return sum(1 for r in emulator if r.resource is not None and r.resource.plural == "nodes" and r.name == name
               and r.method == kmock.method.PATCH)


async def test_only_the_keys_taints_are_removed(api: KubeApi, client: lightkube.AsyncClient) -> None:
    execute = {"key": KEY, "effect": "NoExecute"}
    await add_node(api.emulator, OTHER, OURS, execute)
    assert await remove_node_taint(client, NODE, KEY, timeout=5) is True
    assert await taints_of(api.emulator) == [OTHER]
    assert writes(api.emulator) == 1


async def test_the_last_taint_going_leaves_a_node_without_taints(api: KubeApi, client: lightkube.AsyncClient) -> None:
    await add_node(api.emulator, OURS)
    assert await remove_node_taint(client, NODE, KEY, timeout=5) is True
    assert "taints" not in (await api.emulator.get_object("nodes", NODE))["spec"]


async def test_a_node_without_the_taint_is_not_written(api: KubeApi, client: lightkube.AsyncClient) -> None:
    created = await add_node(api.emulator, OTHER)
    assert await remove_node_taint(client, NODE, KEY, timeout=5) is False
    assert writes(api.emulator) == 0
    assert (await api.emulator.get_object("nodes", NODE))["metadata"]["resourceVersion"] == (
        created["metadata"]["resourceVersion"])


async def test_a_node_changed_after_the_read_is_409_and_keeps_the_other_writers_taint(
    api: KubeApi, client: lightkube.AsyncClient,
) -> None:
    await add_node(api.emulator, OURS)
    read = await read_node_taints(client, NODE)
    # `kubectl taint` between our read and our write.
    await api.emulator.patch_object("nodes", NODE, {"spec": {"taints": [OURS, OTHER]}})
    patch = read.without(KEY)
    assert patch is not None
    with pytest.raises(NodeChanged):
        await patch_node(client, NODE, patch)
    assert await taints_of(api.emulator) == [OURS, OTHER]
    # The next removal reads again, and keeps the other writer's taint.
    assert await remove_node_taint(client, NODE, KEY, timeout=5) is True
    assert await taints_of(api.emulator) == [OTHER]


async def test_a_missing_node_is_node_not_found(client: lightkube.AsyncClient) -> None:
    with pytest.raises(NodeNotFound, match="node node-1 does not exist"):
        await remove_node_taint(client, NODE, KEY, timeout=5)


async def test_an_api_error_is_a_kube_error_and_writes_nothing(api: KubeApi, client: lightkube.AsyncClient) -> None:
    await add_node(api.emulator, OURS)
    api.emulator["patch /api/v1/nodes/node-1"] << kmock.KubernetesError(
        status=403, reason="Forbidden", message='nodes "node-1" is forbidden: cannot patch resource "nodes"')
    with pytest.raises(KubeError, match="403 Forbidden") as error:
        await remove_node_taint(client, NODE, KEY, timeout=5)
    assert not isinstance(error.value, NodeChanged | NodeNotFound)
    assert await taints_of(api.emulator) == [OURS]


async def test_an_unreachable_api_is_a_kube_error(tmp_path: Path) -> None:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", DEAD_API)
    kube = make_client(KubeSettings(node_name=NODE, kubeconfig=str(kubeconfig)))
    try:
        with pytest.raises(KubeError, match="cannot reach the Kubernetes API"):
            await remove_node_taint(kube, NODE, KEY, timeout=5)
    finally:
        await kube.close()


# --- Split mode: ReportReady -------------------------------------------------------------------


@contextlib.asynccontextmanager
async def server(files: TlsFiles, kube: lightkube.AsyncClient | None, metrics: Metrics) -> AsyncIterator[str]:
    """A podiam server's gRPC service (no pods) whose ReportReady removes KEY with ``kube``; None: no key."""
    policy = RolePolicy.from_settings(RoleSettings(), "arn:aws:iam::123456789012:role/")
    feed = ClusterFeed(FeedLimits(change_log=50, send_queue=50), policy.host_identity, prefetch=lambda i: None)
    ready_nodes = NodeReadyTaint(kube, KEY, FAST.call_timeout) if kube is not None else None
    async with GrpcServer(feed, files, ServiceSettings(bind="127.0.0.1:0", shutdown_grace=0.1), metrics,
                          ready_nodes=ready_nodes) as grpc_server:
        yield f"localhost:{grpc_server.port}"


@contextlib.asynccontextmanager
async def split_agent(addresses: list[str], files: TlsFiles) -> AsyncIterator[ReadyTaintRemoval]:
    """A split agent's stream and its readiness report, ready once its mirror has a snapshot."""
    mirror = Mirror(PodIndex, NODE)
    stream = ServerStream(mirror, files, StreamSettings(tuple(addresses), retry_initial=0.05, retry_max=0.2),
                          Metrics())

    async def report() -> TaintOutcome:
        key, removed = await report_ready(lambda: stream.channel, NODE, timeout=FAST.report_timeout)
        return TaintOutcome(key, removed)

    task = asyncio.create_task(stream.run(), name="test-stream")
    try:
        async with ReadyTaintRemoval(report, mirror.synced.is_set, FAST, node=NODE) as removal:
            yield removal
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest_asyncio.fixture
async def pki(tmp_path: Path) -> tuple[TlsFiles, TlsFiles]:
    ca = trustme.CA()
    return (leaf_files(tmp_path, "server", ca.issue_cert("localhost", "127.0.0.1"), ca),
            leaf_files(tmp_path, "agent", ca.issue_cert("agent"), ca))


def ready_reports(metrics: Metrics, outcome: str) -> float:
    return metrics.registry.get_sample_value("podiam_server_ready_reports_total", {"outcome": outcome}) or 0.0


async def test_a_ready_split_agent_has_the_server_remove_its_own_key(
    api: KubeApi, client: lightkube.AsyncClient, pki: tuple[TlsFiles, TlsFiles],
) -> None:
    server_files, agent_files = pki
    await add_node(api.emulator, OURS, OTHER)
    metrics = Metrics()
    async with server(server_files, client, metrics) as address, split_agent([address], agent_files) as removal:
        await asyncio.wait_for(removal.done.wait(), 10)
    assert removal.outcome == TaintOutcome(KEY, removed=True)
    assert await taints_of(api.emulator) == [OTHER]
    assert ready_reports(metrics, "removed") == 1


async def test_a_server_without_the_flag_answers_and_writes_nothing(
    api: KubeApi, pki: tuple[TlsFiles, TlsFiles],
) -> None:
    server_files, agent_files = pki
    await add_node(api.emulator, OURS)
    metrics = Metrics()
    async with server(server_files, None, metrics) as address, split_agent([address], agent_files) as removal:
        await asyncio.wait_for(removal.done.wait(), 10)
    assert removal.outcome == TaintOutcome(None, removed=False)
    assert await taints_of(api.emulator) == [OURS] and writes(api.emulator) == 0
    assert ready_reports(metrics, "no_taint") == 1


async def test_a_report_that_failed_is_made_again_on_the_next_replica(
    api: KubeApi, client: lightkube.AsyncClient, pki: tuple[TlsFiles, TlsFiles], tmp_path: Path,
) -> None:
    server_files, agent_files = pki
    await add_node(api.emulator, OURS)
    # Replica A cannot reach the API (nothing listens at its address); replica B can.
    cut_off = make_client(KubeSettings(node_name="", kubeconfig=str(write_kubeconfig(
        tmp_path / "dead-kubeconfig", DEAD_API))))
    a_metrics, b_metrics = Metrics(), Metrics()
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(cut_off.close)
        b_address = await stack.enter_async_context(server(server_files, client, b_metrics))
        replica_a = contextlib.AsyncExitStack()
        stack.push_async_callback(replica_a.aclose)
        a_address = await replica_a.enter_async_context(server(server_files, cut_off, a_metrics))
        removal = await stack.enter_async_context(split_agent([a_address, b_address], agent_files))

        async def failed_on_a() -> bool:
            return ready_reports(a_metrics, "failed") >= 1

        await wait_until(failed_on_a, what="a failed report on replica A")
        assert not removal.done.is_set() and await taints_of(api.emulator) == [OURS]
        await replica_a.aclose()  # A goes away; the agent's stream moves to B, and so does its report
        await asyncio.wait_for(removal.done.wait(), 10)
    assert removal.outcome == TaintOutcome(KEY, removed=True)
    assert await taints_of(api.emulator) == []
    assert ready_reports(b_metrics, "removed") == 1
