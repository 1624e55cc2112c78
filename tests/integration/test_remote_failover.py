"""
Split mode's failover, end to end in one process: podiam server replicas wired as
server_runner wires them (their own cluster index, the real credential cache over a
counting in-memory STS, the feed, the gRPC service over mutual TLS), each behind a TCP
proxy that can be frozen (sockets open, nothing forwarded) or reset (a killed node); and an
agent wired as runner._run_split wires it (the stream, the mirror, the real metadata core
and fast server), whose pods fetch credentials over HTTP from 127.0.0.x, as pods do.

Each test is one failure: a replica stopped (gracefully, or killed) under load; both
down for long enough that the reconnect back-off is at its cap; a restart with a slow STS;
a server that stops answering without closing its connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import socket
import struct
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Self

import aiohttp
import pytest
import trustme

from pod_doubles import LoopbackPods
from podiam.backoff import Backoff
from podiam.credentials import Credentials, Identity
from podiam.decision import REFUSALS
from podiam.errors import NoServerReachable
from podiam.imds.core import ImdsDeps, MetadataCore, NoEvents
from podiam.imds.fast_server import FastServer
from podiam.imds.rate_limit import RateLimiter
from podiam.imds.tokens import TokenIssuer
from podiam.kube.cluster_index import ClusterIndex
from podiam.kube.pod_index import PodIndex
from podiam.observability.audit import IssuanceLog
from podiam.observability.metrics import Metrics
from podiam.pods import PodInfo
from podiam.policy import SESSION_NAME_KEY, RolePolicy
from podiam.prefetch import PrefetchWhenIndexed
from podiam.remote.client import ServerStream, StreamSettings
from podiam.remote.feed import ClusterFeed, FeedLimits
from podiam.remote.mirror import Mirror
from podiam.remote.server import GrpcServer, ServiceSettings
from podiam.remote.tls import TlsFiles
from podiam.server_runner import _Listeners, _PrefetchWhenBound
from podiam.settings import ImdsSettings, RoleSettings, StsSettings
from podiam.sts.cache import CredentialCache

BASE = "arn:aws:iam::123456789012:role/"
POLICY = RolePolicy.from_settings(RoleSettings(), BASE)
FAST = StreamSettings((), server_name="localhost", retry_initial=0.05, retry_max=0.5)
"""Reconnect settings for the tests whose subject is not the back-off itself."""


# -- STS and the cluster ------------------------------------------------------------------------

class CountingSts:
    """podiam's Assumer interface, in memory: distinct credentials per call, every call counted.
    ``hold`` makes calls wait until ``release`` (an STS slower than the agents' reconnect)."""

    def __init__(self) -> None:
        self.calls: list[Identity] = []
        self.issued: dict[str, Identity] = {}
        """access key id -> the identity it was issued for."""
        self._open = asyncio.Event()
        self._open.set()

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    async def assume(self, identity: Identity) -> Credentials:
        self.calls.append(identity)
        await self._open.wait()
        key = f"ASIA{len(self.issued):016d}"
        self.issued[key] = identity
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        return Credentials(key, "secret-" + key, "token-" + key, now + dt.timedelta(hours=1), now)


def pod(name: str, ip: str, role: str, node: str = "node-1", session: str | None = None) -> PodInfo:
    notes = {"iam.amazonaws.com/role": role} | ({SESSION_NAME_KEY: session} if session else {})
    return PodInfo("team", name, f"uid-{name}", ip, "Running", annotations=notes, node=node)


class Cluster:
    """The API server's pods, seen by every running replica's watch (its own index)."""

    def __init__(self, pods: Iterable[PodInfo]) -> None:
        self.pods = {p.uid: p for p in pods}
        self.watchers: set[ClusterIndex] = set()

    def upsert(self, p: PodInfo) -> None:
        self.pods[p.uid] = p
        for index in self.watchers:
            index.upsert(p)


# -- a server replica behind a TCP proxy -----------------------------------------------------

class _Pipe(asyncio.Protocol):
    """One side of a proxied connection; forwards what it reads to its peer."""

    def __init__(self, proxy: TcpProxy) -> None:
        self.proxy = proxy
        self.peer: _Pipe | None = None
        self.transport: asyncio.Transport | None = None
        self.early = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.proxy.pipes.add(self)
        if self.proxy.frozen:
            transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)
        else:
            self.early += data

    def connection_lost(self, exc: Exception | None) -> None:
        self.proxy.pipes.discard(self)
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


