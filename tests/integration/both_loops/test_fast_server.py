"""
The fast metadata server at the HTTP/1.1 protocol level, on both the stock asyncio loop
and uvloop (the agent's): keep-alive, pipelining order, Connection: close, HEAD, bounds on
hostile input, idle timeout, and a graceful stop that lets in-flight requests finish.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio

from pod_doubles import CredentialDouble, LoopbackPods
from podiam.credentials import Credentials, Identity
from podiam.imds.core import ImdsDeps, MetadataCore
from podiam.imds.fast_server import MAX_URL, FastServer
from podiam.imds.rate_limit import RateLimiter
from podiam.imds.tokens import TokenIssuer
from podiam.kube.pod_index import PodIndex
from podiam.observability.audit import IssuanceLog
from podiam.observability.metrics import Metrics
from podiam.pods import PodEntry, PodInfo
from podiam.policy import RolePolicy
from podiam.settings import ImdsSettings, RoleSettings

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
CREDS = Credentials("ASIAFAST", "secret", "token", NOW + dt.timedelta(hours=1), NOW)
SLOW = b"GET /latest/meta-data/iam/security-credentials/slow HTTP/1.1\r\nHost: x\r\n\r\n"
HEALTH = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


class Source(CredentialDouble):
    """podiam's CredentialSource interface: 'slow' waits until released, others are fresh."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.waiting = 0

    def fresh(self, identity: Identity) -> Credentials | None:
        return None if identity.role_name == "slow" else CREDS

    async def get(self, identity: Identity) -> Credentials:
        self.waiting += 1
        await self.release.wait()
        return CREDS


@dataclass
class Running:
    server: FastServer
    source: Source

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.server.port)


@pytest_asyncio.fixture
async def running() -> AsyncIterator[Running]:
    index = PodIndex(RolePolicy.from_settings(RoleSettings(), "arn:aws:iam::123456789012:role/").identity)
    index.replace([PodInfo("ns", "p", "u", "127.0.0.1", "Running", annotations={"iam.amazonaws.com/role": "slow"})])
    source = Source()
    deps = ImdsDeps(pods=LoopbackPods(index), credentials=source,
                    tokens=TokenIssuer(), issuance=IssuanceLog("n"),
                    metrics=Metrics(), settings=ImdsSettings(pod_wait=0.01, keepalive_timeout=0.5), upstream=None,
                    ready=lambda: True, limiter=RateLimiter(0))
    async with FastServer(MetadataCore(deps), "127.0.0.1", 0, grace=5.0, settings=deps.settings) as server:
        yield Running(server, source)
        source.release.set()


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


async def closed(reader: asyncio.StreamReader) -> bool:
    async with asyncio.timeout(5):
        return await reader.read() == b""


async def test_keep_alive_serves_many_requests_on_one_connection(running: Running) -> None:
    reader, writer = await running.connect()
    for _ in range(3):
        writer.write(HEALTH)
        status, headers, body = await response(reader)
        assert (status, body) == (b"HTTP/1.1 200 OK", b"ok\n")
        assert headers["server"] == "EC2ws"
    await shut(writer)


async def test_pipelined_replies_keep_request_order(running: Running) -> None:
    reader, writer = await running.connect()
    writer.write(SLOW + HEALTH)  # the second is ready first, but must not overtake
    async with asyncio.timeout(5):
        while running.source.waiting == 0:
            await asyncio.sleep(0)
    running.source.release.set()
    first, second = await response(reader), await response(reader)
    assert b"ASIAFAST" in first[2]
    assert second[2] == b"ok\n"
    await shut(writer)


async def test_connection_close_and_http_1_0(running: Running) -> None:
    for request in (b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n", b"GET /healthz HTTP/1.0\r\n\r\n"):
        reader, writer = await running.connect()
        writer.write(request)
        _, headers, _ = await response(reader)
        assert headers["connection"] == "close"
        assert await closed(reader)
        await shut(writer)


async def test_head_has_no_body(running: Running) -> None:
    reader, writer = await running.connect()
    writer.write(b"HEAD /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
    async with asyncio.timeout(5):
        data = await reader.read()
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Length: 3\r\n" in data
    assert data.endswith(b"\r\n\r\n")
    await shut(writer)


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"GET /" + b"a" * (MAX_URL + 10) + b" HTTP/1.1\r\n\r\n", b"414"),
    (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(100)) + b"\r\n", b"413"),
    (b"POST /healthz HTTP/1.1\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100000, b"413"),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", b"400"),  # a TLS hello
    (b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", b"400"),
    (b"GET /%zz HTTP/1.1\r\n\r\n", None),  # either refused (400) or a clean 404: never a crash
])
async def test_hostile_input_is_refused_and_the_connection_closed(
    running: Running, request_bytes: bytes, status: bytes | None
) -> None:
    reader, writer = await running.connect()
    writer.write(request_bytes)
    async with asyncio.timeout(5):
        data = await reader.read(200)
    assert data.startswith(b"HTTP/1.1 ")
    if status is not None:
        assert data[9:12] == status
    await shut(writer)
    # ...and the server still serves everyone else.
    reader, writer = await running.connect()
    writer.write(HEALTH)
    assert (await response(reader))[2] == b"ok\n"
    await shut(writer)


async def test_an_idle_connection_is_closed(running: Running) -> None:
    reader, writer = await running.connect()
    writer.write(b"GET /heal")  # stuck mid-request, as a slowloris client
    assert await closed(reader)
    await shut(writer)


async def test_stop_lets_in_flight_requests_finish_and_refuses_new_ones(running: Running) -> None:
    reader, writer = await running.connect()
    writer.write(SLOW)
    async with asyncio.timeout(5):
        while running.source.waiting == 0:
            await asyncio.sleep(0)
    port = running.server.port
    stopping = asyncio.create_task(running.server.close())
    async with asyncio.timeout(5):
        while not running.server.closing:
            await asyncio.sleep(0)
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)
    running.source.release.set()
    status, headers, body = await response(reader)
    assert status == b"HTTP/1.1 200 OK"
    assert b"ASIAFAST" in body
    assert headers["connection"] == "close"
    await stopping
    await shut(writer)


class BrokenPods(LoopbackPods):
    """A pod lookup with a bug: every lookup raises what no caller expects."""

    def lookup(self, ip: str) -> PodEntry:
        raise RuntimeError("a bug in the pod lookup")


async def test_a_bug_in_the_core_costs_the_request_a_500_not_the_connection() -> None:
    index = PodIndex(RolePolicy.from_settings(RoleSettings(), "arn:aws:iam::123456789012:role/").identity)
    deps = ImdsDeps(pods=BrokenPods(index), credentials=Source(), tokens=TokenIssuer(), issuance=IssuanceLog("n"),
                    metrics=Metrics(), settings=ImdsSettings(pod_wait=0.01), upstream=None, ready=lambda: True,
                    limiter=RateLimiter(0))
    async with FastServer(MetadataCore(deps), "127.0.0.1", 0, grace=5.0, settings=deps.settings) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(SLOW)
        status, _, body = await response(reader)
        assert (status, body) == (b"HTTP/1.1 500 Internal Server Error", b"internal error\n")
        writer.write(HEALTH)  # the connection still serves what does not meet the bug
        assert (await response(reader))[2] == b"ok\n"
        await shut(writer)
