"""
Split mode's gRPC service: WatchNode streams one node's feed (remote/feed.py) to its agent;
ReportRefusals (remote/reports.py) and ReportReady (remote/ready.py) are the agents' reports.

mTLS only (remote/tls.py), keepalive pings both ways, and a maximum connection age so that
agents reconnect now and then (resuming where they were) and spread over the replicas a DNS
name resolves to, as kiam's servers did.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import grpc
import structlog
from prometheus_client import Counter, Gauge

from podiam.errors import ConfigError, KubeError, NodeChanged, NodeNotFound
from podiam.observability.metrics import Metrics
from podiam.remote import podiam_pb2 as pb
from podiam.remote import podiam_pb2_grpc as pb_grpc
from podiam.remote.feed import ClusterFeed
from podiam.remote.ready import ReadyNodes
from podiam.remote.reports import RefusalRecorder, refusals_from_wire
from podiam.remote.tls import CertificateExpiry, TlsFiles, is_client_certificate, server_credentials

log = structlog.stdlib.get_logger(__name__)


def ms(seconds: float) -> int:
    """gRPC's options are milliseconds."""
    return int(seconds * 1000)


@dataclass(frozen=True)
class ServiceSettings:
    bind: str = "0.0.0.0:9610"
    """host:port of the gRPC service."""
    keepalive_time: float = 10.0
    """Seconds between keepalive pings on an idle connection (kiam's 10 s)."""
    keepalive_timeout: float = 2.0
    """Seconds a ping may go unanswered before the connection is presumed dead."""
    max_connection_age: float = 900.0
    """Seconds after which a connection is closed (gracefully), so agents re-resolve and spread."""
    max_connection_age_grace: float = 10.0
    """Seconds a closing connection's stream gets before it is cut."""
    shutdown_grace: float = 2.0
    """Seconds streams get at shutdown."""


class ServerMetrics:
    def __init__(self, metrics: Metrics) -> None:
        self.streams = Gauge("podiam_server_streams", "Agents streaming now.", registry=metrics.registry)
        self.snapshots = Counter("podiam_server_snapshots_total", "Snapshots sent to agents.",
                                 registry=metrics.registry)
        self.changes = Counter("podiam_server_changes_sent_total", "Changes sent to agents.",
                               registry=metrics.registry)
        self.refused = Counter("podiam_server_streams_refused_total",
                               "Calls refused after the handshake, by reason.", ["reason"],
                               registry=metrics.registry)
        self.refusals = Counter("podiam_server_reported_refusals_total",
                                "Refusals agents reported, by outcome: recorded (as a Warning event) or ignored "
                                "(pod not on the agent's node, unknown reason, events off).", ["outcome"],
                                registry=metrics.registry)
        self.ready = Counter("podiam_server_ready_reports_total",
                             "Agents' readiness reports, by outcome: removed (the node-ready taint), absent (the "
                             "node had none), no_taint (no --node-ready-taint), failed (not removed: the agent "
                             "retries).", ["outcome"], registry=metrics.registry)


MAX_REPORTED_COUNT = 10_000
"""Occurrences one reported refusal may add to an event: an agent cannot inflate counts at will."""


