"""Split mode's stream over real gRPC with mutual TLS: the server's feed (fed as the server's
cluster index feeds it) into an agent's mirror; snapshot, changes, resume, refusals answered as
agent mode answers them; and the handshakes that must fail."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from podiam.credentials import Credentials, Identity
from podiam.decision import decide, refusal
from podiam.errors import ConfigError, NoRoleError, NoServerReachable, PodNotFound
from podiam.imds.core import ImdsDeps, MetadataCore, Reply, Request
from podiam.imds.rate_limit import RateLimiter
from podiam.imds.tokens import TokenIssuer
from podiam.kube.cluster_index import ClusterIndex
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
from podiam.remote.server import GrpcServer, ServiceSettings
from podiam.remote.tls import TlsFiles, channel_credentials
from podiam.settings import ImdsSettings, RoleSettings
from tls_files import leaf_files, write

BASE = "arn:aws:iam::123456789012:role/"
NODE = "node-1"


def creds(key: str, minutes: int = 60) -> Credentials:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    return Credentials(key, "secret-" + key, "token-" + key, now + dt.timedelta(minutes=minutes), now)


def pod(name: str, ip: str | None, role: str | None = None, node: str = NODE, **kw: object) -> PodInfo:
    notes = {"iam.amazonaws.com/role": role} if role else {}
    return PodInfo("team", name, f"uid-{name}", ip, "Running", annotations=notes, node=node, **kw)  # type: ignore[arg-type]


class Server:
    """A server's parts without Kubernetes: pods go into its cluster index by hand."""

    def __init__(self, feed: ClusterFeed, index: ClusterIndex, grpc_server: GrpcServer) -> None:
        self.feed, self.index, self.grpc = feed, index, grpc_server

    @property
    def address(self) -> str:
        return f"localhost:{self.grpc.port}"


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server_files(tmp_path: Path, ca: trustme.CA) -> TlsFiles:
    return leaf_files(tmp_path, "server", ca.issue_cert("localhost", "127.0.0.1"), ca)


@pytest.fixture
def agent_files(tmp_path: Path, ca: trustme.CA) -> TlsFiles:
    return leaf_files(tmp_path, "agent", ca.issue_cert("agent"), ca)


@pytest.fixture
async def server(server_files: TlsFiles) -> AsyncIterator[Server]:
    policy = RolePolicy.from_settings(RoleSettings(host_network_role="node-role"), BASE)
    feed = ClusterFeed(FeedLimits(change_log=50, send_queue=50), policy.host_identity, prefetch=lambda i: None)
    index = ClusterIndex(policy.identity)
    index.subscribe(feed)
    async with GrpcServer(feed, server_files, ServiceSettings(bind="127.0.0.1:0"), Metrics()) as grpc_server:
        yield Server(feed, index, grpc_server)


class Agent:
    def __init__(self, mirror: Mirror, stream: ServerStream, metrics: Metrics) -> None:
        self.mirror, self.stream, self.metrics = mirror, stream, metrics
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Agent:
        self.task = asyncio.create_task(self.stream.run(), name="test-stream")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


def make_agent(addresses: list[str], files: TlsFiles, server_name: str | None = None) -> Agent:
    metrics = Metrics()
    mirror = Mirror(lambda decide_: PodIndex(decide_, host_ips=["10.0.0.1"]), NODE)
    stream = ServerStream(mirror, files, StreamSettings(tuple(addresses), server_name=server_name,
                                                        retry_initial=0.05, retry_max=0.2), metrics)
    return Agent(mirror, stream, metrics)


async def until(check: Callable[[], bool], what: str) -> None:
    async with asyncio.timeout(10):
        while not check():
            await asyncio.sleep(0.01)  # polling a condition under a deadline


