"""
The agent's life: start in dependency order, serve until a signal or a root task ends,
then stop in stages.

Start: node discovery (region, base ARN) -> STS client and cache -> event recorder -> pod
index, fed by the pod watcher (after the namespace watcher's first list, when namespace
restrictions are on) -> the metadata and operator endpoints -> the iptables rule, last, so
the rule never sends a pod to a port nobody listens on, then its guard (node/rule_guard.py),
which puts it back whenever something deletes it.

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
from typing import Any

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
from podiam.kube.connection import KubeClient, make_client
from podiam.kube.events import EventRecorder
from podiam.kube.namespace_index import NamespaceIndex, namespace_watcher
from podiam.kube.pod_index import PodIndex
from podiam.kube.pod_watcher import pod_watcher
from podiam.kube.watcher import ListWatcher
from podiam.node.iptables import DnatRule, ensure_rule, remove_rule
from podiam.node.rule_guard import RESTORED_REASON, IptablesRules, RuleGuard
from podiam.observability.audit import AuditWriter, IssuanceLog, JsonLinesWriter, log_writer
from podiam.observability.metrics import Metrics
from podiam.pods import PodInfo
from podiam.policy import RolePolicy
from podiam.prefetch import PrefetchWhenIndexed
from podiam.readiness import Readiness
from podiam.settings import AgentSettings, ImdsSettings
from podiam.sts.assumer import StsAssumer
from podiam.sts.cache import CredentialCache

log = structlog.stdlib.get_logger(__name__)

async def _resolve_node_facts(settings: AgentSettings, upstream: NodeMetadataClient) -> tuple[str, str | None]:
    """The STS region and the base role ARN, from flags or from the node's own IMDS."""
    region = settings.sts.region
    if region is None:
        try:
            region = await upstream.region()
        except NodeMetadataError as e:
            raise ConfigError(
                f"no AWS region: set AWS_REGION (or AWS_DEFAULT_REGION), or let the agent reach the "
                f"node's metadata service at {settings.imds.metadata_addr} ({e})"
            ) from e
        log.info("region discovered from node metadata", region=region)
    base_arn = settings.roles.base_role_arn
    if base_arn is None and settings.roles.auto_discover_base_arn:
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
        runner = await _start_site(make_app(deps), settings.bind_address, settings.app_port,
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


async def _start_site(app: web.Application, host: str, port: int, grace: float) -> web.AppRunner:
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=grace)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_address=True).start()
    except OSError as e:
        await runner.cleanup()
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    return runner


async def _after(event: asyncio.Event, watcher: ListWatcher) -> None:
    await event.wait()
    await watcher.run()


def _rule_guard(rule: DnatRule | None, settings: AgentSettings, metrics: Metrics,
                recorder: EventRecorder | None) -> RuleGuard | None:
    """The guard of the rule, if one is installed; a restore is told on the Node (with events on)."""
    if rule is None:
        return None

    def on_restored(message: str) -> None:
        if recorder is not None:
            recorder.warn_node(RESTORED_REASON, message)

    rules = IptablesRules(rule, call_timeout=settings.node.iptables_timeout)
    return RuleGuard(rules, metrics, interval=settings.node.iptables_check_interval,
                     on_restored=on_restored)


def _audit_writer(stack: contextlib.AsyncExitStack, target: str | None) -> AuditWriter:
    if target is None:
        return log_writer
    try:
        writer = JsonLinesWriter(target)
    except OSError as e:
        raise ConfigError(f"--audit-log: cannot open {target}: {e.strerror or e}") from e
    stack.callback(writer.close)
    return writer


