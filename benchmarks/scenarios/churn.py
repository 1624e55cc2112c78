"""
6. Connection churn: SDKs open a new connection for every metadata call. wrk with
``Connection: close`` from a pod's network namespace, round after round, against the agent
and nginx (each behind its own DNAT rule), interleaved: requests/s per round, the spread of
the rounds (min/median), and the pod's TIME_WAIT sockets after each round. The side that
sends the first FIN keeps the TIME_WAIT; when that is the pod, its ephemeral ports run out.

With ``PODIAM_BENCH_BASELINE=/path/to/other/src`` a second agent from that source tree (an
earlier commit, say) runs the same rounds side by side, behind a third DNAT rule.
"""

from __future__ import annotations

import contextlib
import os

from benchmarks.common import ScenarioResult, Target, agent_has_flag, pairwise
from benchmarks.http_load import dnat_rule, nginx_serving, pod_time_wait, wrk
from benchmarks.node import BASELINE_ENV, bench_world, imds_token, served_credentials, start_agent
from benchmarks.profiles import Context
from podiam_sandbox.world import World, free_port

KEY = "churn"
TITLE = "6. Connection churn (wrk with Connection: close, in rounds, agent vs nginx)"
ROLE = "churn-role"
CREDS = "/latest/meta-data/iam/security-credentials/"
AGENT_PORT, NGINX_PORT, BASELINE_PORT = 80, 81, 83
"""Ports of 169.254.169.254 as the pod sees them: the agent, nginx, the baseline agent."""
STEADY = 0.7
"""The target: no round below this fraction of the median round."""


async def run(ctx: Context, result: ScenarioResult) -> None:
    async with bench_world() as world:
        await _run(world, ctx, result)


async def _run(world: World, ctx: Context, result: ScenarioResult) -> None:
    p = ctx.profile
    flags = ["--log-level", "warning"]
    if await agent_has_flag("--pod-rate-limit"):
        flags += ["--pod-rate-limit", "0"]  # thousands of requests/s from one pod are the point here
    agent = await start_agent(world, *flags)
    result.command(agent.process.argv)
    pod = await world.add_pod("churn", "bench", role=ROLE)
    path = CREDS + ROLE
    token, body = await served_credentials(pod, path)
    gateway = world.net.gateway_ip
    nginx_port = free_port()
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(
            nginx_serving(body, path, host=gateway, port=nginx_port, workdir=ctx.workdir, result=result))
        await stack.enter_async_context(
            dnat_rule(world.net.bridge_name, NGINX_PORT, host=gateway, port=nginx_port, result=result))
        targets = {"agent": (AGENT_PORT, token), "nginx": (NGINX_PORT, token)}
        baseline = os.environ.get(BASELINE_ENV)
        if baseline:
            # The same flags, the other source tree: PYTHONPATH wins over the installed podiam.
            other = await start_agent(world, *flags, iptables=False, env={"PYTHONPATH": baseline})
            result.command(f"PYTHONPATH={baseline} " + " ".join(other.process.argv))
            await stack.enter_async_context(
                dnat_rule(world.net.bridge_name, BASELINE_PORT, host=gateway, port=other.app_port, result=result))
            targets["baseline"] = (BASELINE_PORT, await imds_token(pod, BASELINE_PORT))
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
        for _ in range(p.churn_rounds):
            for name, (port, tok) in targets.items():  # interleaved: drift and leftovers hit all alike
                summary = await wrk(pod.net.netns, f"http://169.254.169.254:{port}{path}", tok,
                                    threads=p.wrk_threads, connections=p.wrk_connections, seconds=p.churn_seconds,
                                    workdir=ctx.workdir, result=result, headers=("Connection: close",))
                summary["time_wait"] = await pod_time_wait(pod.net.netns, port)
                rounds[name].append(summary)
    _report(rounds, ctx, result, baseline)


def _report(rounds: dict[str, list[dict[str, float]]], ctx: Context, result: ScenarioResult,
            baseline: str | None) -> None:
    p = ctx.profile
    for name, rs in rounds.items():
        rps = result.add(f"{name}.requests_per_s", "req/s", [r["requests"] / (r["duration_us"] / 1e6) for r in rs],
                         "one value per round")
        result.add(f"{name}.p50_ms", "ms", [r["p50_us"] / 1000 for r in rs])
        result.add(f"{name}.p99_ms", "ms", [r["p99_us"] / 1000 for r in rs])
        result.add(f"{name}.pod_time_wait", "sockets", [r["time_wait"] for r in rs],
                   "the pod's TIME_WAIT sockets towards this server right after the round (they live 60 s)")
        result.add(f"{name}.errors", "count", [r["connect_errors"] + r["read_errors"] + r["write_errors"]
                                               + r["status_errors"] + r["timeouts"] for r in rs],
                   "socket errors + non-2xx + timeouts")
        result.ratio(f"{name}.min/median.requests_per_s", [rps.min / rps.median if rps.median else float("nan")],
                     "the slowest round against the median round")
    agent = result.figures["agent.requests_per_s"]
    result.ratio("agent/nginx.requests_per_s", pairwise(agent.values, result.figures["nginx.requests_per_s"].values))
    if "baseline" in rounds:
        result.ratio("agent/baseline.requests_per_s",
                     pairwise(agent.values, result.figures["baseline.requests_per_s"].values))
    steady = result.ratios["agent.min/median.requests_per_s"].median
    result.targets += [
        Target("churn: every round's requests/s (Connection: close)", f">= {STEADY:.0%} of the median round",
               f"slowest round {steady:.0%} of the median ({agent.min:,.0f} vs {agent.median:,.0f} req/s)",
               steady >= STEADY),
        Target("churn: TIME_WAIT on the pod's side", "stays with the server (as nginx)",
               f"{result.figures['agent.pod_time_wait'].max:,.0f} at most after an agent round, "
               f"{result.figures['nginx.pod_time_wait'].max:,.0f} after an nginx round", None),
    ]
    result.simplifications += [
        f"wrk -t{p.wrk_threads} -c{p.wrk_connections} -d{p.churn_seconds:g}s -H 'Connection: close', "
        f"{p.churn_rounds} rounds per server, interleaved (agent, nginx{', baseline' if baseline else ''}); "
        "each request is the SDK's credential GET with an IMDSv2 token, on a new connection.",
        "TIME_WAIT is counted in the pod's network namespace with `ss -Htan state time-wait '( dport = :PORT )'` "
        "right after each round: sockets of the last 60 s towards that server, earlier rounds included.",
        "nginx and the agent are each behind their own DNAT rule (169.254.169.254:81 and :80).",
    ]
    if baseline:
        result.simplifications.append(f"baseline: a second agent with PYTHONPATH={baseline}, without --iptables, "
                                      f"behind its own DNAT rule (169.254.169.254:{BASELINE_PORT}).")
