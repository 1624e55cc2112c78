"""
2. STS economy: N pods x M roles on one node over a simulated hour (the agent's session
durations divided by a time scale), counting AssumeRole calls at moto: per identity per
refresh window, on the request path for prefetched pods, and under a burst of concurrent
first requests for one identity (single-flight).
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
from collections import defaultdict
from dataclasses import dataclass

from benchmarks.common import BENCH_DIR, ScenarioResult, Target, agent_has_flag, metric, percentile, wait_for
from benchmarks.node import (
    Agent,
    bench_world,
    create_pod,
    podclient,
    run_podclient,
    set_running,
    start_agent,
    stop_agent,
)
from benchmarks.profiles import Context
from podiam_sandbox.world import World, WorldPod

KEY = "sts_economy"
TITLE = "2. STS economy (AssumeRole calls: per refresh window, on the request path, single-flight)"
SCALED_AGENT = BENCH_DIR / "scaled_agent.py"
SESSION, REFRESH = 3600.0, 1800.0
"""The agent's defaults (1h sessions refreshed when 30m remain), run on the scaled clock."""
POLL = 1.0
"""Seconds (real) between two readings of moto's calls during the simulated hour."""


async def run(ctx: Context, result: ScenarioResult) -> None:
    async with bench_world() as world:
        await simulated_hour(world, ctx, result)
        await single_flight(world, ctx, result)


async def _calls(world: World) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for call in await world.sts.assume_role_calls():
        counts[call.session_name] += 1
    return counts


