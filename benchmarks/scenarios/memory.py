"""
5. Memory and start: the agent's RSS and time to ready with 0, 110 and 500 pods on its
node, and its RSS over a soak at a steady request rate, beside a split-mode server and agent
of the same node (their RSS with those pods, and over the same window).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time

from benchmarks.common import (
    ScenarioResult,
    Target,
    agent_env,
    http_get,
    metric,
    percentile,
    rss_mb,
    spawned,
    wait_for,
)
from benchmarks.node import API_POD_NAMESPACES, API_POD_ROLES, api_pod, bench_world, bounded, podclient, start_agent
from benchmarks.profiles import Context
from benchmarks.split import start_split
from podiam_sandbox.world import World, free_port

KEY = "memory"
TITLE = "5. Memory and start (RSS and time to ready by pods on the node; RSS over a soak)"
RSS_TARGET_MB = 80.0
"""The agent's, in MB (10^6 bytes): the issue's unit."""
SPLIT_RSS_TARGET_MB = 60.0
"""The split-mode agent's, in MB."""
MIB_MB = 1.048576
"""MB per MiB: VmRSS is read in MiB, the targets are in MB."""
FLAT_MB = 2.0
"""Soak: RSS growth after the warm-up up to this is reported as flat (Python's allocator moves by ~1 MB)."""


async def _metrics(port: int) -> str:
    status, body = await http_get(port, "/metrics")
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    return body


async def _start_once(world: World, ctx: Context, pods: int, run: int,
                      result: ScenarioResult) -> tuple[float, float, float, float]:
    """(seconds to /readyz 200, seconds to every identity cached, RSS MiB then, peak RSS MiB)."""
    metrics_port = free_port()
    argv = world.agent_argv("--log-level", "warning", app_port=free_port(),
                            metrics_port=metrics_port, iptables=True)
    result.command(argv)
    env = {"PATH": os.environ.get("PATH", os.defpath), "LANG": "C.UTF-8", **world.sts.client_env(), **agent_env()}
    log_path = ctx.workdir / f"agent-{pods}-{run}.log"
    with log_path.open("wb") as log:
        started = time.monotonic()
        async with spawned(argv, env=env, stdout=log, stderr=subprocess.STDOUT) as process:

            async def ready() -> bool:
                if process.returncode is not None:
                    raise RuntimeError(f"the agent exited {process.returncode}: {log_path.read_text()[-2000:]}")
                try:
                    return (await http_get(metrics_port, "/readyz"))[0] == 200
                except OSError:
                    return False

            await wait_for(ready, 60, "the agent to be ready", interval=0.005)
            ready_s = time.monotonic() - started

            async def cached() -> bool:
                return metric(await _metrics(metrics_port), "podiam_credential_cache_identities") >= pods

            await wait_for(cached, 120, f"{pods} identities cached")
            cached_s = time.monotonic() - started
            rss = rss_mb(process.pid)
            peak = _peak_mb(process.pid)
    return ready_s, cached_s, rss, peak


def _peak_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


async def run(ctx: Context, result: ScenarioResult) -> None:
    p = ctx.profile
    async with bench_world() as world:
        registered = 0
        for count in p.pod_counts:
            await bounded([api_pod(world, i) for i in range(registered, count)], limit=4)
            registered = count
            runs = [await _start_once(world, ctx, count, r, result) for r in range(p.runs)]
            result.add(f"start.pods_{count}.ready_s", "s", [r[0] for r in runs],
                       "process start to /readyz 200 (first pod list applied, rule installed)")
            result.add(f"start.pods_{count}.all_cached_s", "s", [r[1] for r in runs],
                       "process start to every pod's credentials cached (prefetch through moto)")
            result.add(f"start.pods_{count}.rss_mb", "MiB", [r[2] for r in runs], "VmRSS once every identity is cached")
            result.add(f"start.pods_{count}.peak_rss_mb", "MiB", [r[3] for r in runs], "VmHWM")
        await _soak(world, ctx, result, registered)
    top = max(p.pod_counts)
    rss_top = result.figures[f"start.pods_{top}.rss_mb"]
    peak = result.figures[f"start.pods_{top}.peak_rss_mb"].max
    empty = result.figures[f"start.pods_{min(p.pod_counts)}.rss_mb"].median
    result.targets.insert(0, Target(
        f"RSS with {top} pods on the node", f"< {RSS_TARGET_MB:g} MB",
        f"{rss_top.median:.1f} MiB = {rss_top.median * MIB_MB:.1f} MB (max {rss_top.max:.1f} MiB, peak "
        f"{peak:.1f} MiB; {empty:.1f} MiB with {min(p.pod_counts)} pods)",
        rss_top.max * MIB_MB < RSS_TARGET_MB if top >= 500 else None))
    result.simplifications += [
        f"Pods for the start figures are API objects only (Running, an IP outside the bridge subnet, "
        f"{API_POD_ROLES} roles over {API_POD_NAMESPACES} namespaces, one identity per pod), created with their "
        "status in one write; the agent lists them, indexes them and prefetches one AssumeRole per pod from moto.",
        f"Each start is a fresh `podiam agent --iptables` process (no warm page cache effects beyond the first); "
        f"{p.runs} start(s) per pod count, stopped with SIGTERM between.",
    ]


