"""
8. Split mode's server at scale: one `podiam server` with N pods on M nodes and M simulated
agents on real streams (``fleet.py``): the server's RSS, the time from its start to every
identity prefetched, the delay from a pod's IP written in the API to its node's agent knowing
it, and the server's CPU per pod change.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import (
    BENCH_DIR,
    ScenarioResult,
    Target,
    cpu_seconds,
    metric,
    percentile,
    rss_mb,
    spawned,
    wait_for,
)
from benchmarks.node import bench_world, bounded, create_pod, set_running
from benchmarks.profiles import Context
from benchmarks.split import SERVER_NAME, Pki, Server, certs_init, start_server
from podiam_sandbox.world import World

KEY = "server_scale"
TITLE = "8. Split-mode server at scale (N pods on M nodes, simulated agents on real streams)"
FLEET = BENCH_DIR / "fleet.py"
NAMESPACES = 10
ROLES = 20
FETCHERS = 8
CREATORS = 8
"""Pod creations in flight (one API client, as a scheduler's binding writes)."""
WRITERS = 16
"""Status writes in flight at most; the pacing, not this bound, sets the rate."""
RSS_TARGET_MB = 250.0
RSS_TARGET_SIZE = (10000, 200)
"""Issue 11: the server with 10,000 pods on 200 nodes under 250 MB RSS."""
REPORT_LIMIT = 1 << 24
"""Bytes of the fleet's longest answer line (its report: every pod IP with a node and a time)."""


def pod_ref(i: int) -> tuple[str, str]:
    """(namespace, name) of pod ``i``."""
    return f"scale-{i % NAMESPACES}", f"app-{i}"


def pod_ip(i: int) -> str:
    """Pod IPs outside the sandbox's bridge subnet: these pods are API objects only."""
    return f"10.{200 + i // 62500}.{i // 250 % 250}.{i % 250 + 1}"


def node_of(i: int, nodes: int) -> str:
    return f"scale-node-{i % nodes}"


@dataclass
class Fleet:
    """A running fleet.py: one command line in, one JSON answer line out."""

    process: asyncio.subprocess.Process

    async def ask(self, command: str, timeout: float = 60.0) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"{command}\n".encode())
        await self.process.stdin.drain()
        async with asyncio.timeout(timeout):
            line = await self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the fleet exited ({await self.process.wait()}) on {command!r}")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"the fleet answered {answer['error']}")
        return answer

    async def stop(self, timeout: float = 30.0) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(b"stop\n")
        await self.process.stdin.drain()
        async with asyncio.timeout(timeout):
            code = await self.process.wait()
        if code != 0:
            raise RuntimeError(f"the fleet exited {code}")


@contextlib.asynccontextmanager
async def fleet(server: Server, pki: Pki, nodes: list[str], log: Path) -> AsyncIterator[Fleet]:
    """fleet.py streaming ``nodes`` from ``server``; stopped at exit whatever happens."""
    cert, key, ca = pki.paths("agent")
    job = {"address": server.address, "server_name": SERVER_NAME, "cert": cert, "key": key, "ca": ca,
           "nodes": nodes}
    with log.open("ab") as stderr:
        async with spawned([sys.executable, str(FLEET)], stdin=asyncio.subprocess.PIPE,
                           stdout=asyncio.subprocess.PIPE, stderr=stderr, line_limit=REPORT_LIMIT) as process:
            assert process.stdin is not None
            process.stdin.write((json.dumps(job) + "\n").encode())
            await process.stdin.drain()
            running = Fleet(process)
            try:
                yield running
            except BaseException:
                _print_tail(log)
                raise
            await running.stop()


def _print_tail(log: Path) -> None:
    print(f"--- {log}:\n{log.read_text(errors='replace')[-3000:]}", file=sys.stderr, flush=True)


async def established_to(port: int) -> int:
    """TCP connections open to ``port`` on this host, counted from the clients' side."""
    ss = await asyncio.create_subprocess_exec("ss", "-Htn", "state", "established", f"( dport = :{port} )",
                                              stdout=asyncio.subprocess.PIPE)
    async with asyncio.timeout(10):
        out, _ = await ss.communicate()
    return len(out.splitlines())