class Agent:
    """One node agent. ``run()`` returns when stopped by SIGTERM/SIGINT or a failed root task."""

    def __init__(self, settings: AgentSettings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self._stop = asyncio.Event()
        self._started = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._guard: asyncio.Task[None] | None = None
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
        s = self.settings
        rule = DnatRule.from_settings(s.node, s.imds.app_port) if s.node.iptables else None
        async with contextlib.AsyncExitStack() as stack:
            upstream = await stack.enter_async_context(
                NodeMetadataClient(s.imds.metadata_addr, s.imds.upstream_timeout)
            )
            region, base_arn = await _resolve_node_facts(s, upstream)
            policy = RolePolicy.from_settings(s.roles, base_arn, s.restrictions)
            assumer = await stack.enter_async_context(StsAssumer(region, s.sts, self.metrics))
            cache = await stack.enter_async_context(CredentialCache(assumer, s.sts, self.metrics))
            issuance = IssuanceLog(s.kube.node_name, _audit_writer(stack, s.log.audit_log))
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

            index = PodIndex(decide, host_ips=[s.node.host_ip] if s.node.host_ip else [])
            index.subscribe(PrefetchWhenIndexed(cache, index, issuance, events, self.metrics))
            host_identity = policy.host_identity(s.kube.node_name)
            if host_identity is not None:
                cache.prefetch(host_identity)
            # Registered before any task exists: a failure later in start-up still stops them.
            stack.push_async_callback(self._stop_tasks)
            watches = self._start_watches(client, index, namespaces)
            guard = _rule_guard(rule, s, self.metrics, recorder)
            ready = Readiness(started=self._started.is_set, stopping=self._stop.is_set,
                              index_synced=index.synced.is_set, watches=watches,
                              rule_missing=(lambda: guard.missing) if guard else (lambda: None),
                              unready_after=s.kube.watch_unready_after)

            tokens = TokenIssuer(max_remembered=s.imds.tokens_remembered)
            limiter = RateLimiter(s.imds.pod_rate_limit, max_tracked=s.imds.rate_limit_tracked)
            deps = ImdsDeps(pods=index, credentials=cache, tokens=tokens, issuance=issuance,
                            metrics=self.metrics, settings=s.imds, upstream=upstream, ready=ready,
                            limiter=limiter, events=events,
                            host_identity=host_identity)
            stop_imds = await _start_metadata_server(stack, deps, s.imds)
            debug = (lambda: debug_pods(index, cache)) if s.metrics.debug else None
            ops_site = await _start_site(make_ops_app(self.metrics, ready.reason, debug), s.metrics.bind_address,
                                         s.metrics.port, 1.0)
            stack.push_async_callback(ops_site.cleanup)
            if rule is not None:
                added = await ensure_rule(rule, call_timeout=s.node.iptables_timeout)
                log.info("iptables rule " + ("installed" if added else "already present"),
                         interface=rule.interface, destination=rule.destination)
            if guard is not None:
                self._guard = self._spawn("iptables-guard", guard.run())
            self._started.set()
            log.info("agent started", node=s.kube.node_name, app_port=s.imds.app_port,
                     metrics_port=s.metrics.port, region=region, sts_endpoint=assumer.endpoint_url,
                     base_role_arn=base_arn, default_role=policy.default_role_arn)
            try:
                await self._stop.wait()
                log.info("stopping")
            finally:
                await self._shutdown(stop_imds, rule)

    def _start_watches(self, client: KubeClient, index: PodIndex,
                       namespaces: NamespaceIndex | None) -> list[ListWatcher]:
        """Spawn the watch root tasks; the watchers, for readiness."""
        kube = self.settings.kube
        pods = pod_watcher(client, index, kube, self.metrics)
        if namespaces is None:
            self._spawn("pod-watcher", pods.run())
            return [pods]
        namespaces.subscribe(index.decide_again)
        names = namespace_watcher(client, namespaces, kube, self.metrics)
        self._spawn("namespace-watcher", names.run())
        # Pods are decided once their namespaces are known, not refused meanwhile.
        self._spawn("pod-watcher", _after(namespaces.synced, pods))
        return [names, pods]

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

    async def _shutdown(self, stop_imds: Callable[[], Awaitable[None]], rule: DnatRule | None) -> None:
        self._stop.set()
        await stop_imds()  # stop accepting; in-flight requests finish within the grace
        if self._guard is not None:  # stopped first: it would put back the rule removed below
            self._guard.cancel()
            await asyncio.wait([self._guard], timeout=self.settings.task_stop_timeout)
        if rule is not None:
            try:
                removed = await remove_rule(rule, call_timeout=self.settings.node.iptables_timeout)
                log.info("iptables rule removed", copies=removed)
            except PodiamError as e:
                log.error("could not remove the iptables rule; remove it by hand", error=str(e))  # noqa: TRY400
        await self._stop_tasks()
        log.info("stopped")

    async def _stop_tasks(self) -> None:
        """Cancel the root tasks and wait for them; name any that will not stop."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.settings.task_stop_timeout)
            for task in pending:
                log.error("root task did not stop", task=task.get_name())
