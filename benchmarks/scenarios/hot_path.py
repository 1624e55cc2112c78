"""
1. Hot path vs the limit: cached credential GETs, as an SDK sends them, with wrk from a
pod's network namespace, against the agent and against nginx (one worker) serving the
same bytes as a static file, side by side in one run: through the DNAT path (the target
measurement) and directly to each server's port.
"""

from __future__ import annotations

import contextlib
import os

from benchmarks.common import ScenarioResult, Target, agent_has_flag, cpu_seconds, pairwise
from benchmarks.http_load import add_wrk_figures, dnat_rule, nginx_serving, wrk
from benchmarks.node import BASELINE_ENV, bench_world, imds_token, served_credentials, start_agent
from benchmarks.profiles import Context
from podiam_sandbox.world import World, free_port

KEY = "hot_path"
TITLE = "1. Hot path vs the limit (cached credential GET, wrk, agent vs nginx)"
ROLE = "bench-role"
CREDS = "/latest/meta-data/iam/security-credentials/"
NGINX_METADATA_PORT = 81
"""The pod reaches nginx at 169.254.169.254:81, DNAT'ed like the agent's :80."""
AIOHTTP_METADATA_PORT = 82
"""... and the agent on its aiohttp server (``--http-server aiohttp``) at :82."""
BASELINE_METADATA_PORT = 84
"""... and, with PODIAM_BENCH_BASELINE=/other/src, an agent from that source tree at :84."""
RATELIMITED_METADATA_PORT = 85
"""... and an agent with its per-pod token bucket on (at a rate wrk never reaches) at :85."""
UNREACHED_RATE = "10000000"
"""Requests/s per pod for the rate-limited agent: every request pays the bucket, none is refused."""
RPS_TARGET, P99_TARGET, CPU_TARGET, RATELIMIT_TARGET = 1.0, 1.5, 1.3, 0.9
"""Issue 11: agent/nginx requests/s, p99 and CPU per request; rate-limited/unlimited requests/s."""


async def run(ctx: Context, result: ScenarioResult) -> None:
    async with bench_world() as world:
        await _run(world, ctx, result)


