"""Split mode's Warning events over real mTLS gRPC and the Kubernetes API emulator: a pod
asking the split agent for another role is refused there, the agent reports it, and the
server writes the IAMRoleForbidden event on the pod; a report naming a pod that is not on the
reporting agent's node is ignored."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest_asyncio
import trustme

from podiam.imds.core import ImdsDeps, MetadataCore, Reply, Request
from podiam.imds.rate_limit import RateLimiter
from podiam.imds.tokens import TokenIssuer
from podiam.kube.cluster_index import ClusterIndex
from podiam.kube.connection import make_client
from podiam.kube.events import EventRecorder
from podiam.kube.pod_index import PodIndex
from podiam.observability.audit import IssuanceLog
from podiam.observability.metrics import Metrics
from podiam.pods import PodInfo
from podiam.policy import RolePolicy
from podiam.remote import podiam_pb2 as pb
from podiam.remote import podiam_pb2_grpc as pb_grpc
from podiam.remote.client import ServerStream, StreamSettings
from podiam.remote.feed import ClusterFeed, FeedLimits
from podiam.remote.mirror import Mirror
from podiam.remote.reports import RefusalReporter
from podiam.remote.server import GrpcServer, ServiceSettings
from podiam.remote.tls import TlsFiles, channel_credentials
from podiam.server_runner import AgentRefusals
from podiam.settings import EventSettings, ImdsSettings, KubeSettings, ReportSettings, RoleSettings
from podiam_sandbox.kubeapi import run_kubeapi
from podiam_sandbox.kubeapi_emulator import KubeApiEmulator
from podiam_sandbox.world import wait_until
from tls_files import leaf_files

BASE = "arn:aws:iam::123456789012:role/"
NODE = "node-1"


def pod(name: str, ip: str, role: str, node: str = NODE) -> PodInfo:
    return PodInfo("team", name, f"uid-{name}", ip, "Running", annotations={"iam.amazonaws.com/role": role},
                   node=node)


@dataclass
class World:
    emulator: KubeApiEmulator
    index: ClusterIndex
    server_metrics: Metrics
    address: str
    agent_files: TlsFiles

    async def events(self, pod_name: str) -> list[dict[str, Any]]:
        found = await self.emulator.list_objects("events", namespace="team")
        return [e for e in found if e["involvedObject"]["name"] == pod_name]

    def reported(self, outcome: str) -> float:
        value = self.server_metrics.registry.get_sample_value("podiam_server_reported_refusals_total",
                                                              {"outcome": outcome})
        return value or 0.0


@pytest_asyncio.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    ca = trustme.CA()
    server_files = leaf_files(tmp_path, "server", ca.issue_cert("localhost", "127.0.0.1"), ca)
    agent_files = leaf_files(tmp_path, "agent", ca.issue_cert("agent"), ca)
    policy = RolePolicy.from_settings(RoleSettings(), BASE)
    feed = ClusterFeed(FeedLimits(change_log=50, send_queue=50), policy.host_identity, prefetch=lambda i: None)
    index = ClusterIndex(policy.identity)
    index.subscribe(feed)
    metrics = Metrics()
    async with run_kubeapi() as api:
        client = make_client(KubeSettings(node_name="", kubeconfig=str(api.write_kubeconfig(tmp_path / "kubeconfig"))))
        try:
            async with (EventRecorder(client, metrics, node="podiam-server", settings=EventSettings()) as recorder,
                        GrpcServer(feed, server_files, ServiceSettings(bind="127.0.0.1:0"), metrics,
                                   AgentRefusals(index, recorder)) as grpc_server):
                yield World(api.emulator, index, metrics, f"localhost:{grpc_server.port}", agent_files)
        finally:
            await client.close()


async def answer(core: MetadataCore, request: Request) -> Reply:
    result = core.answer(request)
    return await result if inspect.isawaitable(result) else result


async def test_a_role_mismatch_at_the_split_agent_becomes_a_warning_event_on_the_pod(world: World) -> None:
    world.index.replace([pod("web", "10.0.0.5", "reader")])
    metrics = Metrics()
    mirror = Mirror(PodIndex, NODE)
    stream = ServerStream(mirror, world.agent_files, StreamSettings((world.address,), retry_initial=0.05,
                                                                    retry_max=0.2), metrics)
    reporter = RefusalReporter(NODE, lambda: stream.channel, ReportSettings(retry_initial=0.05, retry_max=0.2),
                               metrics)
    deps = ImdsDeps(pods=mirror, credentials=mirror, tokens=TokenIssuer(), issuance=IssuanceLog(NODE),
                    metrics=metrics, settings=ImdsSettings(pod_wait=0.01), upstream=None, ready=lambda: True,
                    limiter=RateLimiter(0), events=reporter)
    core = MetadataCore(deps)
    task = asyncio.create_task(stream.run(), name="test-stream")
    try:
        async with reporter:
            await asyncio.wait_for(mirror.synced.wait(), 10)
            for _ in range(3):
                reply = await answer(core, Request("GET", "/latest/meta-data/iam/security-credentials/writer", {},
                                                   "10.0.0.5"))
                assert reply.status == 403

            async def reported() -> bool:
                return [(e["reason"], e["type"], e["count"]) for e in await world.events("web")] == [
                    ("IAMRoleForbidden", "Warning", 3)]

            await wait_until(reported, what="the IAMRoleForbidden event on team/web")
            assert len(reporter) == 0
            assert metrics.registry.get_sample_value("podiam_remote_refusals_reported_total") == 3
            assert world.reported("recorded") >= 1
            # The request path made no RPC: the stream is the only one counted there.
            assert metrics.registry.get_sample_value("podiam_remote_rpcs_total") == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_report_for_a_pod_on_another_node_is_ignored(world: World) -> None:
    world.index.replace([pod("web", "10.0.0.5", "reader"), pod("other", "10.0.1.5", "reader", node="node-2")])
    def refusal(uid: str, name: str, reason: str = "IAMRoleForbidden") -> pb.ReportedRefusal:
        return pb.ReportedRefusal(pod_uid=uid, namespace="team", name=name, reason=reason, message="forged", count=1)

    request = pb.ReportRefusalsRequest(node=NODE, refusals=[
        refusal("uid-other", "other"),  # node-2's pod
        refusal("uid-web", "not-web"),  # this node's uid, another name
        refusal("uid-web", "web", "Anything"),  # not a reason podiam writes
    ])
    options = [("grpc.ssl_target_name_override", "localhost")]
    async with grpc.aio.secure_channel(world.address, channel_credentials(world.agent_files), options) as channel:
        reply = await pb_grpc.PodiamStub(channel).ReportRefusals(request, timeout=5)
    assert (reply.recorded, reply.ignored) == (0, 3)
    assert world.reported("ignored") == 3
    assert await world.events("other") == [] and await world.events("web") == []


async def test_refusals_still_pending_at_shutdown_are_sent_before_the_stream_closes(world: World) -> None:
    """A refusal made while no stream was open waits out the back-off; an agent stopping in
    that time sends it when it drains (the runner calls flush before it stops the stream),
    rather than dropping the event the pod's owner needs."""
    world.index.replace([pod("web", "10.0.0.5", "reader")])
    metrics = Metrics()
    mirror = Mirror(PodIndex, NODE)
    stream = ServerStream(mirror, world.agent_files, StreamSettings((world.address,), retry_initial=0.05,
                                                                    retry_max=0.2), metrics)
    open_channel = False
    reporter = RefusalReporter(NODE, lambda: stream.channel if open_channel else None,
                               ReportSettings(retry_initial=600, retry_max=600), metrics)
    task = asyncio.create_task(stream.run(), name="test-stream")
    try:
        async with reporter:
            await asyncio.wait_for(mirror.synced.wait(), 10)
            web = mirror.lookup("10.0.0.5").pod
            for _ in range(2):
                reporter.warn(web, "IAMRoleForbidden", "asked for writer")

            async def first_report_failed() -> bool:
                return metrics.registry.get_sample_value("podiam_remote_report_failures_total",
                                                         {"code": "no_stream"}) == 1

            await wait_until(first_report_failed, what="the first report, made with no stream open")
            open_channel = True  # the stream is up; the sender sleeps out its 600 s back-off
            await reporter.flush()
            assert len(reporter) == 0
            assert metrics.registry.get_sample_value("podiam_remote_refusals_reported_total") == 2
            assert metrics.registry.get_sample_value("podiam_remote_refusals_dropped_total",
                                                     {"reason": "shutdown"}) is None

            async def written() -> bool:
                return [(e["reason"], e["count"]) for e in await world.events("web")] == [("IAMRoleForbidden", 2)]

            await wait_until(written, what="the IAMRoleForbidden event written from the flushed report")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_refusals_that_cannot_be_sent_at_shutdown_are_counted_as_dropped(world: World) -> None:
    metrics = Metrics()
    reporter = RefusalReporter(NODE, lambda: None, ReportSettings(retry_initial=600, retry_max=600), metrics)
    async with reporter:
        reporter.warn(pod("web", "10.0.0.5", "reader"), "IAMRoleForbidden", "asked for writer")
        reporter.warn(pod("web", "10.0.0.5", "reader"), "IAMRoleForbidden", "asked for writer")
        await reporter.flush()
    assert len(reporter) == 0
    assert metrics.registry.get_sample_value("podiam_remote_refusals_dropped_total", {"reason": "shutdown"}) == 2
