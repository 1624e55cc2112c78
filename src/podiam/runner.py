"""
The agent's life: start in dependency order, serve until a signal or a root task ends,
then stop in stages.

Start: the iptables backend (with --iptables; node/backend.py) -> node discovery (region,
base ARN) -> STS client and cache -> event recorder -> pod index, fed by the pod watcher
(after the namespace watcher's first list, when namespace restrictions are on) -> the
metadata and operator endpoints -> the iptables rule, last, so the rule never sends a pod to
a port nobody listens on, then its guard (node/rule_guard.py), which puts it back whenever
something deletes it. With --node-ready-taint (in split mode with --iptables alone: the
server holds the key), a task waits until the agent is ready and then has the node's
start-up taint removed (node/ready_taint.py).

Stop (SIGTERM/SIGINT only set a flag, from the first moment of start-up): not ready -> the
metadata endpoint stops accepting and in-flight requests finish (up to --shutdown-grace)
-> the rule guard stops -> the iptables rule is removed -> root tasks are cancelled, and any that will not stop is
named -> clients are closed. A root task that ends on its own stops the agent, which then
exits non-zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from podiam.credentials import Identity
from podiam.errors import ConfigError, NodeMetadataError, PodiamError
from podiam.imds.app import make_app
from podiam.imds.core import EventSink, ImdsDeps, MetadataCore, NoEvents
from podiam.imds.fast_server import FastServer
from podiam.imds.ops_app import debug_pods, make_ops_app
from podiam.imds.rate_limit import RateLimiter
from podiam.imds.tokens import TokenIssuer
from podiam.imds.upstream import NodeMetadataClient, base_arn_from_profile
from podiam.kube.pod_index import PodIndex
from podiam.node.backend import choose_backend
from podiam.node.iptables import DnatRule, ensure_rule, remove_rule
from podiam.node.ready_taint import ReadyTaintRemoval, TaintOutcome
from podiam.node.rule_guard import RESTORED_REASON, IptablesRules, RuleGuard
from podiam.observability.audit import AuditWriter, IssuanceLog, JsonLinesWriter, log_writer
from podiam.observability.metrics import Metrics
from podiam.pods import PodEntry, PodInfo
from podiam.readiness import Readiness
from podiam.settings import AgentSettings, ImdsSettings, RemoteSettings

if TYPE_CHECKING:  # split mode's agent imports neither the Kubernetes client nor botocore
    from podiam.kube.connection import KubeClient
    from podiam.kube.events import EventRecorder
    from podiam.kube.namespace_index import NamespaceIndex
    from podiam.kube.watcher import ListWatcher

log = structlog.stdlib.get_logger(__name__)

async def resolve_node_facts(region: str | None, base_arn: str | None, auto_discover: bool,
                             upstream: NodeMetadataClient) -> tuple[str, str | None]:
    """The STS region and the base role ARN, from flags or from the node's own IMDS."""
    if region is None:
        try:
            region = await upstream.region()
        except NodeMetadataError as e:
            raise ConfigError(
                f"no AWS region: set AWS_REGION (or AWS_DEFAULT_REGION), or let the agent reach the "
                f"node's metadata service ({e})"
            ) from e
        log.info("region discovered from node metadata", region=region)
    if base_arn is None and auto_discover:
        try:
            base_arn = base_arn_from_profile(await upstream.instance_profile_arn())
        except NodeMetadataError as e:
            raise ConfigError(f"--auto-discover-base-arn: {e}") from e
        log.info("base role ARN discovered from node metadata", base_role_arn=base_arn)
    return region, base_arn


async def _start_metadata_server(stack: contextlib.AsyncExitStack, deps: ImdsDeps,
                                 settings: ImdsSettings) -> Callable[[], Awaitable[None]]:
    """Serve the metadata endpoint until ``stack`` closes. Returns its staged stop (stop accepting,
    drain in-flight), idempotent: shutdown calls it first, before the rule goes, and the stack's
    own exit then finds nothing to do (it stops the server only when start-up fails later)."""
    if settings.server == "aiohttp":
        runner = await start_site(make_app(deps), settings.bind_address, settings.app_port,
                                   settings.shutdown_grace)
        stack.push_async_callback(runner.cleanup)
        return runner.cleanup
    server = FastServer(MetadataCore(deps), settings.bind_address, settings.app_port, settings.shutdown_grace,
                        settings=settings, metrics=deps.metrics)
    try:
        await stack.enter_async_context(server)
    except OSError as e:
        raise ConfigError(f"cannot listen on {settings.bind_address}:{settings.app_port}: {e.strerror or e}") from e
    return server.close