async def _write_ips(world: World, pods: int, rate: float) -> tuple[list[float], list[float]]:
    """Every pod's status (Running, its IP) written at ``rate`` per second, steadily; returns each
    write's send and acknowledgement times (monotonic)."""
    sent, acked = [math.nan] * pods, [math.nan] * pods
    gate = asyncio.Semaphore(WRITERS)

    async def write(i: int) -> None:
        try:
            namespace, name = pod_ref(i)
            sent[i] = time.monotonic()
            await set_running(world, name, namespace, pod_ip(i))
            acked[i] = time.monotonic()
        finally:
            gate.release()

    start = time.monotonic()
    async with asyncio.TaskGroup() as writes:
        for i in range(pods):
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))  # the pace of the load itself
            await gate.acquire()
            writes.create_task(write(i))
    return sent, acked


async def _once(ctx: Context, result: ScenarioResult, pods: int, nodes: int, run: int) -> dict[str, float]:
    workdir = ctx.workdir / f"{pods}x{nodes}-{run}"
    workdir.mkdir()
    async with bench_world() as world:
        created = time.monotonic()
        await _create_pods(world, pods, nodes)
        out: dict[str, float] = {"create_s": time.monotonic() - created}
        pki = await certs_init(workdir, result)
        server = await _prefetch(world, workdir, result, pki, pods=pods, out=out)
        async with fleet(server, pki, [f"scale-node-{j}" for j in range(nodes)], workdir / "fleet.log") as agents:
            await _connect(agents, server, nodes, out)
            idle, before = ctx.profile.scale_idle_seconds, cpu_seconds(server.process.pid)
            await asyncio.sleep(idle)  # the measured interval itself, not a synchronisation
            out["idle_cpu_ms_per_s"] = (cpu_seconds(server.process.pid) - before) * 1000 / idle
            sent, acked, report = await _ip_round(world, agents, server, pods, rate=ctx.profile.scale_ip_rate, out=out)
        out["rss_after_round_mb"] = rss_mb(server.process.pid)
        out["peak_rss_mb"] = _peak_mb(server.process.pid)
    return out | _delays(sent, acked, report, pods, nodes)


async def _create_pods(world: World, pods: int, nodes: int) -> None:
    for n in range(NAMESPACES):
        await world.ensure_namespace(f"scale-{n}")
    await bounded([create_pod(world, pod_ref(i)[1], pod_ref(i)[0], f"role-{i % ROLES}", node_of(i, nodes))
                   for i in range(pods)], limit=CREATORS)


async def _prefetch(world: World, workdir: Path, result: ScenarioResult, pki: Pki, *, pods: int,
                    out: dict[str, float]) -> Server:
    """The server, started once every pod exists, until it has prefetched every identity."""
    started = time.monotonic()
    server = await start_server(world, workdir, result, pki, "--log-level", "warning", "--fetchers", str(FETCHERS))
    out["ready_s"] = time.monotonic() - started

    async def prefetched() -> bool:
        return metric(await server.process.metrics(), "podiam_credential_cache_identities") >= pods

    await wait_for(prefetched, 120 + pods * 0.1, f"{pods} identities prefetched", interval=0.05)
    out["prefetch_s"] = time.monotonic() - started
    out["rss_prefetched_mb"] = rss_mb(server.process.pid)
    out["moto_calls"] = len(await world.sts.assume_role_calls())
    out["server_calls"] = metric(await server.process.metrics(), "podiam_sts_assume_role_calls_total")
    return server


async def _connect(agents: Fleet, server: Server, nodes: int, out: dict[str, float]) -> None:
    """Until every simulated agent has applied its first snapshot."""
    connecting = time.monotonic()

    async def synced() -> bool:
        return (await agents.ask("status"))["synced"] == nodes

    await wait_for(synced, 60 + nodes * 0.5, f"{nodes} simulated agents' first snapshots", interval=0.05)
    out["fleet_sync_s"] = time.monotonic() - connecting
    out["streams"] = metric(await server.process.metrics(), "podiam_server_streams")
    out["connections"] = await established_to(server.grpc_port)