async def test_snapshot_then_changes_reach_the_mirror(server: Server, agent_files: TlsFiles) -> None:
    a = pod("a", "10.0.0.5", "role-a")
    server.index.replace([a, pod("plain", "10.0.0.6"), pod("elsewhere", "10.0.1.5", "role-x", node="node-2"),
                          pod("hostnet", "10.0.0.2", host_network=True)])
    identity_a = server.index.node(NODE).lookup("10.0.0.5").identity  # type: ignore[union-attr]
    assert identity_a is not None
    server.feed.outcome(identity_a, creds("AKIAA"))
    async with make_agent([server.address], agent_files) as agent:
        mirror = agent.mirror
        await asyncio.wait_for(mirror.synced.wait(), 10)
        assert len(mirror) == 2  # this node's active pods only
        assert mirror.lookup("10.0.0.5").identity == identity_a
        assert mirror.fresh(identity_a) == creds("AKIAA")
        assert mirror.is_host_ip("10.0.0.2") and mirror.is_host_ip("10.0.0.1")
        assert mirror.host_identity == Identity(BASE + "node-role", "hostnetwork.node-1")
        with pytest.raises(PodNotFound):
            mirror.lookup("10.0.1.5")
        # Changes: a new pod, new credentials, a pod gone.
        server.index.upsert(pod("b", "10.0.0.7", "role-b"))
        await until(lambda: _known(mirror, "10.0.0.7"), "pod b")
        identity_b = mirror.lookup("10.0.0.7").identity
        assert identity_b is not None and mirror.fresh(identity_b) is None
        waiting = asyncio.create_task(mirror.get(identity_b))
        server.feed.outcome(identity_b, creds("AKIAB"))
        assert (await waiting).access_key_id == "AKIAB"  # a request that waited gets them as they arrive
        server.index.delete(a)
        await until(lambda: not _known(mirror, "10.0.0.5"), "pod a gone")
        assert mirror.fresh(identity_a) is None  # its last user went: dropped


def _known(mirror: Mirror, ip: str) -> bool:
    try:
        mirror.lookup(ip)
    except PodNotFound:
        return False
    return True


async def test_a_pods_service_account_reaches_the_mirror(server: Server, agent_files: TlsFiles) -> None:
    # The agent's audit records name it (observability/audit.py): in a snapshot and in a change.
    server.index.replace([pod("a", "10.0.0.5", "role-a", service_account="sa-a"), pod("plain", "10.0.0.6")])
    async with make_agent([server.address], agent_files) as agent:
        mirror = agent.mirror
        await asyncio.wait_for(mirror.synced.wait(), 10)
        assert mirror.lookup("10.0.0.5").pod.service_account == "sa-a"
        assert mirror.lookup("10.0.0.6").pod.service_account is None  # none named: none, not ""
        server.index.upsert(pod("b", "10.0.0.7", "role-b", service_account="sa-b"))
        await until(lambda: _known(mirror, "10.0.0.7"), "pod b")
        assert mirror.lookup("10.0.0.7").pod.service_account == "sa-b"


async def test_a_refusal_is_answered_as_agent_mode_answers_it(server: Server, agent_files: TlsFiles) -> None:
    server.index.replace([pod("plain", "10.0.0.6"), pod("bad", "10.0.0.8", "not a role!")])
    async with make_agent([server.address], agent_files) as agent:
        await asyncio.wait_for(agent.mirror.synced.wait(), 10)
        for ip in ("10.0.0.6", "10.0.0.8"):
            here = decide(agent.mirror.lookup(ip))
            there = decide(server.index.node(NODE).lookup(ip))  # type: ignore[union-attr]
            assert here == there
        assert isinstance(agent.mirror.lookup("10.0.0.6").problem, NoRoleError)


async def test_a_reconnecting_agent_resumes_from_the_change_log(server: Server, agent_files: TlsFiles) -> None:
    server.index.replace([pod("a", "10.0.0.5", "role-a")])
    agent = make_agent([server.address], agent_files)
    async with agent:
        await asyncio.wait_for(agent.mirror.synced.wait(), 10)
    # While it is away: two changes, kept in the log.
    server.index.upsert(pod("b", "10.0.0.7", "role-b"))
    server.index.delete(pod("a", "10.0.0.5", "role-a"))
    assert _known(agent.mirror, "10.0.0.5")  # the mirror serves what it had meanwhile
    async with agent:  # the same mirror, a new stream
        await until(lambda: _known(agent.mirror, "10.0.0.7") and not _known(agent.mirror, "10.0.0.5"), "resumed")
        (sub,) = server.feed.node(NODE).subscribers
        assert sub.snapshots == 0  # what it missed, not a snapshot