async def _run(world: World, ctx: Context, result: ScenarioResult) -> None:
    p = ctx.profile
    quiet = ["--log-level", "warning"]
    flags = list(quiet)
    rate_limit = await agent_has_flag("--pod-rate-limit")
    if rate_limit:
        flags += ["--pod-rate-limit", "0"]
    else:
        result.simplifications.append("`podiam agent` has no --pod-rate-limit flag: run without it.")
    agent = await start_agent(world, *flags)
    result.command(agent.process.argv)
    pod = await world.add_pod("wrk", "bench", role=ROLE)
    path = CREDS + ROLE
    token, body = await served_credentials(pod, path)
    gateway = world.net.gateway_ip
    nginx_port = free_port()
    async with contextlib.AsyncExitStack() as stack:
        nginx = await stack.enter_async_context(
            nginx_serving(body, path, host=gateway, port=nginx_port, workdir=ctx.workdir, result=result))
        await stack.enter_async_context(
            dnat_rule(world.net.bridge_name, NGINX_METADATA_PORT, host=gateway, port=nginx_port, result=result))
        # name -> (server pid, URL, token); tokens are per agent process (HMAC key), nginx ignores them.
        targets = {
            "agent_dnat": (agent.pid, f"http://169.254.169.254{path}", token),
            "nginx_dnat": (nginx.pid, f"http://169.254.169.254:{NGINX_METADATA_PORT}{path}", token),
        }
        if rate_limit:
            # The same agent with its bucket on: a second process on this node, its own DNAT rule.
            limited = await start_agent(world, *quiet, "--pod-rate-limit", UNREACHED_RATE, iptables=False)
            result.command(limited.process.argv)
            await stack.enter_async_context(
                dnat_rule(world.net.bridge_name, RATELIMITED_METADATA_PORT, host=gateway, port=limited.app_port,
                          result=result))
            limited_token = await imds_token(pod, RATELIMITED_METADATA_PORT)
            answer = await pod.net.http("GET", path, {"X-aws-ec2-metadata-token": limited_token},
                                        port=RATELIMITED_METADATA_PORT)
            if answer.status != 200:  # its own AssumeRole: other credentials, the same length of reply
                raise RuntimeError(f"the rate-limited agent answered {answer.status}")
            targets["agent_ratelimited_dnat"] = (
                limited.pid, f"http://169.254.169.254:{RATELIMITED_METADATA_PORT}{path}", limited_token)
        if await agent_has_flag("--http-server"):
            # The same agent on its other HTTP server, side by side: a second agent process on this
            # node (it watches and prefetches too), reached through its own DNAT rule.
            other = await start_agent(world, *flags, "--http-server", "aiohttp", iptables=False)
            result.command(other.process.argv)
            await stack.enter_async_context(
                dnat_rule(world.net.bridge_name, AIOHTTP_METADATA_PORT, host=gateway, port=other.app_port,
                          result=result))
            other_token = await imds_token(pod, AIOHTTP_METADATA_PORT)
            targets["agent_aiohttp_dnat"] = (other.pid, f"http://169.254.169.254:{AIOHTTP_METADATA_PORT}{path}",
                                             other_token)
            targets["agent_aiohttp_direct"] = (other.pid, f"http://{gateway}:{other.app_port}{path}", other_token)
        if baseline := os.environ.get(BASELINE_ENV):
            # The same flags, another source tree (an earlier commit): before/after in one run.
            base = await start_agent(world, *flags, iptables=False, env={"PYTHONPATH": baseline})
            result.command(f"PYTHONPATH={baseline} " + " ".join(base.process.argv))
            await stack.enter_async_context(
                dnat_rule(world.net.bridge_name, BASELINE_METADATA_PORT, host=gateway, port=base.app_port,
                          result=result))
            targets["agent_baseline_dnat"] = (base.pid, f"http://169.254.169.254:{BASELINE_METADATA_PORT}{path}",
                                              await imds_token(pod, BASELINE_METADATA_PORT))
        targets["agent_direct"] = (agent.pid, f"http://{gateway}:{agent.app_port}{path}", token)
        targets["nginx_direct"] = (nginx.pid, f"http://{gateway}:{nginx_port}{path}", token)

        async def load(url: str, token: str, seconds: float) -> dict[str, float]:
            return await wrk(pod.net.netns, url, token, threads=p.wrk_threads, connections=p.wrk_connections,
                             seconds=seconds, workdir=ctx.workdir, result=result)

        for _, url, tok in targets.values() if p.wrk_warmup else ():  # warm-up: first-use paths, caches
            await load(url, tok, p.wrk_warmup)
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
        for _ in range(p.runs):
            for name, (pid, url, tok) in targets.items():  # interleaved, so drift hits all alike
                before = cpu_seconds(pid)
                summary = await load(url, tok, p.wrk_seconds)
                summary["cpu_s"] = cpu_seconds(pid) - before
                runs[name].append(summary)
    _report(runs, ctx, result)