async def _soak(world: World, ctx: Context, result: ScenarioResult, idle: int) -> None:
    """The agent under the SDK flow, with a split-mode server and agent of the same node beside it
    in the same window (streaming the same pods, serving no load), RSS sampled for all three."""
    p = ctx.profile
    agent = await start_agent(world, "--log-level", "warning")
    result.command(agent.process.argv)
    pods = [await world.add_pod(f"soak-{i}", "soak", role=f"soak-role-{i}") for i in range(p.soak_pods)]
    split = await start_split(world, ctx.workdir, result, "--log-level", "warning")
    total = idle + len(pods)

    async def cached() -> bool:
        return (metric(await agent.process.metrics(), "podiam_credential_cache_identities") >= total
                and metric(await split.server.metrics(), "podiam_credential_cache_identities") >= total
                and metric(await split.agent.metrics(), "podiam_remote_mirror_pods") >= total)

    await wait_for(cached, 180, "every identity cached (agent, server) and mirrored (split agent) before the soak")
    procs = {"agent": agent.pid, "split_agent": split.agent.pid, "server": split.server.pid}
    result.add(f"split.pods_{total}.rss_mb", "MiB", [rss_mb(split.agent.pid)],
               f"the split-mode agent's VmRSS with {total} pods mirrored from its server")
    result.add(f"split.server_pods_{total}.rss_mb", "MiB", [rss_mb(split.server.pid)],
               f"the split-mode server's VmRSS with {total} pods (one node) cached")
    job = {"mode": "rate", "rate": p.soak_rate, "duration": p.soak_seconds, "timeout": 1.0,
           "pods": [{"netns": pod.net.netns} for pod in pods]}
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in procs}
    async with podclient(job) as client:
        started = time.monotonic()
        waiter = asyncio.create_task(client.result(p.soak_seconds + 120))
        try:
            while not waiter.done():
                for name, pid in procs.items():
                    samples[name].append((time.monotonic() - started, rss_mb(pid)))
                await asyncio.wait({waiter}, timeout=p.soak_sample_seconds)  # the sampling period
            answer = waiter.result()
        finally:
            waiter.cancel()
    flows = answer["flows"]
    failed = sum(not f["ok"] for f in flows)
    for name, points in samples.items():
        _soak_figures(result, ctx, points, prefix="soak" if name == "agent" else f"soak.{name}",
                      who=name.replace("_", " "), note=f"{len(flows)} flows, {failed} failed" if name == "agent"
                      else "beside the agent's soak, streaming the same pods, no requests")
    result.add("soak.flows", "flows", [len(flows)], f"SDK flows (3 requests each) at {p.soak_rate:g}/s")
    result.add("soak.failed_flows", "flows", [failed])
    ok = [f["seconds"] * 1000 for f in flows if f["ok"]]
    result.add("soak.flow_p50_ms", "ms", [percentile(ok, 50)])
    result.add("soak.flow_p99_ms", "ms", [percentile(ok, 99)])
    split_rss = result.figures[f"split.pods_{total}.rss_mb"].median
    result.targets.insert(0, Target(
        f"split-mode agent RSS with {total} pods on the node", f"< {SPLIT_RSS_TARGET_MB:g} MB",
        f"{split_rss:.1f} MiB = {split_rss * MIB_MB:.1f} MB (the server, one node: "
        f"{result.figures[f'split.server_pods_{total}.rss_mb'].median:.1f} MiB)",
        split_rss * MIB_MB < SPLIT_RSS_TARGET_MB if total >= 500 else None))
    result.simplifications.append(
        f"Soak: the agent with {idle} API-only pods and {len(pods)} pods in network namespaces; the {len(pods)} "
        f"pods run the SDK flow (PUT token, GET role list, GET credentials, a new connection each) at "
        f"{p.soak_rate:g} flows/s in total for {p.soak_seconds:g} s; VmRSS sampled every "
        f"{p.soak_sample_seconds:g} s. In the same window a `podiam server` and a split-mode agent of the same "
        f"node (benchmarks/split.py) hold the same {total} pods (the server prefetching and refreshing, the "
        "agent mirroring its stream) and are sampled too; they serve no requests (the DNAT rule is the "
        "agent's). One soak (not repeated); its samples make the median/min/max.")


def _soak_figures(result: ScenarioResult, ctx: Context, points: list[tuple[float, float]], *, prefix: str,
                  who: str, note: str) -> None:
    """RSS figures of one process over the soak, and its flatness target."""
    seconds, period = ctx.profile.soak_seconds, ctx.profile.soak_sample_seconds
    warm = [s for s in points if s[0] >= seconds * 0.1] or points
    growth = warm[-1][1] - warm[0][1]
    slope = _slope(warm) * 60.0
    rss = [s[1] for s in points]
    result.add(f"{prefix}.rss_mb", "MiB", rss, f"one value per sample, every {period:g} s")
    result.add(f"{prefix}.rss_start_mb", "MiB", [rss[0]], "the first sample")
    result.add(f"{prefix}.rss_end_mb", "MiB", [rss[-1]], "the last sample")
    result.add(f"{prefix}.rss_max_mb", "MiB", [max(rss)])
    result.add(f"{prefix}.rss_growth_mb", "MiB", [growth], "last sample minus the first after a 10% warm-up")
    result.add(f"{prefix}.rss_slope_mb_per_min", "MiB/min", [slope], "least squares over the samples after the warm-up")
    result.targets.append(Target(
        f"{who} RSS flat over a {seconds:g} s soak", f"growth after warm-up <= {FLAT_MB:g} MiB",
        f"{growth:+.2f} MiB ({slope:+.3f} MiB/min; {warm[0][1]:.1f} -> {warm[-1][1]:.1f} MiB, max "
        f"{max(rss):.1f} MiB), {note}",
        abs(growth) <= FLAT_MB if seconds >= 300 else None))


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (t, y) points, per second; 0 for fewer than two."""
    if len(points) < 2:
        return 0.0
    mt = sum(t for t, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    den = sum((t - mt) ** 2 for t, _ in points)
    return sum((t - mt) * (y - my) for t, y in points) / den if den else 0.0