async def simulated_hour(world: World, ctx: Context, result: ScenarioResult) -> None:
    p = ctx.profile
    k = p.time_scale
    # botocore refuses DurationSeconds < 900 before sending; its documented config-file switch turns that off.
    aws_config = ctx.workdir / "aws-config"
    aws_config.write_text("[default]\nparameter_validation = false\n")
    agent = await start_agent(world, "--log-level", "warning", "--session-duration", "1h",
                              "--session-refresh", "30m",
                              argv_prefix=[sys.executable, str(SCALED_AGENT), str(k), "agent"], log_dir=ctx.workdir,
                              env={"AWS_CONFIG_FILE": str(aws_config)})
    result.command(agent.process.argv)
    pods: list[WorldPod] = []
    for r in range(p.roles):
        for i in range(p.pods_per_role):
            pods.append(await world.add_pod(f"app-{r}-{i}", f"team-{r}", role=f"role-{r}"))
    n = len(pods)
    sessions = [f"{pod.namespace}.{pod.name}" for pod in pods]

    async def all_prefetched() -> bool:
        counts = await _calls(world)
        return all(counts[s] >= 1 for s in sessions)

    prefetch_wait = await wait_for(all_prefetched, 30, "every pod's prefetch")
    first = await _calls(world)
    result.add("prefetch.calls_per_identity", "calls", [first[s] for s in sessions],
               "AssumeRole calls per pod identity before any request; one value per identity")
    result.add("prefetch.seconds_after_last_pod", "s", [prefetch_wait],
               "from the last pod's registration to every identity cached (moto's count, polled)")

    hour = await _timeline(world, agent, pods, sessions=sessions, first=first, ctx=ctx)
    await stop_agent(agent)
    seen, misses, sim_minutes = hour.seen, hour.misses, hour.sim_minutes
    flows, failed = hour.flows, hour.failed
    result.add("request_path.cache_misses", "requests", [misses],
               f"requests of prefetched pods that waited for STS, over {hour.rounds} rounds of the SDK flow from "
               f"every pod ({flows} flows)")
    result.add("request_path.failed_flows", "flows", [failed])
    per_identity = [len(seen[s]) for s in sessions]
    result.add("hour.calls_per_identity", "calls", per_identity,
               f"AssumeRole calls per pod identity over {sim_minutes:.1f} simulated minutes, prefetch included; "
               "one value per identity")
    total = sum(per_identity)
    result.add("hour.calls_total", "calls", [total], f"{n} pods: {p.pods_per_role} per role x {p.roles} roles")
    result.add("hour.calls_per_role", "calls", [total / p.roles])
    intervals = [(b - a) * k / 60.0 for times in seen.values() for a, b in itertools.pairwise(times)]
    lo, hi = (SESSION - REFRESH * 1.1) / 60.0, (SESSION - REFRESH) / 60.0
    if intervals:
        result.add("hour.refresh_interval_sim_minutes", "min", intervals,
                   f"between consecutive calls of one identity; expected {lo:g}-{hi:g} (refresh at 30m before expiry,"
                   f" up to 10% early), +-{POLL * k / 60:.2f} min reading resolution; one value per interval")
        result.add("hour.calls_per_identity_per_hour", "calls/h", [60.0 / i for i in intervals],
                   "steady state, 60 / interval")
    tolerance = 2 * POLL * k / 60.0
    one_per_window = all(i >= lo - tolerance for i in intervals)
    result.targets += [
        Target("zero STS calls on the request path for prefetched pods", "0 requests waiting for STS",
               f"{misses:g} in {flows} SDK flows ({failed} failed)", misses == 0 and failed == 0),
        Target("one AssumeRole per identity per refresh window",
               f"consecutive calls of an identity >= {lo:g} simulated min apart",
               (f"min {min(intervals):.1f}, median {percentile(intervals, 50):.1f} simulated min over "
                f"{len(intervals)} intervals" if intervals else
                f"no refresh within {sim_minutes:.1f} simulated minutes (smoke)") +
               f"; prefetch: {max(first[s] for s in sessions)} call(s) per identity",
               (one_per_window and all(first[s] == 1 for s in sessions)) if intervals else None),
    ]
    result.simplifications += [
        f"Time: the agent runs with its default `--session-duration 1h --session-refresh 30m`, divided by {k} after "
        f"the CLI's validation (benchmarks/scaled_agent.py): 1 real second = {k} simulated seconds, the simulated "
        f"hour lasts {3600 / k:g} s. moto accepts the {SESSION / k:g} s DurationSeconds (real STS's minimum is "
        "900; the agent's botocore gets `parameter_validation = false` from an AWS config file to send it). The "
        f"cache's 60 s expiry margin is divided too ({60 / k:g} s); its 0.7 s request wait is not scaled.",
        f"{n} pods ({p.pods_per_role} per role x {p.roles} roles), each in its own network namespace; every "
        f"{p.round_every_sim_minutes:g} simulated minutes each pod runs the SDK flow (PUT token, GET role list, "
        "GET credentials) through the DNAT path.",
        "podiam keys the cache by identity (role, session name `namespace.pod`, ExternalId), so the calls scale "
        "with pods, not roles: N pods of one role make N AssumeRole calls per window (kube2iam shares one session "
        "per role).",
        f"Run once (the figures are counts, distributed over identities); {sim_minutes:.1f} simulated minutes.",
    ]


@dataclass
class Hour:
    seen: dict[str, list[float]]
    """Per session name, when each AssumeRole call was first seen (real seconds after the prefetch)."""
    misses: float
    flows: int
    failed: int
    rounds: int
    sim_minutes: float