def _report(runs: dict[str, list[dict[str, float]]], ctx: Context, result: ScenarioResult) -> None:
    p = ctx.profile
    for name, rs in runs.items():
        add_wrk_figures(result, name, rs)
        result.add(f"{name}.bytes_per_response", "B", [r["bytes"] / max(r["requests"], 1) for r in rs])

    def fig(name: str) -> list[float]:
        return result.figures[name].values

    pairs = [(f"{a}_{kind}", f"nginx_{kind}") for a in ("agent", "agent_aiohttp") for kind in ("dnat", "direct")]
    pairs.append(("agent_dnat", "agent_aiohttp_dnat"))
    pairs.append(("agent_dnat", "agent_baseline_dnat"))
    pairs.append(("agent_ratelimited_dnat", "nginx_dnat"))
    pairs.append(("agent_ratelimited_dnat", "agent_dnat"))
    for a, n in pairs:
        if a not in runs or n not in runs:
            continue
        result.ratio(f"{a}/{n}.requests_per_s", pairwise(fig(f"{a}.requests_per_s"), fig(f"{n}.requests_per_s")))
        for q in ("p50_ms", "p99_ms", "p99.9_ms", "cpu_us_per_request"):
            result.ratio(f"{a}/{n}.{q}", pairwise(fig(f"{a}.{q}"), fig(f"{n}.{q}")))
    result.ratio("agent_dnat/agent_direct.requests_per_s",
                 pairwise(fig("agent_dnat.requests_per_s"), fig("agent_direct.requests_per_s")))

    def med(name: str) -> float:
        return result.figures[name].median

    rps = result.ratios["agent_dnat/nginx_dnat.requests_per_s"].median
    p99 = result.ratios["agent_dnat/nginx_dnat.p99_ms"].median
    cpu = result.ratios["agent_dnat/nginx_dnat.cpu_us_per_request"].median
    result.targets += [
        Target(f"hot path requests/s (DNAT, wrk -t{p.wrk_threads} -c{p.wrk_connections})",
               f">= {RPS_TARGET:.1f}x nginx's", f"{rps:.2f}x nginx ({med('agent_dnat.requests_per_s'):,.0f} vs "
               f"{med('nginx_dnat.requests_per_s'):,.0f} req/s)", rps >= RPS_TARGET),
        Target("hot path p99 latency (DNAT)", f"<= {P99_TARGET:.1f}x nginx's",
               f"{p99:.2f}x nginx ({med('agent_dnat.p99_ms'):.2f} vs {med('nginx_dnat.p99_ms'):.2f} ms)",
               p99 <= P99_TARGET),
        Target("hot path server CPU per request (DNAT)", f"<= {CPU_TARGET:.1f}x nginx's",
               f"{cpu:.2f}x nginx ({med('agent_dnat.cpu_us_per_request'):.1f} vs "
               f"{med('nginx_dnat.cpu_us_per_request'):.1f} us)", cpu <= CPU_TARGET),
    ]
    if "agent_ratelimited_dnat" in runs:
        limited = result.ratios["agent_ratelimited_dnat/agent_dnat.requests_per_s"].median
        limited_cpu = result.ratios["agent_ratelimited_dnat/agent_dnat.cpu_us_per_request"].median
        refused = sum(fig("agent_ratelimited_dnat.errors"))
        result.targets.append(Target(
            "a rate-limited configuration costs <= 10% (requests/s, DNAT)",
            f">= {RATELIMIT_TARGET:.1f}x the agent without a limit, no request refused",
            f"{limited:.2f}x ({med('agent_ratelimited_dnat.requests_per_s'):,.0f} vs "
            f"{med('agent_dnat.requests_per_s'):,.0f} req/s), CPU per request {limited_cpu:.2f}x, "
            f"{refused:g} errors", limited >= RATELIMIT_TARGET and refused == 0))
    errors = sum(sum(fig(f"{name}.errors")) for name in runs)
    if errors:
        result.simplifications.append(f"wrk reported {errors:g} errors in total (see the *.errors figures).")
    result.simplifications += [
        f"wrk -t{p.wrk_threads} -c{p.wrk_connections} keeps its connections alive; SDKs open a new connection "
        "per metadata request. The request is the SDK's (GET .../security-credentials/ROLE with an IMDSv2 "
        "token header, the token checked by the agent on every request).",
        "wrk, the agent and nginx share the machine's cores: the load generator's CPU use is in every figure.",
        "nginx: 1 worker, access_log off, open_file_cache on, etag off, keepalive_requests unlimited, "
        "sendfile; it answers `Server: nginx` with Last-Modified and Accept-Ranges headers (see "
        "bytes_per_response), the agent `Server: EC2ws`; the bodies are byte for byte the same.",
        f"nginx is reached through its own DNAT rule (169.254.169.254:{NGINX_METADATA_PORT} -> nginx), the same "
        "kernel path as the agent's rule; *_direct figures go from the pod to each server's port without DNAT.",
        "agent_* is the agent with its default HTTP server; agent_aiohttp_* (when the agent has --http-server) is "
        f"a second agent process with `--http-server aiohttp`, without --iptables, behind its own DNAT rule "
        f"(169.254.169.254:{AIOHTTP_METADATA_PORT}); both run during the whole scenario.",
        f"agent_ratelimited_dnat is a third agent process with its per-pod token bucket on, `--pod-rate-limit "
        f"{UNREACHED_RATE}` (a rate wrk never reaches: every request pays the bucket check, none is refused; "
        f"its errors figure counts any 429), without --iptables, behind 169.254.169.254:{RATELIMITED_METADATA_PORT}. "
        "The other agents run with `--pod-rate-limit 0` (no bucket).",
        "CPU per request is user+system time of the server's process tree from /proc/PID/stat before and "
        "after each run (10 ms ticks), divided by the requests wrk counted.",
    ]
