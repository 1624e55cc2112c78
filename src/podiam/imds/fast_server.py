"""
The metadata endpoint's dedicated HTTP/1.1 server: an asyncio protocol with the httptools
parser, in front of the same core (imds/core.py) the aiohttp adapter uses.

Why: an SDK asks for credentials on every refresh and some applications build clients in
a loop; a cache hit should cost a parse, two dict lookups and one write of pre-rendered
bytes. aiohttp's general machinery (request objects, middlewares, a task per request) costs
several times that. Here a cache hit never creates a task or an object beyond the core's
Request; anything that must wait (unknown pod, STS, the node's IMDS) runs as a task, and
replies on one connection still go out in request order (pipelining).

Hostile input: the URL, header count and size, and body are bounded; a malformed request
gets 400 and the connection is closed; a connection idle or stuck mid-request longer than
the keep-alive timeout is closed. One sweep of the open connections, a few times per
timeout, finds them: a timer per connection cost more than the rest of a one-request
connection's Python (the SDKs' pattern: a connection per metadata call).

Flow control (as uvicorn's protocols): a client that pipelines requests and never reads its
replies would otherwise grow the agent's memory without bound. So a connection stops being
read while its transport's write buffer is above the high-water mark (``pause_writing``), or
while more than a pipeline depth of replies wait behind a slow one, and resumes below the
low-water mark / when the queue drains; what is left of a received chunk waits, unparsed,
with it. Large chunks are parsed in slices, so a pause takes effect within one slice. Each
source IP may hold a bounded number of connections: beyond it, 503 and close, counted.

Close order (as nginx): after the last reply of a ``Connection: close`` or HTTP/1.0 exchange
the server's FIN travels in the reply's last segment (TCP_CORK, write, ``shutdown(SHUT_WR)``),
so the server, not the pod, holds the TIME_WAIT. Both loops defer the socket's close to a
later loop iteration; a client that closes as soon as it has the reply (most do) would
otherwise close first and hold a TIME_WAIT for each exchange, until its ephemeral ports run
out under connection churn.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
from types import TracebackType
from typing import Any, NoReturn, cast

import httptools
import structlog

from podiam.imds.core import WANTED_HEADERS, MetadataCore, Replay, Reply, Request
from podiam.observability.metrics import Metrics
from podiam.settings import ImdsSettings

log = structlog.stdlib.get_logger(__name__)

MAX_URL = 4096
MAX_HEADERS = 64
MAX_HEADER_BYTES = 16384
MAX_BODY = 4096

_CLOSE = b"Connection: close\r\n"
_WANTED = {name.encode(): name for name in WANTED_HEADERS}
"""The only headers the endpoint reads; the others are counted against the bounds, not decoded."""
_BAD_REQUEST = Reply(400, b"malformed HTTP request\n")
_TOO_LARGE = Reply(413, b"request too large\n")
_TOO_LONG_URL = Reply(414, b"URL too long\n")
_INTERNAL = Reply(500, b"internal error\n")
_TOO_MANY_CONNECTIONS = Reply(503, b"too many connections from this address; close idle ones\n")
FEED_SLICE = 4096
"""Bytes of a received chunk parsed before flow control is checked again: a chunk (up to
256 KiB from either loop) of tiny pipelined requests makes ~100x its size in replies, so a
pause must take effect within the chunk. SDK requests (a few hundred bytes) are one slice."""


class _Malformed(Exception):
    """Raised from a parser callback; httptools re-raises it wrapped as a parser error, so
    the reply to send is also kept on the protocol (``_rejection``)."""


class MetadataProtocol(asyncio.Protocol):
    """One client connection."""

    # One is made per connection, and SDKs open one per metadata call: no __dict__ to build.
    __slots__ = ("_body", "_closing", "_completed", "_core", "_counted", "_header_bytes", "_header_count",
                 "_headers", "_in_message", "_ip", "_last_reply", "_loop", "_parser", "_queue", "_reading_paused",
                 "_rejection", "_replay", "_replay_request", "_resume_scheduled", "_server", "_ticket",
                 "_transport", "_unparsed", "_url", "_write_paused")

    def __init__(self, core: MetadataCore, server: FastServer) -> None:
        self._core = core
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._ip = ""
        self._url = bytearray()
        self._headers: dict[str, str] = {}
        self._header_bytes = 0
        self._header_count = 0
        self._body = 0
        self._queue: collections.deque[tuple[Reply | asyncio.Task[Reply], bool, bool]] = collections.deque()
        """Replies (or tasks making them) in request order, with (head only, keep alive)."""
        self._closing = False
        self._rejection: Reply | None = None
        self._last_reply = self._loop.time()
        """When the connection last answered (or opened): an idle timer measures from here."""
        self._counted = False
        """Whether this connection holds one of its source IP's slots (FastServer.per_ip)."""
        self._write_paused = False
        """The transport's write buffer is above the high-water mark (pause_writing)."""
        self._reading_paused = False
        self._unparsed = b""
        """What was received but not parsed yet because reading paused mid-chunk."""
        self._resume_scheduled = False
        self._replay: Replay | None = None
        """The last request's ticket (imds/core.py's Replay), valid for ``_replay_request`` only."""
        self._replay_request = b""
        """The chunk that was exactly that one request, byte for byte."""
        self._in_message = False
        """The parser is inside a message: a chunk that starts or ends so is no replay's."""
        self._ticket: Replay | None = None
        """Set by on_message_complete for a request answered at once: the candidate replay."""
        self._completed = 0
        """Messages completed in the chunk being parsed."""

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they implement it.
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self._ip = str(peer[0]) if peer else ""
        server = self._server
        if server.per_ip.get(self._ip, 0) >= server.max_connections_per_ip:
            # A clear answer rather than a reset: a pod at its cap learns why from its SDK's error.
            server.metrics.endpoint.connections_refused.inc()
            self._write(_TOO_MANY_CONNECTIONS, False, False)
            return
        self._counted = True
        server.per_ip[self._ip] = server.per_ip.get(self._ip, 0) + 1
        server.connections.add(self)
        self._transport.set_write_buffer_limits(server.write_buffer_high, server.write_buffer_high // 4)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        replay, transport = self._replay, self._transport
        # Whether the connection can take a replay is asked before replay(), which counts the
        # request and takes a rate-limit token: a request parsed after it would be counted twice.
        if (replay is not None and transport is not None and data == self._replay_request and not self._queue
                and not self._reading_paused and not self._server.closing):
            reply = self._core.replay(replay)
            if reply is not None:
                transport.write(reply.wire)  # the hot path of the hot path: no parse, no decision
                self._last_reply = self._loop.time()
                return
        self._replay = None
        if len(data) <= FEED_SLICE and not self._reading_paused:
            # The common case: one request, one feed, no slicing; and the chunk that was exactly
            # one request answered at once is remembered with its ticket.
            whole = not self._in_message
            self._completed, self._ticket = 0, None
            self._feed(data)
            if self._ticket is not None and whole and self._completed == 1 and not self._in_message:
                self._replay, self._replay_request = self._ticket, data
            self._ticket = None
            return
        self._feed_slices(self._unparsed + data if self._unparsed else data)

    def _feed_slices(self, data: bytes) -> None:
        view, start = memoryview(data), 0
        while start < len(data):
            if self._reading_paused or self._closing:
                self._unparsed = bytes(view[start:])  # bounded by one chunk; parsed on resume
                return
            self._feed(view[start:start + FEED_SLICE])
            start += FEED_SLICE
        self._unparsed = b""

    def _feed(self, data: bytes | memoryview) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(_BAD_REQUEST)  # no upgrades (websocket, h2c) on a metadata endpoint
        except (httptools.HttpParserError, _Malformed):
            self._fail(self._rejection or _BAD_REQUEST)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        if self._counted:
            self._counted = False
            left = self._server.per_ip[self._ip] - 1
            if left:
                self._server.per_ip[self._ip] = left
            else:
                del self._server.per_ip[self._ip]  # the dict holds only IPs with connections
        self._transport = None
        self._unparsed = b""
        # In-flight work is left to finish: the credential fetch it may be waiting on is the
        # cache's, and the next request from this pod will use it.

    # -- flow control -------------------------------------------------------------------------

    def pause_writing(self) -> None:
        """The client is not reading: stop reading its requests until it catches up."""
        self._write_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._maybe_resume()

    def _pause_reading(self) -> None:
        if not self._reading_paused and self._transport is not None and not self._closing:
            self._reading_paused = True
            self._transport.pause_reading()

    def _maybe_resume(self) -> None:
        if (self._reading_paused and not self._write_paused and len(self._queue) <= self._server.pipeline_depth // 2
                and not self._resume_scheduled):
            # Not from inside the transport's own write-flush or a task callback: next iteration.
            self._resume_scheduled = True
            self._loop.call_soon(self._resume)

    def _resume(self) -> None:
        self._resume_scheduled = False
        if self._transport is None or self._closing or self._write_paused:
            return
        self._reading_paused = False
        if self._unparsed:
            data, self._unparsed = self._unparsed, b""
            self._feed_slices(data)
        if not self._reading_paused and self._transport is not None and not self._closing:
            self._transport.resume_reading()

    # -- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_message = True
        self._url.clear()
        self._headers = {}
        self._header_bytes = 0
        self._header_count = 0
        self._body = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_URL:
            self._reject(_TOO_LONG_URL)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        self._header_count += 1
        if self._header_count > MAX_HEADERS or self._header_bytes > MAX_HEADER_BYTES:
            self._reject(_TOO_LARGE)
        wanted = _WANTED.get(name.lower())
        if wanted is not None:
            self._headers[wanted] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._body += len(body)
        if self._body > MAX_BODY:
            self._reject(_TOO_LARGE)

    def on_message_complete(self) -> None:
        self._in_message = False
        self._completed += 1
        method = self._parser.get_method().decode("latin-1")
        # The raw target, undecoded: the core decides what is canonical (imds/target.py), and
        # latin-1 maps every byte to one character, so nothing is lost or reinterpreted here.
        target = self._url.decode("latin-1")
        keep_alive = self._parser.should_keep_alive() and not self._server.closing
        request = Request(method, target, self._headers, self._ip)
        try:
            answer = self._core.answer(request)
        except Exception as e:
            # A bug in the core costs this request a 500, not the connection: raised into the
            # parser's callback it would read as the pod's malformed request.
            log.error("metadata request failed", error=repr(e))  # noqa: TRY400
            answer = _INTERNAL
        head_only = method == "HEAD"
        if isinstance(answer, Reply):
            if not self._queue:
                self._write(answer, head_only, keep_alive)  # the hot path: no task, one write
                if keep_alive and not head_only and answer is not _INTERNAL:
                    self._ticket = self._replay_ticket(request, answer)
                return
            self._queue.append((answer, head_only, keep_alive))
        else:
            task = self._loop.create_task(answer, name=f"imds-request {self._ip}")
            self._server.track(task)
            task.add_done_callback(self._flush)
            self._queue.append((task, head_only, keep_alive))
        self._flush()
        if len(self._queue) > self._server.pipeline_depth:
            self._pause_reading()  # replies wait behind a slow one: stop taking more

    def _replay_ticket(self, request: Request, answer: Reply) -> Replay | None:
        try:
            return self._core.replay_ticket(request, answer)
        except Exception as e:
            # As a bug in answer(): it costs the replay, never the request (already answered).
            log.error("metadata replay not kept", error=repr(e))  # noqa: TRY400
            return None

    def _reject(self, reply: Reply) -> NoReturn:
        self._rejection = reply
        raise _Malformed()

    # -- writing ------------------------------------------------------------------------------

    def _flush(self, _: object = None) -> None:
        while self._queue:
            item, head_only, keep_alive = self._queue[0]
            if isinstance(item, asyncio.Task):
                if not item.done():
                    return
                reply = item.result() if not item.cancelled() and item.exception() is None else _internal(item)
            else:
                reply = item
            self._queue.popleft()
            self._write(reply, head_only, keep_alive)
        if self._reading_paused:
            self._maybe_resume()

    def _write(self, reply: Reply, head_only: bool, keep_alive: bool) -> None:
        transport = self._transport
        if transport is None or self._closing:
            return
        keep_alive = keep_alive and not self._server.closing  # a stop began while it was in flight
        if keep_alive and not head_only:
            transport.write(reply.wire)
        else:
            data = reply.head + (b"" if keep_alive else _CLOSE) + b"\r\n" + (b"" if head_only else reply.body)
            if not keep_alive:
                self._write_last(transport, data)
                return
            transport.write(data)
        self._last_reply = self._loop.time()  # the idle sweep reads it

    def _write_last(self, transport: asyncio.Transport, data: bytes) -> None:
        """The connection's last reply, with the FIN in the same segment (module docstring).

        Corked, the reply waits in the kernel; shutdown() then puts the FIN on its last
        segment and sends it (a FIN is never held by the cork). A client thus has the FIN
        when it has the whole reply and closes second, whatever its speed. Sending the FIN
        just after the reply is not enough: a client in C closes within microseconds.
        """
        self._closing = True
        sock = transport.get_extra_info("socket")
        if sock is None or transport.get_write_buffer_size():
            transport.write(data)  # replies before it are still queued: the FIN follows them
            transport.close()
            return
        # The family from the peer's address: the socket's own properties convert to enums per call.
        family = socket.AF_INET6 if ":" in self._ip else socket.AF_INET
        raw = socket.socket(family, socket.SOCK_STREAM, 0, sock.fileno())
        # try/except, not contextlib.suppress: this runs once per connection, and SDKs open one
        # per metadata call; an OSError (the peer reset) only loses the FIN's ride.
        try:
            try:  # noqa: SIM105
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
            except OSError:
                pass
            transport.write(data)
            if not transport.get_write_buffer_size():
                try:  # noqa: SIM105
                    raw.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
        finally:
            raw.detach()  # the transport owns the descriptor and closes it
        transport.close()

    def _fail(self, reply: Reply) -> None:
        self._queue.clear()
        self._write(reply, False, False)

    def _close(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.close()

    def close_if_idle(self, now: float) -> None:
        """Close the connection if it has been quiet, or stuck mid-request, for the whole timeout
        (the server's sweep asks)."""
        if self._queue or now - self._last_reply < self._server.keepalive_timeout:
            return  # never cut a request that is being answered
        if self._transport is not None and self._transport.get_write_buffer_size():
            self._transport.abort()  # replies unread for the whole timeout: close() would wait forever
            return
        self._close()

    @property
    def idle(self) -> bool:
        return not self._queue

    @property
    def pending_replies(self) -> int:
        """Replies (or requests being answered) queued behind one not finished yet."""
        return len(self._queue)

    @property
    def write_buffer_size(self) -> int:
        """Bytes written to the transport that the client has not taken yet."""
        return 0 if self._transport is None else self._transport.get_write_buffer_size()

    @property
    def reading_paused(self) -> bool:
        return self._reading_paused


def _internal(task: asyncio.Task[Reply]) -> Reply:
    if not task.cancelled():
        log.error("metadata request failed", error=repr(task.exception()))
    return _INTERNAL


class FastServer:
    """``async with FastServer(core, host, port, grace):`` serves until the block exits;
    exit stops accepting, lets in-flight requests finish within ``grace``, then closes."""

    def __init__(self, core: MetadataCore, host: str, port: int, grace: float, *,
                 settings: ImdsSettings | None = None, metrics: Metrics | None = None) -> None:
        self._core, self._host, self._port, self._grace = core, host, port, grace
        limits = settings or ImdsSettings()
        self.keepalive_timeout = limits.keepalive_timeout
        self._backlog = limits.listen_backlog
        self.write_buffer_high = limits.write_buffer_high
        self.pipeline_depth = limits.pipeline_depth
        self.max_connections_per_ip = limits.max_connections_per_ip
        self.metrics = metrics or Metrics()
        self.per_ip: dict[str, int] = {}
        """Open connections by source IP (only IPs that have some)."""
        self._server: asyncio.Server | None = None
        self.connections: set[MetadataProtocol] = set()
        self._tasks: set[asyncio.Task[Reply]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self.closing = False

    def track(self, task: asyncio.Task[Reply]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def __aenter__(self) -> FastServer:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: MetadataProtocol(self._core, self), self._host,
                                                self._port, reuse_address=True, backlog=self._backlog)
        self._sweeper = loop.create_task(self._sweep(), name="imds-idle-sweep")
        return self

    async def _sweep(self) -> None:
        """Close idle connections: each within the keep-alive timeout plus a quarter of it."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.keepalive_timeout / 4)
            now = loop.time()
            for conn in list(self.connections):
                conn.close_if_idle(now)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Idempotent staged stop."""
        if self._server is None:
            return
        server, self._server = self._server, None
        self.closing = True  # replies from now on carry Connection: close
        server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for conn in list(self.connections):
            if conn.idle:
                conn._close()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=self._grace)
            for task in pending:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*pending, return_exceptions=True)
        for conn in list(self.connections):
            conn._close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 1.0)

    @property
    def port(self) -> int:
        assert self._server is not None
        sockets: Any = self._server.sockets
        return int(sockets[0].getsockname()[1])