def test_resume_needs_this_servers_epoch_and_a_log_that_reaches_back() -> None:
    feed = ClusterFeed(FeedLimits(change_log=3, send_queue=10), lambda n: None, prefetch=lambda i: None)
    index = ClusterIndex(lambda p: Identity(BASE + "r", p.name))
    index.subscribe(feed)
    index.upsert(pod("a", "10.0.0.5"))
    node = feed.node(NODE)
    point = node.resume_point()
    assert node.since(point) == []
    index.upsert(pod("b", "10.0.0.6"))
    assert [u.pod.name for u in node.since(point) or []] == ["b"]
    assert node.since(pb.ResumePoint(epoch="another-server", sequence=point.sequence)) is None
    for name in ("c", "d", "e", "f"):
        index.upsert(pod(name, f"10.0.0.{ord(name)}"))
    assert node.since(point) is None  # fell off the log: a snapshot
    assert node.since(None) is None


def test_a_slow_agent_gets_a_snapshot_instead_of_an_unbounded_queue() -> None:
    feed = ClusterFeed(FeedLimits(change_log=100, send_queue=3), lambda n: None, prefetch=lambda i: None)
    index = ClusterIndex(lambda p: Identity(BASE + "r", p.name))
    index.subscribe(feed)
    sub = feed.subscribe(NODE, None)
    assert sub.resync
    for i in range(10):
        index.upsert(pod(f"p{i}", f"10.0.0.{i + 10}"))
    assert sub.resync and not sub._pending


async def test_without_a_server_an_unknown_pod_gets_the_503_and_known_pods_are_served(
        server_files: TlsFiles, agent_files: TlsFiles) -> None:
    agent = make_agent(["localhost:1"], agent_files)
    identity = Identity(BASE + "r", "team.a")
    agent.mirror.apply(pb.NodeUpdate(resume=pb.ResumePoint(epoch="e", sequence=1), snapshot=pb.Snapshot(
        pods=[pb.Pod(uid="u", namespace="team", name="a", ip="10.0.0.5",
                     identity=pb.Identity(role_arn=identity.role_arn, session_name="team.a"))])))
    async with agent:
        assert agent.mirror.lookup("10.0.0.5").identity == identity
        with pytest.raises(NoServerReachable) as e:
            await agent.mirror.wait_for("10.0.0.9", 0.05)
        assert refusal(e.value).status == 503 and "no podiam server is reachable" in str(e.value)


async def test_the_request_path_makes_no_rpc(server: Server, agent_files: TlsFiles) -> None:
    server.index.replace([pod("a", "10.0.0.5", "role-a")])
    async with make_agent([server.address], agent_files) as agent:
        await asyncio.wait_for(agent.mirror.synced.wait(), 10)
        rpcs = agent.metrics.registry.get_sample_value("podiam_remote_rpcs_total")
        for _ in range(100):
            decide(agent.mirror.lookup("10.0.0.5"))
        assert agent.metrics.registry.get_sample_value("podiam_remote_rpcs_total") == rpcs == 1


async def test_a_dead_address_is_skipped_for_the_next(server: Server, agent_files: TlsFiles) -> None:
    async with make_agent(["localhost:1", server.address], agent_files) as agent:
        await asyncio.wait_for(agent.mirror.synced.wait(), 10)


# -- mTLS -----------------------------------------------------------------------------------------

async def watch_once(address: str, credentials: grpc.ChannelCredentials, name: str = "localhost") -> pb.NodeUpdate:
    async with grpc.aio.secure_channel(address, credentials,
                                       options=[("grpc.ssl_target_name_override", name)]) as channel:
        call = pb_grpc.PodiamStub(channel).WatchNode(pb.WatchNodeRequest(node=NODE), timeout=5)
        try:
            return await anext(aiter(call))
        finally:
            call.cancel()


async def test_an_agent_with_its_certificate_is_served(server: Server, agent_files: TlsFiles) -> None:
    assert (await watch_once(server.address, channel_credentials(agent_files))).HasField("snapshot")


