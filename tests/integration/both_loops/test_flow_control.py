"""
The fast server's flow control and close order, on real sockets and both loops: a client
that sends and never reads stops being read (the agent's memory stays bounded), a deep
pipeline is still answered completely and in order, one IP's connections are capped
without touching another's, and after a ``Connection: close`` exchange the server's FIN is
already on its way when the client has the reply, so the client never holds the TIME_WAIT.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import select
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from pod_doubles import CredentialDouble, LoopbackPods
from podiam.credentials import Credentials, Identity
from podiam.imds.core import ImdsDeps, MetadataCore
from podiam.imds.fast_server import FEED_SLICE, FastServer, MetadataProtocol
from podiam.imds.rate_limit import RateLimiter
from podiam.imds.tokens import TokenIssuer
from podiam.kube.pod_index import PodIndex
from podiam.observability.audit import IssuanceLog
from podiam.observability.metrics import Metrics
from podiam.pods import PodInfo
from podiam.policy import RolePolicy
from podiam.settings import ImdsSettings, RoleSettings

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
CREDS = Credentials("ASIAFAST", "secret", "token", NOW + dt.timedelta(hours=1), NOW)
SLOW = b"GET /latest/meta-data/iam/security-credentials/slow HTTP/1.1\r\nHost: x\r\n\r\n"
HEALTH = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
HIGH = 16 * 1024
DEPTH = 8
CAP = 4
READY = b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"
MISSING = b"GET /latest/meta-data/iam/security-credentials/other HTTP/1.1\r\nHost: x\r\n\r\n"
"""Answered 403 (the pod's role is another): a third distinct reply for order checks."""


class Source(CredentialDouble):
    """podiam's CredentialSource interface: every request waits until released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.waiting = 0

    def fresh(self, identity: Identity) -> Credentials | None:
        return None

    async def get(self, identity: Identity) -> Credentials:
        self.waiting += 1
        await self.release.wait()
        return CREDS


async def response(reader: asyncio.StreamReader) -> tuple[bytes, dict[str, str], bytes]:
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:] if line)}
        body = await reader.readexactly(int(headers["content-length"]))
    return lines[0].encode(), headers, body


async def shut(writer: asyncio.StreamWriter) -> None:
    writer.close()
    async with asyncio.timeout(5):
        await writer.wait_closed()


class Limited:
    def __init__(self, server: FastServer, source: Source, metrics: Metrics) -> None:
        self.server, self.source, self.metrics = server, source, metrics

    def only_connection(self) -> MetadataProtocol:
        (conn,) = self.server.connections
        return conn


@pytest_asyncio.fixture
async def limited() -> AsyncIterator[Limited]:
    source, metrics = Source(), Metrics()
    settings = ImdsSettings(pod_wait=0.01, write_buffer_high=HIGH, pipeline_depth=DEPTH, max_connections_per_ip=CAP,
                            keepalive_timeout=30.0)
    index = PodIndex(RolePolicy.from_settings(RoleSettings(), "arn:aws:iam::123456789012:role/").identity)
    index.replace([PodInfo("ns", "p", "u", "127.0.0.1", "Running", annotations={"iam.amazonaws.com/role": "slow"})])
    deps = ImdsDeps(pods=LoopbackPods(index), credentials=source,
                    tokens=TokenIssuer(), issuance=IssuanceLog("n"),
                    metrics=metrics, settings=settings, upstream=None, ready=lambda: True, limiter=RateLimiter(0))
    async with FastServer(MetadataCore(deps), "127.0.0.1", 0, grace=5.0, settings=settings, metrics=metrics) as server:
        yield Limited(server, source, metrics)
        source.release.set()


@contextlib.contextmanager
def raw_client(port: int, *, source_ip: str = "127.0.0.1", rcvbuf: int | None = None) -> Iterator[socket.socket]:
    """A non-blocking client socket; small buffers keep the kernel from hiding the server's behaviour."""
    sock = socket.socket()
    try:
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, rcvbuf)
        sock.bind((source_ip, 0))
        sock.connect(("127.0.0.1", port))  # loopback: completes at once, the accept comes later
        sock.setblocking(False)
        yield sock
    finally:
        sock.close()


async def until(check: object, what: str, timeout: float = 10.0) -> None:
    """Let the loop run until ``check()`` holds; the deadline bounds the wait."""
    assert callable(check)
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.001)  # the polling interval; the deadline bounds the wait
    assert check(), what


