"""
3. Start-up burst: many pods on one node become Running at once, and each asks for
credentials (the SDK flow, 1 s per request as the SDKs allow, no retry) the moment its
IP is set in the API: time to credentials and failures.
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks.common import ScenarioResult, Target, percentile
from benchmarks.node import PodClient, bench_world, bounded, create_pod, podclient, set_running, start_agent
from benchmarks.profiles import Context
from podiam_sandbox.netns import Pod

KEY = "startup_burst"
TITLE = "3. Start-up burst (pods become Running at once and ask at once)"
NAMESPACE = "burst"
ROLES = 10
KUBELET_CONCURRENCY = 4
"""Status updates in flight at once: what the API emulator absorbs (a kubelet's default QPS is 50)."""


async def run(ctx: Context, result: ScenarioResult) -> None:
    p = ctx.profile
    n = p.startup_pods
    p50, p99, worst, failures, sts_calls = [], [], [], [], []
    writes: list[float] = []
    errors: dict[str, int] = {}
    for r in range(p.runs):
        # A fresh node per run: new identities (cold STS), and an API emulator without history.
        async with bench_world() as world:
            agent = await start_agent(world, "--log-level", "warning")
            result.command(agent.process.argv)
            nets: list[Pod] = await bounded([world.net.add_pod(f"start-{i}") for i in range(n)], limit=8)
            names = [f"app-{r}-{i}" for i in range(n)]
            await bounded([create_pod(world, name, NAMESPACE, f"role-{i % ROLES}") for i, name in enumerate(names)])
            job = {"mode": "flows", "trigger": "stdin", "timeout": 1.0, "pods": [{"netns": x.netns} for x in nets]}
            async with podclient(job) as client:
                await client.expect("ready")

                async def running(i: int, client: PodClient = client, names: list[str] = names,
                                  nets: list[Pod] = nets) -> float:
                    sent = time.monotonic()
                    await set_running(world, names[i], NAMESPACE, nets[i].ip)
                    written = time.monotonic() - sent
                    client.send(str(i))  # the pod's app asks the moment its IP is in the API
                    await client.flush()
                    return written

                writes += await bounded([running(i) for i in range(n)], limit=KUBELET_CONCURRENCY)
                answer = await client.result()
            sts_calls.append(len(await world.sts.assume_role_calls()))
        flows: list[dict[str, Any]] = answer["flows"]
        seconds = [f["seconds"] for f in flows if f["ok"]]
        p50.append(percentile(seconds, 50) * 1000)
        p99.append(percentile(seconds, 99) * 1000)
        worst.append(max(seconds, default=float("nan")) * 1000)
        failures.append(sum(not f["ok"] for f in flows))
        for f in flows:
            if not f["ok"]:
                errors[f["error"]] = errors.get(f["error"], 0) + 1

    result.add("time_to_credentials.p50_ms", "ms", p50, f"{n} pods; from the IP in the API to the credentials")
    result.add("time_to_credentials.p99_ms", "ms", p99)
    result.add("time_to_credentials.max_ms", "ms", worst)
    result.add("failures", "pods", failures, f"of {n}: any request not 200 within 1 s")
    result.add("assume_role_calls", "calls", sts_calls, f"for {n} new identities")
    result.add("status_write.p50_ms", "ms", [percentile(writes, 50) * 1000],
               f"the API emulator's answer time to one status update ({KUBELET_CONCURRENCY} in flight), all runs; "
               "not part of time_to_credentials")
    result.add("status_write.p99_ms", "ms", [percentile(writes, 99) * 1000])
    worst_p99 = max(p99)
    result.targets.append(Target(
        f"start-up burst of {n} pods", "100% success, p99 < 1 s",
        f"{sum(failures):g} failures in {p.runs} run(s); p99 {percentile(p99, 50):.0f} ms (worst run "
        f"{worst_p99:.0f} ms)" + (f"; errors: {errors}" if errors else ""),
        sum(failures) == 0 and worst_p99 < 1000 if n >= 100 else None))
    result.simplifications += [
        f"{n} pods (network namespaces made before the run) are bound to the node without an IP; then their status "
        f"updates (Running, podIP) are written through the Kubernetes client, {KUBELET_CONCURRENCY} at a time (a "
        "kubelet sends at most 50/s by default; the sandbox's API emulator answers one write in 25-300 ms and times "
        "out under 100 at once). Each pod's SDK flow (PUT token, GET role list, GET credentials, one connection, "
        "through the DNAT rule) starts when the API has acknowledged its IP; it races the watch event to the agent. "
        "Time to credentials = from then to the credentials body. The emulator's write time is reported apart.",
        f"One client process makes every pod's requests from inside each pod's network namespace (setns), so that "
        f"{n} interpreters do not compete for the 2 cores. Each request has the SDKs' 1 s timeout and no retry.",
        f"{ROLES} roles, one identity per pod, a fresh node per run: a pod whose request beats its prefetch waits "
        "for the AssumeRole call (moto) on its request path.",
    ]
    if n < 100:
        result.simplifications.append(f"Smoke size: {n} pods instead of 100; the target is judged on 100.")