async def start_site(app: web.Application, host: str, port: int, grace: float) -> web.AppRunner:
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=grace)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_address=True).start()
    except OSError as e:
        await runner.cleanup()
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    return runner


async def after(event: asyncio.Event, watcher: ListWatcher) -> None:
    await event.wait()
    await watcher.run()


def _rule_guard(rule: DnatRule | None, binary: str, settings: AgentSettings, metrics: Metrics,
                recorder: EventRecorder | None) -> RuleGuard | None:
    """The guard of the rule, if one is installed; a restore is told on the Node (with events on)."""
    if rule is None:
        return None

    def on_restored(message: str) -> None:
        if recorder is not None:
            recorder.warn_node(RESTORED_REASON, message)

    rules = IptablesRules(rule, call_timeout=settings.node.iptables_timeout, binary=binary)
    return RuleGuard(rules, metrics, interval=settings.node.iptables_check_interval,
                     on_restored=on_restored)


def audit_writer(stack: contextlib.AsyncExitStack, target: str | None) -> AuditWriter:
    if target is None:
        return log_writer
    try:
        writer = JsonLinesWriter(target)
    except OSError as e:
        raise ConfigError(f"--audit-log: cannot open {target}: {e.strerror or e}") from e
    stack.callback(writer.close)
    return writer