async def test_a_client_that_never_reads_stops_being_read(limited: Limited) -> None:
    with raw_client(limited.server.port, rcvbuf=16384) as sock:
        await until(lambda: len(limited.server.connections) == 1, "the server to accept")
        conn = limited.only_connection()
        chunk, sent, largest, blocked_turns = HEALTH * 200, 0, 0, 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        # Keep sending until the socket stays full while the loop runs: only a server that has
        # stopped reading gets there; one that reads on buffers replies until the bound breaks.
        while blocked_turns < 200:
            try:
                sent += sock.send(chunk[sent % len(chunk):])  # the stream stays whole requests
                blocked_turns = 0
            except BlockingIOError:
                blocked_turns += 1
            await asyncio.sleep(0.0005 if blocked_turns else 0)  # lets the server run between sends
            largest = max(largest, conn.write_buffer_size)
            assert largest <= HIGH + FEED_SLICE * 4, f"{largest} bytes of replies buffered after {sent} sent"
            assert loop.time() < deadline, f"the server kept reading: {sent} bytes sent, {largest} buffered"
        assert conn.reading_paused


async def test_a_deep_pipeline_is_answered_completely_and_in_order(limited: Limited) -> None:
    pattern = [HEALTH, READY, MISSING]
    requests = [pattern[i % 3] for i in range(3000)]
    expected = [b"ok\n", b"ready\n", b"403"] * 1000
    reader, writer = await asyncio.open_connection("127.0.0.1", limited.server.port)
    writer.write(SLOW + b"".join(requests))  # every reply waits behind the slow first one
    await until(lambda: limited.source.waiting == 1, "the slow request to wait for its credentials")
    conn = limited.only_connection()
    await until(lambda: conn.reading_paused, "the server to stop reading")
    # Paused within one slice of the depth: the queue is bounded, not the whole pipeline.
    assert conn.pending_replies <= DEPTH + FEED_SLICE // len(HEALTH) + 1, conn.pending_replies
    limited.source.release.set()
    first = await response(reader)
    assert b"ASIAFAST" in first[2]
    for i, want in enumerate(expected):
        status, _, body = await response(reader)
        assert (body if want != b"403" else status[9:12]) == want, (i, status, body)
    writer.write(HEALTH)  # the connection is still served after the pipeline
    assert (await response(reader))[2] == b"ok\n"
    await shut(writer)


async def test_connections_per_ip_are_capped_and_other_ips_still_served(limited: Limited) -> None:
    held = [await asyncio.open_connection("127.0.0.1", limited.server.port) for _ in range(CAP)]
    await until(lambda: limited.server.per_ip.get("127.0.0.1") == CAP, "the server to accept them all")
    reader, writer = await asyncio.open_connection("127.0.0.1", limited.server.port)
    status, headers, _ = await response(reader)
    assert status == b"HTTP/1.1 503 Service Unavailable"
    assert headers["connection"] == "close"
    async with asyncio.timeout(5):
        assert await reader.read() == b""
    await shut(writer)
    assert limited.metrics.registry.get_sample_value("podiam_imds_connections_refused_total") == 1
    # Another address is not affected by this one's connections.
    reader, writer = await asyncio.open_connection("127.0.0.1", limited.server.port, local_addr=("127.0.0.2", 0))
    writer.write(HEALTH)
    assert (await response(reader))[2] == b"ok\n"
    await shut(writer)
    # ... and a slot freed is a slot the capped address can use again.
    await shut(held.pop()[1])
    await until(lambda: limited.server.per_ip.get("127.0.0.1") == CAP - 1, "the server to see the close")
    reader, writer = await asyncio.open_connection("127.0.0.1", limited.server.port)
    writer.write(HEALTH)
    assert (await response(reader))[2] == b"ok\n"
    for _, w in [*held, (reader, writer)]:
        await shut(w)
    await until(lambda: not limited.server.per_ip, "every slot to be released")


def _time_wait_ports(remote_port: int) -> set[int]:
    """Local ports of IPv4 TCP sockets in TIME_WAIT (state 06) towards ``remote_port``, from
    the kernel's table: the remote port tells this test's sockets from anything else's."""
    ports = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "06" and int(fields[2].rsplit(":", 1)[1], 16) == remote_port:
            ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


@pytest.mark.parametrize("request_bytes", [
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET /healthz HTTP/1.0\r\n\r\n",
])
async def test_the_server_sends_its_fin_with_the_last_reply(limited: Limited, request_bytes: bytes) -> None:
    ports = []
    for _ in range(10):
        with raw_client(limited.server.port) as sock:
            ports.append(sock.getsockname()[1])
            sock.send(request_bytes)
            data = b""
            async with asyncio.timeout(5):
                while True:
                    with contextlib.suppress(BlockingIOError):
                        data += sock.recv(65536)
                    if data.endswith(b"ok\n"):
                        break  # at once: one more loop turn would let a deferred close run
                    await asyncio.sleep(0)  # the server answers on this loop
            assert b"Connection: close\r\n" in data
            # The client has the whole reply, as wrk or an SDK that closes at once would. The
            # server's FIN must be there already: this select blocks the loop, so a close the
            # server deferred to a later loop iteration cannot happen meanwhile.
            readable, _, _ = select.select([sock], [], [], 1.0)
            assert readable, "no FIN from the server with its last reply: the client would close first"
            assert sock.recv(65536) == b""
    # The client closed second every time: none of its ports holds a TIME_WAIT.
    assert not set(ports) & _time_wait_ports(limited.server.port)