async def test_a_client_without_a_certificate_is_refused(server: Server, ca: trustme.CA) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await watch_once(server.address, grpc.ssl_channel_credentials(root_certificates=ca.cert_pem.bytes()))
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_certificate_from_another_ca_is_refused(server: Server, ca: trustme.CA) -> None:
    other = trustme.CA().issue_cert("agent")
    credentials = grpc.ssl_channel_credentials(root_certificates=ca.cert_pem.bytes(),
                                               private_key=other.private_key_pem.bytes(),
                                               certificate_chain=other.cert_chain_pems[0].bytes())
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await watch_once(server.address, credentials)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def server_only_cert(ca: trustme.CA) -> tuple[bytes, bytes]:
    """A certificate signed by the CA, with serverAuth only (no clientAuth): trustme cannot make it."""
    ca_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), None)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agent")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


async def test_a_certificate_without_client_auth_usage_is_refused(server: Server, ca: trustme.CA) -> None:
    cert, key = server_only_cert(ca)
    credentials = grpc.ssl_channel_credentials(root_certificates=ca.cert_pem.bytes(), private_key=key,
                                               certificate_chain=cert)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await watch_once(server.address, credentials)
    assert e.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED)


async def test_the_agent_refuses_a_server_from_another_ca(tmp_path: Path, agent_files: TlsFiles) -> None:
    rogue_ca = trustme.CA()
    rogue = leaf_files(tmp_path, "rogue", rogue_ca.issue_cert("localhost", "127.0.0.1"), rogue_ca)
    feed = ClusterFeed(FeedLimits(), lambda n: None, prefetch=lambda i: None)
    async with GrpcServer(feed, rogue, ServiceSettings(bind="127.0.0.1:0"), Metrics()) as rogue_server:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await watch_once(f"localhost:{rogue_server.port}", channel_credentials(agent_files))
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_the_agent_refuses_a_server_with_another_name(server: Server, agent_files: TlsFiles) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await watch_once(server.address, channel_credentials(agent_files), name="podiam.elsewhere")
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_replaced_certificate_files_apply_to_new_connections(
        tmp_path: Path, server: Server, server_files: TlsFiles) -> None:
    # CA rollover: the server's files now name a new CA; an agent of the new CA gets in, the old one not.
    new_ca = trustme.CA()
    new_server = new_ca.issue_cert("localhost", "127.0.0.1")
    for path, blob in ((server_files.cert, new_server.cert_chain_pems[0]),
                       (server_files.key, new_server.private_key_pem), (server_files.ca, new_ca.cert_pem)):
        write(Path(path).parent, Path(path).name, blob)
    new_agent = leaf_files(tmp_path, "new-agent", new_ca.issue_cert("agent"), new_ca)
    assert (await watch_once(server.address, channel_credentials(new_agent))).HasField("snapshot")


async def test_a_server_that_has_not_listed_the_pods_sends_agents_elsewhere(
        server_files: TlsFiles, agent_files: TlsFiles) -> None:
    """A replica that has just started would otherwise snapshot an empty node, and its agents
    would drop every pod they know (requests 404 until the list arrived)."""
    policy = RolePolicy.from_settings(RoleSettings(), BASE)
    fresh_feed = ClusterFeed(FeedLimits(change_log=50, send_queue=50), policy.host_identity, prefetch=lambda i: None)
    listed = False
    async with GrpcServer(fresh_feed, server_files, ServiceSettings(bind="127.0.0.1:0"), Metrics(),
                          synced=lambda: listed) as unlisted:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await watch_once(f"localhost:{unlisted.port}", channel_credentials(agent_files))
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        # An agent that knows its pods (from another replica) keeps them while this one refuses it.
        agent = make_agent([f"localhost:{unlisted.port}"], agent_files)
        agent.mirror.apply(pb.NodeUpdate(resume=pb.ResumePoint(epoch="e", sequence=1), snapshot=pb.Snapshot(
            pods=[pb.Pod(uid="u", namespace="team", name="a", ip="10.0.0.5",
                         identity=pb.Identity(role_arn=BASE + "role-a", session_name="team.a"))])))
        async with agent:
            await until(lambda: agent.metrics.registry.get_sample_value(
                "podiam_remote_stream_failures_total", {"code": "UNAVAILABLE"}) is not None, "a refused stream")
            assert agent.mirror.lookup("10.0.0.5").identity == Identity(BASE + "role-a", "team.a")
            listed = True
            await until(lambda: agent.mirror.connected, "the stream once the replica has listed its pods")


