"""
7. Split mode vs agent mode: the cached credential GET through DNAT, with wrk from a pod's
network namespace as in scenario 1, against an agent-mode agent and a split-mode agent
(fed by a `podiam server` over mutual TLS) on the same node, side by side in one run; the
RPCs the split agent makes during the load (none expected); and both agents' RSS with the
same pods on the node.
"""

from __future__ import annotations

import asyncio
import contextlib

from benchmarks.common import (
    ScenarioResult,
    Target,
    cpu_seconds,
    metric,
    pairwise,
    rss_mb,
    side_threads_cpu_seconds,
    wait_for,
)
from benchmarks.http_load import add_wrk_figures, dnat_rule, wrk
from benchmarks.node import api_pod, bench_world, bounded, imds_token, served_credentials, start_agent
from benchmarks.profiles import Context
from benchmarks.split import start_split
from podiam_sandbox.world import World

KEY = "split_mode"
TITLE = "7. Split mode vs agent mode (cached credential GET through DNAT, wrk; agent RSS)"
ROLE = "bench-role"
CREDS = "/latest/meta-data/iam/security-credentials/"
SPLIT_METADATA_PORT = 83
"""The pod reaches the split agent at 169.254.169.254:83, DNAT'ed like the agent-mode agent's :80."""
RPS_RATIO_TARGET = 0.9
P99_RATIO_TARGET = 1.1


async def run(ctx: Context, result: ScenarioResult) -> None:
    async with bench_world() as world:
        await _run(world, ctx, result)


async def _run(world: World, ctx: Context, result: ScenarioResult) -> None:
    p = ctx.profile
    idle = max(p.pod_counts)
    await bounded([api_pod(world, i) for i in range(idle)], limit=4)
    pod = await world.add_pod("wrk", "bench", role=ROLE)
    flags = ("--log-level", "warning", "--pod-rate-limit", "0")
    agent = await start_agent(world, *flags)
    result.command(agent.process.argv)
    split = await start_split(world, ctx.workdir, result, *flags)
    pods = idle + 1

    async def settled() -> bool:  # every pod known and every identity fetched, in both modes
        agent_m, server_m, split_m = (await agent.process.metrics(), await split.server.metrics(),
                                      await split.agent.metrics())
        return (metric(agent_m, "podiam_credential_cache_identities") >= pods
                and metric(server_m, "podiam_credential_cache_identities") >= pods
                and metric(split_m, "podiam_remote_mirror_pods") >= pods)

    await wait_for(settled, 180, f"{pods} pods and identities in both modes")
    result.add("rss_at_start.agent_mb", "MiB", [rss_mb(agent.pid)], f"VmRSS with {pods} pods, before any load")
    result.add("rss_at_start.split_agent_mb", "MiB", [rss_mb(split.agent.pid)])
    result.add("rss_at_start.server_mb", "MiB", [rss_mb(split.server.pid)], "the server watches every node")
    await _idle_cpu(result, p.wrk_seconds / 2, agent=agent.pid, split_agent=split.agent.pid,
                    server=split.server.pid)

    path = CREDS + ROLE
    token, _ = await served_credentials(pod, path)
    gateway = world.net.gateway_ip
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(
            dnat_rule(world.net.bridge_name, SPLIT_METADATA_PORT, host=gateway, port=split.app_port, result=result))
        split_token = await imds_token(pod, SPLIT_METADATA_PORT)
        # name -> (server pid, URL, token); tokens are per agent process (HMAC key).
        targets = {
            "agent_dnat": (agent.pid, f"http://169.254.169.254{path}", token),
            "split_dnat": (split.agent.pid, f"http://169.254.169.254:{SPLIT_METADATA_PORT}{path}", split_token),
        }

        async def load(url: str, tok: str, seconds: float) -> dict[str, float]:
            return await wrk(pod.net.netns, url, tok, threads=p.wrk_threads, connections=p.wrk_connections,
                             seconds=seconds, workdir=ctx.workdir, result=result)

        for _, url, tok in targets.values() if p.wrk_warmup else ():
            await load(url, tok, p.wrk_warmup)
        rpcs_before = metric(await split.agent.metrics(), "podiam_remote_rpcs_total")
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
        rss: dict[str, list[float]] = {name: [] for name in targets}
        for i in range(p.runs):
            order = list(targets.items())
            for name, (pid, url, tok) in order if i % 2 == 0 else order[::-1]:  # ABBA: drift hits both alike
                before, side = cpu_seconds(pid), side_threads_cpu_seconds(pid)
                summary = await load(url, tok, p.wrk_seconds)
                summary["cpu_s"] = cpu_seconds(pid) - before
                summary["side_cpu_s"] = side_threads_cpu_seconds(pid) - side
                runs[name].append(summary)
                rss[name].append(rss_mb(pid))
        rpcs = metric(await split.agent.metrics(), "podiam_remote_rpcs_total") - rpcs_before
    _report(runs, rss, ctx, result, rpcs=rpcs, pods=pods)