class TcpProxy:
    """127.0.0.1:port -> 127.0.0.1:target. ``freeze()``: stop forwarding, keep every socket open
    (a hung server or a black-holed route). ``reset()``: RST every connection and stop listening
    (a node that dies)."""

    def __init__(self, target: int, port: int = 0) -> None:
        self.target, self.port = target, port
        self.frozen = False
        self.pipes: set[_Pipe] = set()
        self._server: asyncio.Server | None = None
        self._connecting: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Self:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._accept, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def _accept(self) -> _Pipe:
        down = _Pipe(self)
        task = asyncio.get_running_loop().create_task(self._connect(down), name="test-proxy-connect")
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)
        return down

    async def _connect(self, down: _Pipe) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, up = await loop.create_connection(lambda: _Pipe(self), "127.0.0.1", self.target)
        except OSError:
            if down.transport is not None:
                down.transport.close()
            return
        down.peer, up.peer = up, down
        assert up.transport is not None
        if down.early:
            up.transport.write(bytes(down.early))

    def freeze(self) -> None:
        self.frozen = True
        for p in self.pipes:
            assert p.transport is not None
            p.transport.pause_reading()

    def reset(self) -> None:
        if self._server is not None:
            self._server.close()
        for p in list(self.pipes):
            assert p.transport is not None
            sock = p.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            p.transport.abort()

    async def __aexit__(self, *exc: object) -> None:
        self.reset()
        for task in list(self._connecting):
            task.cancel()
        await asyncio.gather(*self._connecting, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()


class Replica:
    """One `podiam server` replica as server_runner._run wires it, without Kubernetes and AWS:
    its own watch's index of the cluster, its own cache over the shared STS, its own epoch."""

    def __init__(self, cluster: Cluster, sts: CountingSts, files: TlsFiles, *, port: int = 0,
                 grace: float = 0.5) -> None:
        self._cluster, self._sts, self._files = cluster, sts, files
        self.port, self._grace = port, grace
        self.metrics = Metrics()
        self.index = ClusterIndex(POLICY.identity)
        self.feed: ClusterFeed | None = None
        self.proxy: TcpProxy | None = None
        self._stack = contextlib.AsyncExitStack()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def streams(self) -> float:
        return self.metrics.registry.get_sample_value("podiam_server_streams") or 0.0

    async def __aenter__(self) -> Self:
        stack = self._stack
        cache = await stack.enter_async_context(CredentialCache(self._sts, StsSettings(fetchers=8), self.metrics))
        self.feed = ClusterFeed(FeedLimits(), POLICY.host_identity, cache.prefetch)
        cache.subscribe(self.feed.outcome)
        prefetch = PrefetchWhenIndexed(cache, self.index, IssuanceLog(""), NoEvents(), self.metrics)
        self.index.subscribe(_Listeners(self.feed, prefetch, _PrefetchWhenBound(cache, self.index)))
        self.index.replace(self._cluster.pods.values())  # the watch's first list
        self._cluster.watchers.add(self.index)
        stack.callback(self._cluster.watchers.discard, self.index)
        # The proxy first: it outlives the service, so a graceful stop reaches the agents as it is.
        self.proxy = await stack.enter_async_context(TcpProxy(0, self.port))
        self.port = self.proxy.port
        service = ServiceSettings(bind="127.0.0.1:0", shutdown_grace=self._grace)
        grpc_server = await stack.enter_async_context(GrpcServer(self.feed, self._files, service, self.metrics))
        self.proxy.target = grpc_server.port
        return self

    async def stop(self) -> None:
        """Graceful: the watch stops, the gRPC service gives its streams the grace, then closes."""
        self._cluster.watchers.discard(self.index)
        await self._stack.aclose()

    async def kill(self) -> None:
        """Abrupt: every connection reset at once, as when the node dies; then the rest goes."""
        self._cluster.watchers.discard(self.index)
        assert self.proxy is not None
        self.proxy.reset()
        await self._stack.aclose()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()


# -- the agent and its pods ----------------------------------------------------------------------

class Agent:
    """A split-mode agent of ``node``: stream, mirror, the real endpoint on 127.0.0.1."""

    def __init__(self, node: str, addresses: list[str], files: TlsFiles, settings: StreamSettings = FAST, *,
                 pod_wait: float = 0.8, rng: Callable[[], float] | None = None) -> None:
        self.metrics = Metrics()
        self.settings = StreamSettings(tuple(addresses), **{k: v for k, v in vars(settings).items()
                                                             if k != "addresses"})
        self.mirror = Mirror(lambda decide: PodIndex(decide, host_ips=["10.0.0.1"]), node)
        kw = {"rng": rng} if rng is not None else {}
        self.stream = ServerStream(self.mirror, files, self.settings, self.metrics, **kw)
        self.imds = ImdsSettings(pod_wait=pod_wait)
        deps = ImdsDeps(pods=LoopbackPods(self.mirror), credentials=self.mirror, tokens=TokenIssuer(),
                        issuance=IssuanceLog(node), metrics=self.metrics, settings=self.imds, upstream=None,
                        ready=self.mirror.synced.is_set, limiter=RateLimiter(0))
        self._endpoint = FastServer(MetadataCore(deps), "127.0.0.1", 0, 1.0, settings=self.imds, metrics=self.metrics)
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        return self._endpoint.port

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0

    def stream_failures(self) -> float:
        return sum(s.value for m in self.metrics.registry.collect() if m.name == "podiam_remote_stream_failures"
                   for s in m.samples if s.name.endswith("_total"))

    async def __aenter__(self) -> Self:
        await self._endpoint.__aenter__()
        self._task = asyncio.create_task(self.stream.run(), name="test-agent-stream")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._endpoint.close()


class PodClient:
    """One pod's SDK: GETs its role's credentials from its own IP, keep-alive, 2 s timeout."""

    def __init__(self, p: PodInfo, port: int) -> None:
        self.pod, self.port = p, port
        self.identity = POLICY.identity(p)
        self.results: list[tuple[int, str]] = []
        """(status, AccessKeyId or the refusal's body) of every request."""
        self._session: aiohttp.ClientSession | None = None

    async def get(self) -> tuple[int, str]:
        if self._session is None:
            assert self.pod.ip is not None
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(self.pod.ip, 0)),
                                                  timeout=aiohttp.ClientTimeout(total=2))
        url = f"http://127.0.0.1:{self.port}/latest/meta-data/iam/security-credentials/{self.identity.role_name}"
        try:
            async with self._session.get(url) as response:
                body = await response.text()
        except (aiohttp.ClientError, TimeoutError) as e:
            result = (0, repr(e))
        else:
            result = (response.status, json.loads(body)["AccessKeyId"] if response.status == 200 else body)
        self.results.append(result)
        return result

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Load:
    """Every pod requesting its credentials in a loop (a request every 10 ms) until the block exits."""

    def __init__(self, clients: list[PodClient]) -> None:
        self.clients = clients
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def _loop(self, client: PodClient) -> None:
        while not self._stop.is_set():
            await client.get()
            await asyncio.sleep(0.01)  # pacing of the load, not synchronisation

    def served(self) -> int:
        """Successful requests of the pod with the fewest."""
        return min(sum(1 for status, _ in c.results if status == 200) for c in self.clients)

    def answered(self) -> int:
        """Requests answered, whatever the answer, of the pod with the fewest."""
        return min(len(c.results) for c in self.clients)

    async def __aenter__(self) -> Self:
        self._tasks = [asyncio.create_task(self._loop(c), name=f"test-pod-{c.pod.name}") for c in self.clients]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        for c in self.clients:
            await c.close()


