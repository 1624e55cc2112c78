"""
Split mode's agent side of the stream: one WatchNode stream at a time into the mirror,
reconnecting with the shared back-off, to the next address of --server-address when it
breaks, resuming from the last change applied. The back-off grows per round of the address
list (``reconnect_delay``), so a replica that returns is reached within one capped wait
whatever its place in the list.

WatchNode is made once per connection, never per metadata request: ``podiam_remote_rpcs_total``
counts them, so a metric shows the request path makes none. The only other RPC, the refusal
reports (remote/reports.py), runs in the background on the open stream's channel.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import structlog
from prometheus_client import Counter, Gauge

from podiam.backoff import Backoff
from podiam.errors import ConfigError, PodiamError
from podiam.observability.metrics import Metrics
from podiam.remote import podiam_pb2 as pb
from podiam.remote import podiam_pb2_grpc as pb_grpc
from podiam.remote.mirror import Mirror
from podiam.remote.tls import CertificateExpiry, TlsFiles, channel_credentials

log = structlog.stdlib.get_logger(__name__)


def ms(seconds: float) -> int:
    """gRPC's options are milliseconds."""
    return int(seconds * 1000)


@dataclass(frozen=True)
class StreamSettings:
    addresses: tuple[str, ...]
    """gRPC targets tried in turn: ``host:port`` or ``dns:///name:port`` (all its replicas)."""
    server_name: str | None = None
    """The name the server's certificate must carry; None: the address's host."""
    keepalive_time: float = 10.0
    """Seconds between keepalive pings, so a dead server is noticed in seconds."""
    keepalive_timeout: float = 2.0
    """Seconds a ping may go unanswered before the connection is presumed dead."""
    first_update_timeout: float = 10.0
    """Seconds a new stream has for the server to answer (its headers come as soon as it serves this
    node, before any snapshot or change); else it is abandoned."""
    retry_initial: float = 0.2
    """Seconds before the first reconnect after a failure, and between the addresses of one round."""
    retry_max: float = 5.0
    """Seconds: the cap of the reconnect back-off (between two rounds of the addresses)."""


def parse_addresses(value: str) -> tuple[str, ...]:
    """--server-address: ``host:port``, a comma-separated list of them, or ``dns:///name:port``."""
    addresses = tuple(a.strip() for a in value.split(",") if a.strip())
    if not addresses:
        raise ConfigError("--server-address is empty")
    for address in addresses:
        host = host_of(address)
        if not host or not address.rsplit(":", 1)[-1].isdigit():
            raise ConfigError(f"--server-address: {address!r} is not host:port or dns:///name:port")
    return addresses


def reconnect_delay(backoff: Backoff, failures: int, addresses: int, r: float) -> float:
    """Seconds before the next attempt after ``failures`` consecutive failed ones (``r`` a draw in [0, 1)).

    Attempts go to the addresses in turn and the back-off grows per round of them: within a
    round the next address is tried after the first delay, and the delay after a whole round
    failed is the back-off's for that many rounds. Grown per attempt, a replica returning after
    a long outage would wait one capped delay per dead address before it (two replicas: up to
    10 s for a new pod instead of 5). With one address (or a dns:/// name) a round is an attempt.
    """
    rounds, tried = divmod(failures, max(addresses, 1))
    return backoff.delay(1 if tried else rounds, r)


def host_of(address: str) -> str:
    target = address.removeprefix("dns:///").removeprefix("dns:")
    host = target.rsplit(":", 1)[0]
    return host.strip("[]")


class StreamMetrics:
    def __init__(self, metrics: Metrics, mirror: Mirror) -> None:
        r = metrics.registry
        self.connected = Gauge("podiam_remote_connected", "1 while a stream from a podiam server is open.",
                               registry=r)
        self.rpcs = Counter("podiam_remote_rpcs_total",
                            "RPCs made to podiam servers (one WatchNode per connection, none per request).",
                            registry=r)
        self.failures = Counter("podiam_remote_stream_failures_total",
                                "Streams that failed or broke, by gRPC status code.", ["code"], registry=r)
        self.certificate = CertificateExpiry(metrics)
        Gauge("podiam_remote_mirror_pods", "Pods of this node in the mirror of the server's stream.",
              registry=r).set_function(lambda: len(mirror))
        Gauge("podiam_remote_seconds_since_update", "Seconds since the last message from a podiam server.",
              registry=r).set_function(lambda: time.monotonic() - mirror.last_update if mirror.last_update else -1)


