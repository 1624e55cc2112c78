"""
`podiam server`'s life (split mode): watch every pod and namespace, decide each pod with the
agent's policy code, prefetch and refresh through the agent's credential cache, write the
pods' Warning events (its own refusals, and those the agents report), stream each
connected agent its node (remote/), and, with --node-ready-taint, remove that taint from a
node whose agent reports ready (remote/ready.py).

Start: region and base ARN -> policy -> STS client and cache (--fetchers calls in flight)
-> event recorder -> namespace index -> cluster index, whose listeners are the feed and the
prefetcher -> the watches (namespaces first) -> the gRPC service -> the operator port.
Stop (signals only set a flag): not ready -> the gRPC service stops (streams get a short
grace; agents resume elsewhere) -> root tasks cancelled -> clients closed.
"""

from __future__ import annotations

import contextlib
import socket

import structlog

from podiam.credentials import Identity
from podiam.decision import EVENT_REASONS
from podiam.imds.core import NoEvents
from podiam.imds.ops_app import make_ops_app
from podiam.imds.upstream import NodeMetadataClient
from podiam.kube.cluster_index import ClusterIndex
from podiam.kube.connection import KubeClient, make_client
from podiam.kube.events import EventRecorder
from podiam.kube.namespace_index import NamespaceIndex, namespace_watcher
from podiam.kube.node_taint import remove_node_taint
from podiam.kube.pod_watcher import cluster_pod_watcher
from podiam.kube.watcher import ListWatcher
from podiam.observability.audit import IssuanceLog, log_writer
from podiam.observability.metrics import Metrics
from podiam.pods import PodEntry, PodInfo
from podiam.policy import RolePolicy
from podiam.prefetch import PrefetchWhenIndexed
from podiam.readiness import Readiness
from podiam.remote.feed import ClusterFeed, FeedLimits
from podiam.remote.reports import ReportedRefusal
from podiam.remote.server import GrpcServer, ServiceSettings
from podiam.remote.tls import TlsFiles
from podiam.runner import RootTasks, resolve_node_facts, start_site
from podiam.settings import KubeSettings, ServerSettings
from podiam.sts.assumer import StsAssumer
from podiam.sts.cache import CredentialCache

log = structlog.stdlib.get_logger(__name__)


class _PrefetchWhenBound:
    """Cluster index listener: a pod bound to a node is fetched for before it has an IP; when it
    goes without ever being indexed, its identity is dropped unless another pod uses it."""

    def __init__(self, cache: CredentialCache, index: ClusterIndex) -> None:
        self._cache, self._index = cache, index

    def pod_bound(self, pod: PodInfo, identity: Identity) -> None:
        self._cache.prefetch(identity)

    def pod_unbound(self, pod: PodInfo, identity: Identity) -> None:
        if not self._index.identity_in_use(identity):
            self._cache.discard(identity)

    def pod_active(self, entry: PodEntry) -> None:
        pass  # PrefetchWhenIndexed

    def pod_gone(self, entry: PodEntry) -> None:
        pass

    def host_addresses(self, node: str, ips: frozenset[str]) -> None:
        pass


class _Listeners:
    """The cluster index's one listener, telling each part what it needs, in order."""

    def __init__(self, feed: ClusterFeed, prefetch: PrefetchWhenIndexed, bound: _PrefetchWhenBound) -> None:
        self._feed, self._prefetch, self._bound = feed, prefetch, bound

    def pod_active(self, entry: PodEntry) -> None:
        self._prefetch.pod_active(entry)
        self._feed.pod_active(entry)

    def pod_gone(self, entry: PodEntry) -> None:
        self._feed.pod_gone(entry)
        self._prefetch.pod_gone(entry)

    def pod_bound(self, pod: PodInfo, identity: Identity) -> None:
        self._bound.pod_bound(pod, identity)

    def pod_unbound(self, pod: PodInfo, identity: Identity) -> None:
        self._bound.pod_unbound(pod, identity)

    def host_addresses(self, node: str, ips: frozenset[str]) -> None:
        self._feed.host_addresses(node, ips)


class AgentRefusals:
    """The agents' reported refusals, written as Warning events on their pods: only for a pod
    on the reporting agent's node as this server's watch knows it (same uid, namespace and
    name), and only with a reason podiam writes; anything else is ignored (and counted by the
    service), so an agent's certificate cannot put events on another node's pods."""

    def __init__(self, pods: ClusterIndex, events: EventRecorder) -> None:
        self._pods, self._events = pods, events

    def record(self, node: str, refusal: ReportedRefusal) -> bool:
        index = self._pods.node(node)
        entry = index.by_uid(refusal.pod_uid) if index is not None else None
        if (entry is None or refusal.reason not in EVENT_REASONS
                or (entry.pod.namespace, entry.pod.name) != (refusal.namespace, refusal.name)):
            return False
        self._events.warn(entry.pod, refusal.reason, refusal.message, refusal.count)
        return True