class PodiamService(pb_grpc.PodiamServicer):
    def __init__(self, feed: ClusterFeed, metrics: ServerMetrics, refusals: RefusalRecorder | None = None,
                 synced: Callable[[], bool] = lambda: True, ready_nodes: ReadyNodes | None = None) -> None:
        """refusals: writes the agents' reported refusals as events; None (--no-pod-events) ignores them.
        synced: whether the cluster's pods have been listed; until then no stream is served.
        ready_nodes: removes the node-ready taint of an agent that reports ready; None: no --node-ready-taint."""
        self._feed, self._metrics, self._refusals, self._synced = feed, metrics, refusals, synced
        self._ready_nodes = ready_nodes

    async def _check_caller(self, node: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Every RPC: an agent's client certificate, and the node it speaks for."""
        peer_certs = list(context.auth_context().get("x509_pem_cert", []))
        if not peer_certs or not is_client_certificate(peer_certs[0]):
            self._metrics.refused.labels("not_client_certificate").inc()
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "the certificate has no clientAuth extended key usage")
        if not node:
            self._metrics.refused.labels("no_node").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the request needs the node's name")

    async def ReportRefusals(  # the RPC's name in podiam.proto
        self, request: pb.ReportRefusalsRequest,
        context: grpc.aio.ServicerContext[pb.ReportRefusalsRequest, pb.ReportRefusalsReply],
    ) -> pb.ReportRefusalsReply:
        await self._check_caller(request.node, context)
        recorded = ignored = 0
        for refusal in refusals_from_wire(request, MAX_REPORTED_COUNT):
            if self._refusals is not None and self._refusals.record(request.node, refusal):
                recorded += 1
            else:
                ignored += 1
        self._metrics.refusals.labels("recorded").inc(recorded)
        self._metrics.refusals.labels("ignored").inc(ignored)
        return pb.ReportRefusalsReply(recorded=recorded, ignored=ignored)

    async def ReportReady(  # the RPC's name in podiam.proto
        self, request: pb.ReportReadyRequest,
        context: grpc.aio.ServicerContext[pb.ReportReadyRequest, pb.ReportReadyReply],
    ) -> pb.ReportReadyReply:
        await self._check_caller(request.node, context)
        if self._ready_nodes is None:
            self._metrics.ready.labels("no_taint").inc()
            return pb.ReportReadyReply()
        key = self._ready_nodes.taint_key
        status: grpc.StatusCode | None = None
        try:
            removed = await self._ready_nodes.node_ready(request.node)
        except NodeNotFound as e:
            status, detail = grpc.StatusCode.NOT_FOUND, str(e)
        except NodeChanged as e:
            status, detail = grpc.StatusCode.ABORTED, str(e)
        except KubeError as e:
            status, detail = grpc.StatusCode.UNAVAILABLE, str(e)
        except Exception as e:  # lightkube raises more than its ApiError (KeyError): the agent retries
            status, detail = grpc.StatusCode.UNAVAILABLE, f"{type(e).__name__}: {str(e)[:200]}"
        if status is not None:
            self._metrics.ready.labels("failed").inc()
            log.warning("node-ready taint not removed; the agent will report again", node=request.node, key=key,
                        error=detail[:200])
            await context.abort(status, detail[:500])
        self._metrics.ready.labels("removed" if removed else "absent").inc()
        log.info("node-ready taint removed" if removed else "node-ready taint already absent", node=request.node,
                 key=key, peer=context.peer())
        return pb.ReportReadyReply(taint_key=key, removed=removed)

    async def WatchNode(  # the RPC's name in podiam.proto
        self, request: pb.WatchNodeRequest, context: grpc.aio.ServicerContext[pb.WatchNodeRequest, pb.NodeUpdate],
    ) -> AsyncIterator[pb.NodeUpdate]:
        await self._check_caller(request.node, context)
        if not self._synced():
            # A replica that has not listed the pods yet would snapshot an empty node, and the
            # agent would drop every pod it knows: it is sent to another replica instead.
            self._metrics.refused.labels("not_synced").inc()
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                "this podiam server has not listed the cluster's pods yet; try another replica")
        resume = request.resume if request.HasField("resume") and request.resume.epoch else None
        sub = self._feed.subscribe(request.node, resume)
        peer = context.peer()  # read now: the context must not be touched once the call has ended
        # The stream is open from here, whether or not anything follows: a resumed stream of a
        # quiet node may have nothing to send for a long time, and the agent must know it is served.
        await context.send_initial_metadata(())
        log.info("agent connected", node=request.node, peer=peer, resumed=not sub.resync)
        self._metrics.streams.inc()
        try:
            async for update in sub.updates():
                if update.HasField("snapshot"):
                    self._metrics.snapshots.inc()
                else:
                    self._metrics.changes.inc()
                yield update
        finally:
            self._metrics.streams.dec()
            self._feed.unsubscribe(request.node, sub)
            log.info("agent disconnected", node=request.node, peer=peer)


class GrpcServer:
    """``async with GrpcServer(feed, files, settings, metrics, refusals) as server:`` serves until exit.

    ready_nodes: what ReportReady does (removes the server's --node-ready-taint); None: it has none."""

    def __init__(self, feed: ClusterFeed, files: TlsFiles, settings: ServiceSettings, metrics: Metrics,
                 refusals: RefusalRecorder | None = None, *, synced: Callable[[], bool] = lambda: True,
                 ready_nodes: ReadyNodes | None = None) -> None:
        self._settings = settings
        self._server = grpc.aio.server(options=[
            ("grpc.keepalive_time_ms", ms(settings.keepalive_time)),
            ("grpc.keepalive_timeout_ms", ms(settings.keepalive_timeout)),
            # As on the agent: core times a ping's ack out by this (default 1 min), not by
            # keepalive_timeout_ms (grpc/grpc#39239), so a dead agent's stream would linger.
            ("grpc.http2.ping_timeout_ms", ms(settings.keepalive_timeout)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", ms(settings.keepalive_time / 2)),
            ("grpc.http2.max_ping_strikes", 0),
            ("grpc.max_connection_age_ms", ms(settings.max_connection_age)),
            ("grpc.max_connection_age_grace_ms", ms(settings.max_connection_age_grace)),
            # gRPC binds with SO_REUSEPORT by default: a second server on the same --bind would
            # start without error and silently take half the agents' connections.
            ("grpc.so_reuseport", 0),
        ])
        service = PodiamService(feed, ServerMetrics(metrics), refusals, synced, ready_nodes)
        pb_grpc.add_PodiamServicer_to_server(service, self._server)
        credentials = server_credentials(files, CertificateExpiry(metrics))
        try:
            self._port = self._server.add_secure_port(settings.bind, credentials)
        except RuntimeError as e:  # grpcio's way of saying the address is taken or not ours
            raise ConfigError(f"--bind: cannot listen on {settings.bind} (in use, or not this host's)") from e
        if not self._port:
            raise ConfigError(f"--bind: cannot listen on {settings.bind}")

    @property
    def port(self) -> int:
        return self._port

    async def __aenter__(self) -> Self:
        await self._server.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self._server.stop(self._settings.shutdown_grace)