class ServerStream:
    """The root task that keeps the mirror fed; ``run()`` returns only when cancelled."""

    def __init__(self, mirror: Mirror, files: TlsFiles, settings: StreamSettings, metrics: Metrics, *,
                 rng: Callable[[], float] = random.random) -> None:
        self._mirror, self._files, self._settings = mirror, files, settings
        self._metrics = StreamMetrics(metrics, mirror)
        self._backoff = Backoff(settings.retry_initial, settings.retry_max)
        self._rng = rng
        self._next = 0
        self._opened = False
        """Whether the current attempt's stream was open (the server answered), for the back-off."""
        self.channel: grpc.aio.Channel | None = None
        """The open stream's channel (to the server serving this node), for the refusal reports."""

    async def run(self) -> None:
        failures = 0
        while True:
            address = self._settings.addresses[self._next % len(self._settings.addresses)]
            self._next += 1
            self._opened = False
            try:
                await self._stream(address)
                failures = 0  # the server ended it (max connection age): resume at once
            except (grpc.aio.AioRpcError, TimeoutError, PodiamError) as e:
                # A stream that was open ended (the server's connection age arrives as UNAVAILABLE,
                # a replica went away): the first retry is the shortest, as after any success.
                failures = 1 if self._opened else failures + 1
                code = e.code().name if isinstance(e, grpc.aio.AioRpcError) else type(e).__name__
                self._metrics.failures.labels(code).inc()
                delay = reconnect_delay(self._backoff, failures, len(self._settings.addresses), self._rng())
                detail = e.details() if isinstance(e, grpc.aio.AioRpcError) else str(e)
                log.warning("podiam server stream broken; reconnecting", address=address, code=code,
                            error=(detail or "")[:200], retry_in=round(delay, 2))
                await asyncio.sleep(delay)
            finally:
                self.channel = None
                self._mirror.connected = False
                self._metrics.connected.set(0)

    async def _stream(self, address: str) -> None:
        s = self._settings
        options: list[tuple[str, str | int]] = [
            ("grpc.ssl_target_name_override", s.server_name or host_of(address)),
            ("grpc.keepalive_time_ms", ms(s.keepalive_time)),
            ("grpc.keepalive_timeout_ms", ms(s.keepalive_timeout)),
            # gRPC core times a keepalive ping's ack out by the ping timeout (default 1 min), not
            # keepalive_timeout_ms (grpc/grpc#39239): without it a hung server holds the agent.
            ("grpc.http2.ping_timeout_ms", ms(s.keepalive_timeout)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
        ]
        if address.startswith("dns:"):
            options.append(("grpc.lb_policy_name", "round_robin"))  # new streams spread over the replicas
        credentials = channel_credentials(self._files, self._metrics.certificate)
        async with grpc.aio.secure_channel(address, credentials, options=options) as channel:
            stub = pb_grpc.PodiamStub(channel)
            request = pb.WatchNodeRequest(node=self._mirror.node)
            if self._mirror.resume is not None:
                request.resume.CopyFrom(self._mirror.resume)
            self._metrics.rpcs.inc()
            call = stub.WatchNode(request)
            try:
                # The server answers with its headers once it serves this node (before a snapshot,
                # and also when a resumed stream has nothing missed to send).
                async with asyncio.timeout(s.first_update_timeout):
                    await call.initial_metadata()
                if not call.done():  # a call that failed also "has" its (empty) headers: its error follows
                    self._open(address)
                    self.channel = channel
                async for update in call:
                    self._mirror.apply(update)
            finally:
                call.cancel()

    def _open(self, address: str) -> None:
        self._opened = True
        self._mirror.connected = True
        self._metrics.connected.set(1)
        resume = self._mirror.resume
        log.info("podiam server stream open", address=address, resuming_from=resume.sequence if resume else None)