async def _ip_round(world: World, agents: Fleet, server: Server, pods: int, *, rate: float,
                    out: dict[str, float]) -> tuple[list[float], list[float], dict[str, Any]]:
    """Every pod's IP written at ``rate``, until every one is known to an agent; the server's CPU over it."""
    pid = server.process.pid
    cpu, fleet_cpu, started = cpu_seconds(pid), cpu_seconds(agents.process.pid), time.monotonic()
    writer = asyncio.create_task(_write_ips(world, pods, rate), name="scale-ip-writer")
    try:
        async def all_known() -> bool:
            if writer.done() and writer.exception() is not None:
                raise RuntimeError("writing the pod IPs failed") from writer.exception()
            return writer.done() and (await agents.ask("status"))["known"] >= pods

        await wait_for(all_known, 120 + pods / rate * 2, f"{pods} pod IPs at their agents", interval=0.05)
        sent, acked = writer.result()
    finally:
        writer.cancel()
    window = time.monotonic() - started
    cpu = cpu_seconds(pid) - cpu
    out["fleet_cpu_s"] = cpu_seconds(agents.process.pid) - fleet_cpu
    out["round_window_s"] = window
    out["cpu_ms_per_change"] = cpu * 1000 / pods
    out["cpu_ms_per_change_net"] = (cpu - out["idle_cpu_ms_per_s"] / 1000 * window) * 1000 / pods
    out["achieved_rate"] = (pods - 1) / (max(sent) - min(sent)) if pods > 1 else math.nan
    return sent, acked, await agents.ask("report")


def _delays(sent: list[float], acked: list[float], report: dict[str, Any], pods: int,
            nodes: int) -> dict[str, float]:
    """Each pod's delay from its status write to the first agent knowing its IP, and which agent."""
    delays, misrouted = [], 0
    for i in range(pods):
        node, seen_at = report["seen"].get(pod_ip(i), (None, math.nan))
        if node is not None and node != node_of(i, nodes):
            misrouted += 1
        delays.append((seen_at - sent[i]) * 1000)
    known = [d for d in delays if not math.isnan(d)]
    writes = [(a - s) * 1000 for s, a in zip(sent, acked, strict=True)]
    return {
        "delay_p50_ms": percentile(known, 50), "delay_p99_ms": percentile(known, 99),
        "delay_max_ms": max(known, default=math.nan),
        "missing": pods - len(known), "misrouted": misrouted, "servable": report["servable"],
        "stream_failures": report["stream_failures"], "rpcs": report["rpcs"],
        "write_p50_ms": percentile(writes, 50), "write_p99_ms": percentile(writes, 99),
    }


def _peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return math.nan


async def run(ctx: Context, result: ScenarioResult) -> None:
    p = ctx.profile
    result.command(f"{sys.executable} {FLEET}  # stdin: the job (server address, agent certificate, the M nodes)")
    for pods, nodes in p.scale_sizes:
        runs = [await _once(ctx, result, pods, nodes, r) for r in range(p.scale_runs)]
        _report(result, runs, pods, nodes, ctx)
    result.simplifications += [
        f"Each size is a fresh sandbox (API emulator, moto) per run. N pods are created in the API bound to M "
        f"nodes (spec.nodeName scale-node-(i mod M), no IP yet), {CREATORS} creations in flight, over {NAMESPACES} "
        f"namespaces, with {ROLES} roles; the session name is the pod's namespace.name (the default), so each "
        "pod is an identity of its own: N identities, N AssumeRole calls to prefetch.",
        f"Then one `podiam server` process (--fetchers {FETCHERS}, --log-level warning, certificates from `podiam "
        "certs init`) starts against the emulator and moto; prefetch = from its process start until "
        "podiam_credential_cache_identities (its /metrics, polled every 50 ms) reaches N. moto's AssumeRole "
        "count is read once after that.",
        "M simulated agents run in one separate process (benchmarks/fleet.py, uvloop): each is podiam's own "
        "ServerStream (a WatchNode stream over mutual TLS with the agent certificate, one gRPC channel and TCP "
        "connection per node, all with the same certificate) feeding podiam's own Mirror and PodIndex; only the "
        "metadata endpoint and the iptables rule are missing. A pod index listener stamps when each IP first "
        "becomes resolvable on its node (time.monotonic, one clock for both processes).",
        f"The IP round: every pod's status (Running, podIP) is patched through the API at {p.scale_ip_rate:g} "
        f"pods/s, steadily (a new write every 1/{p.scale_ip_rate:g} s, at most {WRITERS} in flight). Delay = from "
        "just before the status patch is sent to its node's agent having the IP; it includes the emulator's write "
        "time (reported apart as status_write), the watch event to the server, the server's feed, gRPC and the "
        "agent's mirror. Each pod change makes two messages to its agent: the pod, then its credentials.",
        "CPU per pod change = the server process's user+system CPU (/proc, 10 ms ticks) over the round (first "
        "write to the last IP known by the fleet) / N; _net subtracts the idle rate measured just before with "
        "every agent connected. Everything shares the 2 cores: server, emulator, moto, the fleet and the writer.",
    ]