async def _idle_cpu(result: ScenarioResult, seconds: float, **pids: int) -> None:
    """CPU each process uses while nothing is asked of it (timers, keepalive, pollers)."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    await asyncio.sleep(seconds)  # the measured interval itself, not a synchronisation
    for name, pid in pids.items():
        result.add(f"idle.{name}_cpu_ms_per_s", "ms/s", [(cpu_seconds(pid) - before[name]) * 1000 / seconds],
                   f"user+system over {seconds:g} s with no requests (10 ms ticks)")


def _report(runs: dict[str, list[dict[str, float]]], rss: dict[str, list[float]], ctx: Context,
            result: ScenarioResult, *, rpcs: float, pods: int) -> None:
    p = ctx.profile
    for name, rs in runs.items():
        add_wrk_figures(result, name, rs, cpu_of="the agent's process tree")
        result.add(f"{name}.side_threads_cpu_share", "%",
                   [100 * r["side_cpu_s"] / r["cpu_s"] if r["cpu_s"] else 0.0 for r in rs],
                   "CPU of the agent's threads other than the event loop's, of its whole CPU over the run")
        result.add(f"{name}.rss_mb", "MiB", rss[name], f"VmRSS after each load run, {pods} pods on the node")
    result.add("split_dnat.rpcs_during_load", "RPCs", [rpcs],
               "podiam_remote_rpcs_total of the split agent over every load run (WatchNode calls)")

    def fig(name: str) -> list[float]:
        return result.figures[name].values

    for q in ("requests_per_s", "p50_ms", "p99_ms", "p99.9_ms", "cpu_us_per_request", "rss_mb"):
        result.ratio(f"split_dnat/agent_dnat.{q}", pairwise(fig(f"split_dnat.{q}"), fig(f"agent_dnat.{q}")))
    rps = result.ratios["split_dnat/agent_dnat.requests_per_s"].median
    p99 = result.ratios["split_dnat/agent_dnat.p99_ms"].median
    full = p.runs >= 3 and p.wrk_seconds >= 5
    result.targets += [
        Target(f"split-mode hot path requests/s (DNAT, wrk -t{p.wrk_threads} -c{p.wrk_connections})",
               f">= {RPS_RATIO_TARGET:.0%} of agent mode's",
               f"{rps:.0%} of agent mode ({result.figures['split_dnat.requests_per_s'].median:,.0f} vs "
               f"{result.figures['agent_dnat.requests_per_s'].median:,.0f} req/s)",
               rps >= RPS_RATIO_TARGET if full else None),
        Target("split-mode hot path p99 latency (DNAT)", f"<= {P99_RATIO_TARGET:g}x agent mode's",
               f"{p99:.2f}x agent mode ({result.figures['split_dnat.p99_ms'].median:.2f} vs "
               f"{result.figures['agent_dnat.p99_ms'].median:.2f} ms)", p99 <= P99_RATIO_TARGET if full else None),
        Target("RPCs per metadata request (split mode)", "0",
               f"{rpcs:g} RPCs during {sum(r['requests'] for r in runs['split_dnat']):,.0f} requests", rpcs == 0),
        Target(f"split-mode agent RSS ({pods} pods on the node)", "below agent mode's",
               f"{result.figures['split_dnat.rss_mb'].median:.1f} MiB vs "
               f"{result.figures['agent_dnat.rss_mb'].median:.1f} MiB (agent mode); the server "
               f"{result.figures['rss_at_start.server_mb'].median:.1f} MiB",
               result.figures["split_dnat.rss_mb"].max < result.figures["agent_dnat.rss_mb"].min),
    ]
    errors = sum(sum(fig(f"{name}.errors")) for name in runs)
    if errors:
        result.simplifications.append(f"wrk reported {errors:g} errors in total (see the *.errors figures).")
    result.simplifications += [
        "wrk runs alternate ABBA (agent, split, split, agent, ...) so that a drift of the machine's load "
        "hits both modes alike; ratios pair the runs of one round.",
        "Both agents run on the node for the whole scenario, with the same flags but the split agent's "
        "(--server-address, --cert/--key/--ca from `podiam certs init`, --server-name podiam-server); the "
        f"agent-mode agent owns the DNAT rule of :80, the split agent is behind a rule of its own "
        f"(169.254.169.254:{SPLIT_METADATA_PORT}), the same kernel path. wrk as in scenario 1 "
        f"(-t{p.wrk_threads} -c{p.wrk_connections}, keep-alive, the SDK's credential GET with an IMDSv2 token).",
        "`podiam server` runs on the same machine, on loopback (one replica); it shares the cores with wrk and "
        "both agents, but it does no work per metadata request: the split agent answers from its mirror.",
        f"RSS: {pods - 1} API-only pods (one identity each) and the wrk pod on the node; the agent-mode agent "
        "watches them and caches their credentials, the split agent mirrors them from the stream.",
    ]