def wrong_answers(clients: Iterable[PodClient], sts: CountingSts) -> list[tuple[str, int, str]]:
    """Every request that failed, or got credentials issued for another identity."""
    return [(c.pod.name, status, detail) for c in clients for status, detail in c.results
            if status != 200 or sts.issued.get(detail) != c.identity]


async def until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> float:
    """Seconds until ``check()`` holds; fails the test after ``timeout``."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            while not check():
                await asyncio.sleep(0.01)  # polling a condition under a deadline
    except TimeoutError:
        pytest.fail(f"not within {timeout} s: {what}")
    return time.monotonic() - started


async def until_served(client: PodClient, timeout: float) -> float:
    started = time.monotonic()
    async with asyncio.timeout(timeout):
        while (await client.get())[0] != 200:
            await asyncio.sleep(0.01)  # polling under a deadline
    return time.monotonic() - started


# -- certificates ------------------------------------------------------------------------------

def _files(tmp: Path, prefix: str, cert: trustme.LeafCert, ca: trustme.CA) -> TlsFiles:
    paths = []
    for suffix, blob in ((".crt", cert.cert_chain_pems[0]), (".key", cert.private_key_pem), ("-ca.crt", ca.cert_pem)):
        path = tmp / f"{prefix}{suffix}"
        path.write_bytes(blob.bytes())
        paths.append(str(path))
    return TlsFiles(*paths)


@pytest.fixture
def tls(tmp_path: Path) -> tuple[TlsFiles, TlsFiles]:
    """(server files, agent files) of one CA."""
    ca = trustme.CA()
    return (_files(tmp_path, "server", ca.issue_cert("localhost", "127.0.0.1"), ca),
            _files(tmp_path, "agent", ca.issue_cert("agent"), ca))



# -- 1. a replica stops under load -------------------------------------------------------------

@pytest.mark.parametrize("how", ["graceful", "killed"])
async def test_a_replica_stopping_under_load_fails_no_request(how: str, tls: tuple[TlsFiles, TlsFiles]) -> None:
    server_files, agent_files = tls
    sts = CountingSts()
    cluster = Cluster(pod(f"p{i}", f"127.0.0.{i + 2}", f"role-{i}") for i in range(4))
    late = pod("late", "127.0.0.20", "role-late")
    a = await Replica(cluster, sts, server_files).__aenter__()
    async with Replica(cluster, sts, server_files) as b:
        try:
            async with Agent("node-1", [a.address, b.address], agent_files) as agent:
                clients = [PodClient(p, agent.port) for p in cluster.pods.values()]
                async with Load(clients) as load:
                    await until(lambda: a.streams() == 1 and load.served() >= 5, "pods served through replica a")
                    stopping = asyncio.create_task(a.stop() if how == "graceful" else a.kill())
                    cluster.upsert(late)  # during the switch: only b's watch sees it
                    await until(lambda: b.streams() == 1 and agent.sample("podiam_remote_connected") == 1,
                                "the agent on replica b")
                    await stopping
                    async with PodClient(late, agent.port) as late_client:
                        await until_served(late_client, 5)
                    served = load.served()
                    await until(lambda: load.served() >= served + 5, "pods served through replica b")
        finally:
            await a.stop()
        assert wrong_answers(clients, sts) == []
        assert wrong_answers([late_client], sts) == [] and len(late_client.results) == 1  # at once, its own
        assert agent.sample("podiam_remote_rpcs_total") == 2  # one stream per replica, none per request
        assert agent.stream_failures() == 1
        assert b.feed is not None
        assert agent.mirror.resume is not None and agent.mirror.resume.epoch == b.feed.epoch  # b's snapshot
        assert sum(len(c.results) for c in clients) >= 40


# -- 2. both replicas down --------------------------------------------------------------------

@pytest.mark.parametrize("returning", ["first", "second"])
async def test_with_both_replicas_down_known_pods_are_served_and_a_new_one_waits_for_a_server(
        returning: str, tls: tuple[TlsFiles, TlsFiles]) -> None:
    """The issue's "both down for two minutes", shortened to what proves it.

    The agent runs the production reconnect settings (StreamSettings' defaults) with the back-off's
    longest draw (no jitter taken off). The outage lasts until the agent's consecutive failures
    reach the back-off's cap (computed from the settings: 0.2 s doubling to 5 s per round of the
    two addresses, about 8 s); from then on every further round is the same capped wait, and nothing
    else in the agent ages in two minutes (the mirror keeps its pods; their credentials are valid
    for an hour). So a server returning after two minutes finds the agent exactly as it finds it
    here, at most one capped wait from its next round: that wait, plus the other address's attempt
    and a handshake, bounds the new pod's delay, whichever of the two addresses returns. (The cap
    is reached just after an attempt on the second address: the agent's next one is on the first.)
    """
    server_files, agent_files = tls
    sts = CountingSts()
    cluster = Cluster(pod(f"p{i}", f"127.0.0.{i + 2}", f"role-{i}") for i in range(3))
    newcomer = pod("newcomer", "127.0.0.30", "role-new")
    production = StreamSettings(("unused",), server_name="localhost")
    backoff = Backoff(production.retry_initial, production.retry_max)
    rounds = next(n for n in range(1, 64) if backoff.base(n) >= production.retry_max)
    capped_after = 2 * rounds  # attempts: the back-off grows per round of the address list
    async with (Replica(cluster, sts, server_files) as a, Replica(cluster, sts, server_files) as b,
                Agent("node-1", [a.address, b.address], agent_files, production, rng=lambda: 0.0) as agent):
        clients = [PodClient(p, agent.port) for p in cluster.pods.values()]
        async with Load(clients) as load:
            await until(lambda: load.served() >= 3, "pods served")
            failures = agent.stream_failures()
            await asyncio.gather(a.kill(), b.kill())  # both connections reset before either stop awaits
            cluster.upsert(newcomer)  # while no server is up
            await until(lambda: not agent.mirror.connected, "the agent sees no server")
            outage = time.monotonic()
            async with PodClient(newcomer, agent.port) as new_client:
                started = time.monotonic()
                status, body = await new_client.get()
                waited = time.monotonic() - started
                assert status == REFUSALS[NoServerReachable].status == 503
                assert "no podiam server is reachable" in body
                assert waited >= agent.imds.pod_wait
                assert agent.sample("podiam_imds_refusals_total", reason=REFUSALS[NoServerReachable].reason) == 1
                await until(lambda: agent.stream_failures() >= failures + capped_after, "the back-off at its cap",
                            timeout=20)
                outage = time.monotonic() - outage
                served_during_outage = load.served()
                await until(lambda: load.served() >= served_during_outage + 3, "known pods served at the cap")
                async with Replica(cluster, sts, server_files, port=(a if returning == "first" else b).port):
                    recovery = await until_served(new_client, production.retry_max + 2)
    print(f"outage {outage:.1f} s (back-off capped after {capped_after} failures); "
          f"new pod served {recovery:.2f} s after a server's return")
    assert recovery <= production.retry_max + 1.0
    assert wrong_answers(clients, sts) == []  # known pods: never a failed request
    status, key = new_client.results[-1]
    assert sts.issued[key] == new_client.identity  # once a server is back: its own credentials


# -- 3. a restart ---------------------------------------------------------------------------------

async def test_a_restarted_server_fetches_each_identity_once_and_agents_resnapshot_without_a_failure(
        tls: tuple[TlsFiles, TlsFiles]) -> None:
    """Three nodes, four identities, each used by one pod on every node (a Deployment's pods share
    kiam's session-name annotation): 12 pods. The restarted server's STS is slower than the agents'
    reconnect (its calls held until every agent has the new snapshot), as it is for real with many
    identities and --fetchers calls in flight at once."""
    server_files, agent_files = tls
    sts = CountingSts()
    nodes = [f"node-{n}" for n in (1, 2, 3)]
    cluster = Cluster(pod(f"app{k}-{n}", f"127.0.{n + 1}.{k + 2}", f"role-{k}", node=node, session=f"app{k}")
                      for n, node in enumerate(nodes) for k in range(4))
    identities = {POLICY.identity(p) for p in cluster.pods.values()}
    assert len(identities) == 4
    first = await Replica(cluster, sts, server_files).__aenter__()
    try:
        async with contextlib.AsyncExitStack() as stack:
            agents = [await stack.enter_async_context(Agent(node, [first.address], agent_files)) for node in nodes]
            clients = [PodClient(p, agents[nodes.index(p.node or "")].port) for p in cluster.pods.values()]
            load = await stack.enter_async_context(Load(clients))
            await until(lambda: load.served() >= 3, "every pod served by the first server")
            assert len(sts.calls) == len(identities)  # the first life: once each, too
            before = len(sts.calls)
            sts.hold()
            await first.stop()
            restarted = await stack.enter_async_context(Replica(cluster, sts, server_files, port=first.port))
            assert restarted.feed is not None
            epoch = restarted.feed.epoch
            await until(lambda: all(a.mirror.resume is not None and a.mirror.resume.epoch == epoch for a in agents),
                        "every agent on the restarted server")
            answered = load.answered()
            await until(lambda: load.answered() >= answered + 3, "requests while STS is slow")
            sts.release()
            await until(lambda: len(sts.issued) == before + len(identities), "the restarted server's fetches")
            answered = load.answered()
            await until(lambda: load.answered() >= answered + 3, "requests after")
            subscriptions = [sub for node in nodes for sub in restarted.feed.node(node).subscribers]
    finally:
        await first.stop()
    after_restart = len(sts.calls) - before
    print(f"AssumeRole calls after the restart: {after_restart} "
          f"({len(identities)} identities, {len(cluster.pods)} pods, {len(nodes)} agents)")
    assert after_restart == len(identities)
    assert sorted(c.role_arn for c in sts.calls[before:]) == sorted(i.role_arn for i in identities)
    assert [sub.snapshots for sub in subscriptions] == [1, 1, 1]
    assert wrong_answers(clients, sts) == []


# -- 4. a server that stops answering -------------------------------------------------------------

async def test_keepalive_moves_the_agent_off_a_server_that_stopped_answering(tls: tuple[TlsFiles, TlsFiles]) -> None:
    """The server behind replica a's proxy is hung (or its route black-holed): the TCP connection
    stays open and nothing comes back. The agent's keepalive ping goes unanswered, so it moves
    to replica b within keepalive_time + keepalive_timeout (plus the first reconnect delay)."""
    server_files, agent_files = tls
    sts = CountingSts()
    cluster = Cluster(pod(f"p{i}", f"127.0.0.{i + 2}", f"role-{i}") for i in range(3))
    late = pod("late", "127.0.0.20", "role-late")
    # 1 s: gRPC core sends no two pings less than a second apart, whatever keepalive_time asks.
    settings = StreamSettings((), server_name="localhost", keepalive_time=1.0, keepalive_timeout=0.5,
                              retry_initial=0.05, retry_max=0.5)
    documented = {f.name for f in dataclasses.fields(StreamSettings)}
    assert {"keepalive_time", "keepalive_timeout"} <= documented
    bound = settings.keepalive_time + settings.keepalive_timeout + settings.retry_initial
    async with (Replica(cluster, sts, server_files) as a, Replica(cluster, sts, server_files) as b,
                Agent("node-1", [a.address, b.address], agent_files, settings) as agent):
        clients = [PodClient(p, agent.port) for p in cluster.pods.values()]
        async with Load(clients) as load:
            await until(lambda: a.streams() == 1 and load.served() >= 3, "pods served through replica a")
            assert a.proxy is not None
            a.proxy.freeze()
            cluster.upsert(late)  # a's stream would carry it, but nothing gets through
            moved = await until(lambda: b.streams() == 1 and agent.mirror.connected, "the agent on replica b",
                                timeout=bound + 5)
            async with PodClient(late, agent.port) as late_client:
                await until_served(late_client, 5)
            served = load.served()
            await until(lambda: load.served() >= served + 3, "pods served through replica b")
    print(f"moved to replica b {moved:.2f} s after a froze (keepalive {settings.keepalive_time} s "
          f"+ timeout {settings.keepalive_timeout} s)")
    assert moved <= bound + 1.0
    assert wrong_answers([*clients, late_client], sts) == []
    assert agent.sample("podiam_remote_stream_failures_total", code="UNAVAILABLE") == 1