def _report(result: ScenarioResult, runs: list[dict[str, float]], pods: int, nodes: int, ctx: Context) -> None:
    p = ctx.profile
    size = f"pods_{pods}_nodes_{nodes}"

    def add(name: str, unit: str, key: str, note: str = "") -> None:
        result.add(f"{size}.{name}", unit, [r[key] for r in runs], note)

    add("create_pods_s", "s", "create_s", f"{pods} pods created in the API, bound, no IP (not the server's time)")
    add("server_ready_s", "s", "ready_s", "server process start to /readyz 200 (every pod listed)")
    add("prefetch_all_s", "s", "prefetch_s",
        f"server process start to podiam_credential_cache_identities >= {pods} (every identity prefetched)")
    add("assume_role_calls_moto", "calls", "moto_calls",
        f"moto's AssumeRole count after the prefetch, {pods} identities")
    add("assume_role_calls_server", "calls", "server_calls", "podiam_sts_assume_role_calls_total of the server")
    add("rss_prefetched_mb", "MiB", "rss_prefetched_mb", "server VmRSS once every identity is prefetched, no agent yet")
    add("rss_after_round_mb", "MiB", "rss_after_round_mb",
        f"server VmRSS after the IP round, {nodes} agents streaming, {pods} pods active")
    add("peak_rss_mb", "MiB", "peak_rss_mb", "server VmHWM at the end")
    add("fleet_sync_s", "s", "fleet_sync_s", f"fleet start to all {nodes} first snapshots applied")
    add("server_streams", "streams", "streams", "podiam_server_streams once every agent is synced")
    add("tcp_connections", "connections", "connections", "established TCP connections to the server's gRPC port")
    add("idle_server_cpu_ms_per_s", "ms/s", "idle_cpu_ms_per_s",
        f"server CPU with {nodes} streams open and nothing changing, over {p.scale_idle_seconds:g} s")
    add("ip_to_agent.p50_ms", "ms", "delay_p50_ms", f"over all {pods} pods: status patch sent -> its agent has the IP")
    add("ip_to_agent.p99_ms", "ms", "delay_p99_ms")
    add("ip_to_agent.max_ms", "ms", "delay_max_ms")
    add("ip_writes_per_s", "writes/s", "achieved_rate", f"the pace achieved (asked: {p.scale_ip_rate:g}/s)")
    add("status_write.p50_ms", "ms", "write_p50_ms", "the emulator's answer time to one status patch")
    add("status_write.p99_ms", "ms", "write_p99_ms")
    add("server_cpu_ms_per_pod_change", "ms", "cpu_ms_per_change", "server user+system CPU over the round / pods")
    add("server_cpu_ms_per_pod_change_net", "ms", "cpu_ms_per_change_net", "the same minus the idle rate")
    add("fleet_cpu_s", "s", "fleet_cpu_s", f"the {nodes} simulated agents' process, over the round")
    add("ips_missing", "pods", "missing", "IPs no agent knew at the end (0 expected)")
    add("ips_misrouted", "pods", "misrouted", "IPs first known by another node's agent (0 expected)")
    add("servable_pods", "pods", "servable", f"pods whose agent holds their credentials at the end ({pods} expected)")
    add("stream_failures", "failures", "stream_failures", "podiam_remote_stream_failures_total over the fleet")
    add("watch_node_rpcs", "RPCs", "rpcs", f"podiam_remote_rpcs_total over the fleet ({nodes} expected: one each)")
    rss = result.figures[f"{size}.rss_after_round_mb"]
    if (pods, nodes) == RSS_TARGET_SIZE:
        result.targets.append(Target(
            f"server RSS, {pods:,} pods on {nodes} nodes (issue 11)", f"< {RSS_TARGET_MB:g} MB (judged as MiB)",
            f"{rss.median:.1f} MiB after the IP round (max {rss.max:.1f}; peak "
            f"{result.figures[f'{size}.peak_rss_mb'].max:.1f} MiB)", rss.max < RSS_TARGET_MB))
    elif (pods, nodes) == max(p.scale_sizes) and RSS_TARGET_SIZE not in p.scale_sizes:
        result.targets.append(Target(
            f"server RSS, {RSS_TARGET_SIZE[0]:,} pods on {RSS_TARGET_SIZE[1]} nodes (issue 11)",
            f"< {RSS_TARGET_MB:g} MB", f"not run at that size; {rss.median:.1f} MiB with {pods} pods on {nodes} nodes",
            None))