async def _timeline(world: World, agent: Agent, pods: list[WorldPod], *, sessions: list[str], first: dict[str, int],
                    ctx: Context) -> Hour:
    """The simulated hour: request rounds from every pod, moto's calls read every POLL seconds."""
    p = ctx.profile
    k = p.time_scale
    job = {"mode": "flows", "pods": [{"netns": pod.net.netns} for pod in pods]}
    metrics_before = await agent.process.metrics()
    sim_seconds = p.sim_minutes * 60.0 / k
    round_every = p.round_every_sim_minutes * 60.0 / k
    seen: dict[str, list[float]] = {s: [0.0] * first[s] for s in sessions}
    failed = flows = rounds = 0
    next_round = 0.0
    t0 = time.monotonic()
    while True:
        now = time.monotonic() - t0
        if next_round <= now <= sim_seconds:
            answer = await run_podclient(job)
            flows += len(answer["flows"])
            failed += sum(not f["ok"] for f in answer["flows"])
            rounds += 1
            next_round += round_every
        counts = await _calls(world)
        stamp = time.monotonic() - t0
        for s in sessions:
            seen[s] += [stamp] * (counts[s] - len(seen[s]))
        if stamp > sim_seconds:
            break
        await asyncio.sleep(max(0.0, min(POLL, next_round - (time.monotonic() - t0))))  # the simulation's pacing
    metrics_after = await agent.process.metrics()
    misses = (metric(metrics_after, "podiam_credential_cache_misses_total")
              - metric(metrics_before, "podiam_credential_cache_misses_total"))
    return Hour(seen, misses, flows, failed, rounds, (time.monotonic() - t0) * k / 60.0)


async def single_flight(world: World, ctx: Context, result: ScenarioResult) -> None:
    p = ctx.profile
    # 1,000 requests from one pod: the per-pod rate limit (when the agent has one) would answer most with 429.
    unlimited = ["--pod-rate-limit", "0"] if await agent_has_flag("--pod-rate-limit") else []
    if await agent_has_flag("--max-connections-per-ip"):  # ... and the per-IP connection cap would refuse them
        unlimited += ["--max-connections-per-ip", str(p.burst + 100)]
    agent = await start_agent(world, "--log-level", "warning", "--pod-wait", "10s", *unlimited)
    result.command(agent.process.argv)
    calls: list[float] = []
    ok: list[float] = []
    p50: list[float] = []
    p99: list[float] = []
    for i in range(p.runs):
        name, namespace, role = f"burst-{i}", "burst", f"burst-role-{i}"
        pod = await world.add_pod(name, namespace, register=False)
        await create_pod(world, name, namespace, role)  # bound to the node, no IP yet: not indexed
        job = {"mode": "burst", "pods": [{"netns": pod.net.netns}], "count": p.burst, "role": role,
               "timeout": 30.0}
        async with podclient(job) as client:
            await client.expect("sent")  # every request is on the wire, waiting for its pod
            await set_running(world, name, namespace, pod.ip)
            answer = await client.result()
        statuses = answer["statuses"]
        calls.append(len([c for c in await world.sts.assume_role_calls() if c.session_name == f"{namespace}.{name}"]))
        ok.append(sum(s == 200 for s in statuses))
        p50.append(percentile(answer["seconds"], 50) * 1000)
        p99.append(percentile(answer["seconds"], 99) * 1000)
    await stop_agent(agent)
    result.add("single_flight.assume_role_calls", "calls", calls,
               f"for {p.burst} concurrent first requests of one identity")
    result.add("single_flight.ok_responses", "responses", ok, f"of {p.burst}")
    result.add("single_flight.p50_ms", "ms", p50, "from all requests sent to each answer (includes the pod's "
               "status update and the watch event)")
    result.add("single_flight.p99_ms", "ms", p99)
    result.targets.append(Target(f"single-flight under {p.burst} concurrent first requests", "1 AssumeRole call",
                                 f"{max(calls):g} call(s), {min(ok):g}/{p.burst} answered 200",
                                 max(calls) == 1 and min(ok) == p.burst))
    result.simplifications.append(
        f"Single-flight: {p.burst} connections from one pod's network namespace send GET .../security-credentials/"
        "ROLE (one IMDSv2 token) while the pod is bound to the node without an IP; then its status gets the IP. "
        "The agent runs with `--pod-wait 10s` so that the requests wait for the watch instead of answering 404 "
        "(and `--pod-rate-limit 0` when it has that flag); "
        "each is a first request for an identity with nothing cached. A new pod (identity) per run.")