class RootTasks:
    """What a podiam process's life is made of: signals that only set the stop flag, root
    tasks whose unexpected end stops the process (exit 1), and their staged stop.
    Subclasses start their parts in ``_run``."""

    def __init__(self, task_stop_timeout: float) -> None:
        self._task_stop_timeout = task_stop_timeout
        self._stop = asyncio.Event()
        self._started = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._failure: str | None = None

    async def run(self) -> None:
        """Start, serve until stopped, stop in stages. Raises PodiamError if a root task failed."""
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT)
        for sig in signals:  # from the first moment: a signal during start-up still stops cleanly
            loop.add_signal_handler(sig, self._stop.set)
        try:
            await self._run()
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
        if self._failure is not None:
            raise PodiamError(f"stopped because {self._failure}")

    async def _run(self) -> None:
        raise NotImplementedError

    def _spawn(self, name: str, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._root_task_done)
        self._tasks.append(task)
        return task

    def _root_task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled():
            error = task.exception()
            self._failure = f"root task {task.get_name()} ended: {error!r}"
            log.error("root task ended unexpectedly; stopping the agent", task=task.get_name(),
                      error=repr(error) if error else None)
        self._stop.set()

    def _spawn_watches(self, pods: ListWatcher, namespaces: tuple[ListWatcher, asyncio.Event] | None,
                       ) -> list[ListWatcher]:
        """Spawn the watch root tasks: the pod watch, after the namespace watch's first list
        (``namespaces``: that watcher and its index's synced event) when restrictions are on, so
        pods are decided once their namespaces are known, not refused meanwhile. The watchers,
        for readiness."""
        if namespaces is None:
            self._spawn("pod-watcher", pods.run())
            return [pods]
        names, synced = namespaces
        self._spawn("namespace-watcher", names.run())
        self._spawn("pod-watcher", after(synced, pods))
        return [names, pods]

    async def _stop_tasks(self) -> None:
        """Cancel the root tasks and wait for them; name any that will not stop."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self._task_stop_timeout)
            for task in pending:
                log.error("root task did not stop", task=task.get_name())

class Agent(RootTasks):
    """One node agent. ``run()`` returns when stopped by SIGTERM/SIGINT or a failed root task."""

    def __init__(self, settings: AgentSettings, metrics: Metrics | None = None) -> None:
        super().__init__(settings.task_stop_timeout)
        self.settings = settings
        self.metrics = metrics or Metrics()
        self._guard: asyncio.Task[None] | None = None
        self._iptables = "iptables"
        """The chosen backend's iptables binary, for every call on the rule (node/backend.py)."""

    async def _run(self) -> None:
        s = self.settings
        rule = DnatRule.from_settings(s.node, s.imds.app_port) if s.node.iptables else None
        if rule is not None:  # decided once, first: a missing binary is a configuration error
            backend = await choose_backend(s.node.iptables_mode, call_timeout=s.node.iptables_timeout)
            self._iptables = backend.binary
            log.info("iptables backend chosen", mode=backend.mode, binary=backend.binary, reason=backend.reason,
                     requested=s.node.iptables_mode)
        async with contextlib.AsyncExitStack() as stack:
            upstream = await stack.enter_async_context(
                NodeMetadataClient(s.imds.metadata_addr, s.imds.upstream_timeout)
            )
            if s.remote is not None:
                await self._run_split(stack, s.remote, upstream, rule)
                return
            # Imported here: split mode's agent never loads the Kubernetes client or botocore.
            from podiam.kube.connection import make_client  # noqa: PLC0415
            from podiam.kube.events import EventRecorder  # noqa: PLC0415
            from podiam.kube.namespace_index import NamespaceIndex  # noqa: PLC0415
            from podiam.policy import RolePolicy  # noqa: PLC0415
            from podiam.prefetch import PrefetchWhenIndexed  # noqa: PLC0415
            from podiam.sts.assumer import StsAssumer  # noqa: PLC0415
            from podiam.sts.cache import CredentialCache  # noqa: PLC0415

            region, base_arn = await resolve_node_facts(s.sts.region, s.roles.base_role_arn,
                                                        s.roles.auto_discover_base_arn, upstream)
            policy = RolePolicy.from_settings(s.roles, base_arn, s.restrictions)
            assumer = await stack.enter_async_context(StsAssumer(region, s.sts, self.metrics))
            cache = await stack.enter_async_context(CredentialCache(assumer, s.sts, self.metrics))
            issuance = IssuanceLog(s.kube.node_name, audit_writer(stack, s.log.audit_log))
            client = make_client(s.kube)
            stack.push_async_callback(client.close)
            events: EventSink = NoEvents()
            recorder: EventRecorder | None = None
            if s.node.pod_events:
                recorder = await stack.enter_async_context(EventRecorder(client, self.metrics, node=s.kube.node_name,
                                                                        settings=s.events))
                events = recorder
            namespaces = NamespaceIndex(policy, self.metrics) if s.restrictions.enabled else None

            def decide(pod: PodInfo) -> Identity:
                return policy.identity(pod, namespaces.rules(pod.namespace) if namespaces else None)

            host_identity = policy.host_identity(s.kube.node_name)
            index = PodIndex(decide, host_ips=[s.node.host_ip] if s.node.host_ip else [], host_identity=host_identity)
            index.subscribe(PrefetchWhenIndexed(cache, index, issuance, events, self.metrics))
            if host_identity is not None:
                cache.prefetch(host_identity)
            # Registered before any task exists: a failure later in start-up still stops them.
            stack.push_async_callback(self._stop_tasks)
            watches = self._start_watches(client, index, namespaces)
            guard = _rule_guard(rule, self._iptables, s, self.metrics, recorder)
            ready = Readiness(started=self._started.is_set, stopping=self._stop.is_set,
                              index_synced=index.synced.is_set, watches=watches,
                              rule_missing=(lambda: guard.missing) if guard else (lambda: None),
                              unready_after=s.kube.watch_unready_after)
            if s.ready_taint.key is not None:
                await stack.enter_async_context(self._untaint(client, s.ready_taint.key, ready))

            tokens = TokenIssuer(max_remembered=s.imds.tokens_remembered)
            limiter = RateLimiter(s.imds.pod_rate_limit, max_tracked=s.imds.rate_limit_tracked)
            deps = ImdsDeps(pods=index, credentials=cache, tokens=tokens, issuance=issuance,
                            metrics=self.metrics, settings=s.imds, upstream=upstream, ready=ready,
                            limiter=limiter, events=events)
            debug = (lambda: debug_pods(index, cache)) if s.metrics.debug else None
            await self._serve(stack, deps, rule, guard, ready, debug=debug, node=s.kube.node_name, region=region,
                              sts_endpoint=assumer.endpoint_url, base_role_arn=base_arn,
                              default_role=policy.default_role_arn)

    async def _serve(self, stack: contextlib.AsyncExitStack, deps: ImdsDeps, rule: DnatRule | None,
                     guard: RuleGuard | None, ready: Readiness, *,
                     debug: Callable[[], list[dict[str, Any]]] | None = None,
                     drain: Callable[[], Awaitable[None]] | None = None, **facts: Any) -> None:
        """Both modes' last steps: the endpoints, then the rule and its guard; serve until stopped.

        drain: run at shutdown once the endpoint is stopped, before any task is (split mode's
        refusal reports go out on the stream that is still open).
        """
        s = self.settings
        stop_imds = await _start_metadata_server(stack, deps, s.imds)
        ops_site = await start_site(make_ops_app(self.metrics, ready.reason, debug), s.metrics.bind_address,
                                    s.metrics.port, 1.0)
        stack.push_async_callback(ops_site.cleanup)
        if rule is not None:
            added = await ensure_rule(rule, call_timeout=s.node.iptables_timeout, binary=self._iptables)
            log.info("iptables rule " + ("installed" if added else "already present"),
                     interface=rule.interface, destination=rule.destination)
        if guard is not None:
            self._guard = self._spawn("iptables-guard", guard.run())
        self._started.set()
        log.info("agent started", app_port=s.imds.app_port, metrics_port=s.metrics.port, **facts)
        try:
            await self._stop.wait()
            log.info("stopping")
        finally:
            await self._shutdown(stop_imds, rule, drain)

    async def _run_split(self, stack: contextlib.AsyncExitStack, remote: RemoteSettings,
                         upstream: NodeMetadataClient, rule: DnatRule | None) -> None:
        """Split mode: the same endpoint, rule and probes, fed by a podiam server's stream."""
        from podiam.remote.client import ServerStream, StreamSettings  # noqa: PLC0415
        from podiam.remote.mirror import Mirror  # noqa: PLC0415
        from podiam.remote.ready import report_ready  # noqa: PLC0415
        from podiam.remote.reports import RefusalReporter  # noqa: PLC0415
        from podiam.remote.tls import TlsFiles  # noqa: PLC0415

        s = self.settings
        host_ips = [s.node.host_ip] if s.node.host_ip else []
        issuance = IssuanceLog(s.kube.node_name, audit_writer(stack, s.log.audit_log))
        stream: ServerStream | None = None
        # The server writes the pods' Warning events; this agent reports its refusals to it.
        reporter = await stack.enter_async_context(RefusalReporter(
            s.kube.node_name, lambda: stream.channel if stream is not None else None, remote.reports, self.metrics))

        def pod_index(decide: Callable[[PodInfo], Identity]) -> PodIndex:
            index = PodIndex(decide, host_ips=host_ips)
            index.subscribe(_ForgetWhenGone(issuance, reporter))
            return index

        mirror = Mirror(pod_index, s.kube.node_name, credentials_wait=s.sts.request_wait,
                        expiry_margin=s.sts.expiry_margin)
        stream = ServerStream(mirror, TlsFiles(remote.cert, remote.key, remote.ca),
                              StreamSettings(remote.addresses, server_name=remote.server_name), self.metrics)
        stack.push_async_callback(self._stop_tasks)
        self._spawn("server-stream", stream.run())
        try:
            async with asyncio.timeout(remote.first_snapshot_wait):
                await mirror.synced.wait()
        except TimeoutError:
            log.warning("no podiam server answered yet; serving from an empty mirror", servers=remote.addresses)
        guard = _rule_guard(rule, self._iptables, s, self.metrics, None)
        ready = Readiness(started=self._started.is_set, stopping=self._stop.is_set,
                          index_synced=mirror.synced.is_set,
                          rule_missing=(lambda: guard.missing) if guard else (lambda: None))

        async def report() -> TaintOutcome:
            # The server removes its own --node-ready-taint (if it has one): the agent names no taint.
            key, removed = await report_ready(lambda: stream.channel if stream is not None else None,
                                              s.kube.node_name, timeout=s.ready_taint.report_timeout)
            return TaintOutcome(key, removed)

        if rule is not None:
            await stack.enter_async_context(ReadyTaintRemoval(report, ready, s.ready_taint, node=s.kube.node_name))
        else:  # as agent mode refuses --node-ready-taint without --iptables: ready would not mean protected
            log.info("not reporting readiness to the podiam server: without --iptables the node-ready taint, if "
                     "the server has one, stays", node=s.kube.node_name)
        deps = ImdsDeps(pods=mirror, credentials=mirror, tokens=TokenIssuer(max_remembered=s.imds.tokens_remembered),
                        issuance=issuance, metrics=self.metrics, settings=s.imds, upstream=upstream, ready=ready,
                        limiter=RateLimiter(s.imds.pod_rate_limit, max_tracked=s.imds.rate_limit_tracked),
                        events=reporter)
        await self._serve(stack, deps, rule, guard, ready, drain=reporter.flush, node=s.kube.node_name,
                          servers=remote.addresses)

    def _untaint(self, client: KubeClient, key: str, ready: Readiness) -> ReadyTaintRemoval:
        """Agent mode's removal of the node's start-up taint, once ready, with the agent's own API access."""
        from podiam.kube.node_taint import remove_node_taint  # noqa: PLC0415

        s = self.settings

        async def remove() -> TaintOutcome:
            return TaintOutcome(key, await remove_node_taint(client, s.kube.node_name, key,
                                                             timeout=s.ready_taint.call_timeout))

        return ReadyTaintRemoval(remove, ready, s.ready_taint, node=s.kube.node_name)

    def _start_watches(self, client: KubeClient, index: PodIndex,
                       namespaces: NamespaceIndex | None) -> list[ListWatcher]:
        """Spawn the watch root tasks; the watchers, for readiness."""
        from podiam.kube.namespace_index import namespace_watcher  # noqa: PLC0415
        from podiam.kube.pod_watcher import pod_watcher  # noqa: PLC0415

        kube = self.settings.kube
        pods = pod_watcher(client, index, kube, self.metrics)
        if namespaces is None:
            return self._spawn_watches(pods, None)
        namespaces.subscribe(index.decide_again)
        return self._spawn_watches(pods, (namespace_watcher(client, namespaces, kube, self.metrics), namespaces.synced))

    async def _shutdown(self, stop_imds: Callable[[], Awaitable[None]], rule: DnatRule | None,
                        drain: Callable[[], Awaitable[None]] | None) -> None:
        self._stop.set()
        await stop_imds()  # stop accepting; in-flight requests finish within the grace
        if drain is not None:
            await drain()
        if self._guard is not None:  # stopped first: it would put back the rule removed below
            self._guard.cancel()
            await asyncio.wait([self._guard], timeout=self._task_stop_timeout)
        if rule is not None:
            try:
                removed = await remove_rule(rule, call_timeout=self.settings.node.iptables_timeout,
                                            binary=self._iptables)
                log.info("iptables rule removed", copies=removed)
            except PodiamError as e:
                log.error("could not remove the iptables rule; remove it by hand", error=str(e))  # noqa: TRY400
        await self._stop_tasks()
        log.info("stopped")


class _ForgetWhenGone:
    """Split mode's pod index listener: the issuance log and the refusal reports forget pods
    that go (agent mode's PrefetchWhenIndexed does it there, with the prefetching this agent
    leaves to the server)."""

    def __init__(self, issuance: IssuanceLog, events: EventSink) -> None:
        self._issuance, self._events = issuance, events

    def pod_active(self, entry: PodEntry) -> None:
        pass

    def pod_gone(self, entry: PodEntry) -> None:
        self._issuance.forget(entry.pod)
        self._events.forget(entry.pod)