class NodeReadyTaint:
    """ReportReady's work (remote/ready.py): the server's --node-ready-taint removed from the node an
    agent reports ready, with the server's own API access and a deadline."""

    def __init__(self, client: KubeClient, key: str, timeout: float) -> None:
        self._client, self._key, self._timeout = client, key, timeout

    @property
    def taint_key(self) -> str:
        return self._key

    async def node_ready(self, node: str) -> bool:
        return await remove_node_taint(self._client, node, self._key, timeout=self._timeout)


class Server(RootTasks):
    """One `podiam server` replica."""

    def __init__(self, settings: ServerSettings, metrics: Metrics | None = None) -> None:
        super().__init__(settings.task_stop_timeout)
        self.settings = settings
        self.metrics = metrics or Metrics()

    async def _run(self) -> None:
        s = self.settings
        async with contextlib.AsyncExitStack() as stack:
            upstream = await stack.enter_async_context(NodeMetadataClient(s.metadata_addr, 1.0))
            region, base_arn = await resolve_node_facts(s.sts.region, s.roles.base_role_arn,
                                                        s.roles.auto_discover_base_arn, upstream)
            policy = RolePolicy.from_settings(s.roles, base_arn, s.restrictions)
            if s.sts.assume_role_arn is not None:
                log.warning("pod roles are assumed with the credentials of --assume-role-arn; AWS caps such "
                            "chained sessions at 1 hour", assume_role_arn=s.sts.assume_role_arn,
                            session_duration=s.sts.session_duration)
            assumer = await stack.enter_async_context(StsAssumer(region, s.sts, self.metrics))
            cache = await stack.enter_async_context(CredentialCache(assumer, s.sts, self.metrics))
            client = make_client(s.kube)
            stack.push_async_callback(client.close)
            events = None
            if s.pod_events:
                events = await stack.enter_async_context(
                    EventRecorder(client, self.metrics, node=socket.gethostname(), settings=s.events))
            namespaces = NamespaceIndex(policy, self.metrics) if s.restrictions.enabled else None

            def decide(pod: PodInfo) -> Identity:
                return policy.identity(pod, namespaces.rules(pod.namespace) if namespaces else None)

            pods = ClusterIndex(decide)
            feed = ClusterFeed(FeedLimits(s.change_log, s.send_queue, s.sts.expiry_margin), policy.host_identity,
                               cache.prefetch)
            cache.subscribe(feed.outcome)
            # Issuance is recorded where credentials are served: on the agents.
            issuance = IssuanceLog("", log_writer)
            prefetch = PrefetchWhenIndexed(cache, pods, issuance, events if events is not None else NoEvents(),
                                           self.metrics)
            pods.subscribe(_Listeners(feed, prefetch, _PrefetchWhenBound(cache, pods)))
            stack.push_async_callback(self._stop_tasks)
            watches = self._start_watches(client, pods, namespaces, s.kube)
            ready = Readiness(started=self._started.is_set, stopping=self._stop.is_set,
                              index_synced=pods.synced.is_set, watches=watches,
                              unready_after=s.kube.watch_unready_after)
            service = ServiceSettings(bind=s.bind)
            taint = s.ready_taint
            ready_nodes = NodeReadyTaint(client, taint.key, taint.call_timeout) if taint.key is not None else None
            grpc_server = await stack.enter_async_context(
                GrpcServer(feed, TlsFiles(s.cert, s.key, s.ca), service, self.metrics,
                           AgentRefusals(pods, events) if events is not None else None, synced=pods.synced.is_set,
                           ready_nodes=ready_nodes))
            ops = await start_site(make_ops_app(self.metrics, ready.reason), s.metrics.bind_address, s.metrics.port,
                                   1.0)
            stack.push_async_callback(ops.cleanup)
            self._started.set()
            log.info("server started", bind=s.bind, port=grpc_server.port, metrics_port=s.metrics.port,
                     region=region, sts_endpoint=assumer.endpoint_url, base_role_arn=base_arn,
                     fetchers=s.sts.fetchers, assume_role_arn=s.sts.assume_role_arn, node_ready_taint=taint.key)
            await self._stop.wait()
            log.info("stopping")

    def _start_watches(self, client: KubeClient, pods: ClusterIndex, namespaces: NamespaceIndex | None,
                       kube: KubeSettings) -> list[ListWatcher]:
        watcher = cluster_pod_watcher(client, pods, kube, self.metrics)
        if namespaces is None:
            return self._spawn_watches(watcher, None)
        namespaces.subscribe(pods.decide_again)
        return self._spawn_watches(watcher, (namespace_watcher(client, namespaces, kube, self.metrics),
                                             namespaces.synced))