async def test_a_quiet_node_stays_connected_across_the_servers_connection_age(
        server_files: TlsFiles, agent_files: TlsFiles) -> None:
    """The server closes every connection after max_connection_age so agents re-resolve; on a
    node where nothing changed, the resumed stream has nothing to send. It must still count as
    open: not be abandoned as silent, nor make the agent refuse new pods as serverless."""
    policy = RolePolicy.from_settings(RoleSettings(), BASE)
    feed = ClusterFeed(FeedLimits(change_log=50, send_queue=50), policy.host_identity, prefetch=lambda i: None)
    index = ClusterIndex(policy.identity)
    index.subscribe(feed)
    index.replace([pod("a", "10.0.0.5", "role-a")])
    ageing = ServiceSettings(bind="127.0.0.1:0", max_connection_age=1.0, max_connection_age_grace=0.1)
    async with GrpcServer(feed, server_files, ageing, Metrics()) as grpc_server:
        metrics = Metrics()
        mirror = Mirror(PodIndex, NODE)
        stream = ServerStream(mirror, agent_files, StreamSettings(
            (f"localhost:{grpc_server.port}",), first_update_timeout=0.5, retry_initial=0.05, retry_max=0.2), metrics)
        async with Agent(mirror, stream, metrics):
            rpcs = lambda: metrics.registry.get_sample_value("podiam_remote_rpcs_total") or 0  # noqa: E731
            await until(lambda: rpcs() >= 3, "two resumed streams after the connection age")
            timeouts = metrics.registry.get_sample_value("podiam_remote_stream_failures_total",
                                                         {"code": "TimeoutError"})
            assert timeouts is None, "a resumed stream with nothing to send was abandoned as silent"
            await until(lambda: mirror.connected, "the resumed stream to count as open")


async def test_the_nodes_own_network_gets_the_host_identity_of_the_latest_snapshot(
        server: Server, agent_files: TlsFiles) -> None:
    """The endpoint reads the host identity from its pod lookup at each request. An agent that
    started before any server answered (it then serves from an empty mirror) must serve
    --host-network-role as soon as a snapshot brings it, not refuse it until restarted."""
    host = Identity(BASE + "node-role", "hostnetwork.node-1")
    server.index.replace([pod("a", "10.0.0.5", "role-a")])
    server.feed.outcome(host, creds("AKIAHOST"))
    agent = make_agent([server.address], agent_files)
    deps = ImdsDeps(pods=agent.mirror, credentials=agent.mirror, tokens=TokenIssuer(), issuance=IssuanceLog(NODE),
                    metrics=agent.metrics, settings=ImdsSettings(pod_wait=0.01), upstream=None, ready=lambda: True,
                    limiter=RateLimiter(0))
    core = MetadataCore(deps)  # built before the first snapshot, as the runner does after its wait
    path = "/latest/meta-data/iam/security-credentials/"
    before = core.answer(Request("GET", path, {}, "10.0.0.1"))
    assert isinstance(before, Reply) and before.status == 403  # no snapshot yet: the node's network is refused
    async with agent:
        await asyncio.wait_for(agent.mirror.synced.wait(), 10)
        reply = core.answer(Request("GET", path, {}, "10.0.0.1"))
        assert isinstance(reply, Reply)
        assert (reply.status, reply.body) == (200, b"node-role")


async def test_a_second_server_on_a_bound_port_is_a_configuration_error(server: Server, server_files: TlsFiles) -> None:
    policy = RolePolicy.from_settings(RoleSettings(), BASE)
    feed = ClusterFeed(FeedLimits(change_log=50, send_queue=50), policy.host_identity, prefetch=lambda i: None)
    with pytest.raises(ConfigError, match="cannot listen"):
        GrpcServer(feed, server_files, ServiceSettings(bind=f"127.0.0.1:{server.grpc.port}"), Metrics())
