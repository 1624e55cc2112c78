"""
9. The SDK's connection pattern: SDKs open a new TCP connection for every metadata call. wrk
from a pod's network namespace, with ``Connection: close``, against the agent and nginx (each
behind its own DNAT rule, the same kernel path), interleaved, in two patterns: the credential
GET alone, and the SDK's three requests in turn (token PUT, role list, credentials), each on
its own connection. nginx answers the same bytes as the agent for each. The pod's TCP opens
are counted, to check that every request had its own connection, and its TIME_WAIT sockets
after each run.
"""

from __future__ import annotations

import contextlib

from benchmarks.common import ScenarioResult, Target, agent_has_flag, cpu_seconds, pairwise
from benchmarks.http_load import (
    SDK_GET,
    SDK_SEQUENCE,
    TOKEN_PATH,
    TOKEN_TTL_HEADER,
    WrkScript,
    add_wrk_figures,
    dnat_rule,
    nginx_serving,
    pod_tcp_active_opens,
    pod_time_wait,
    wrk,
)
from benchmarks.node import bench_world, served_credentials, start_agent
from benchmarks.profiles import Context
from podiam_sandbox.world import World, WorldPod, free_port

KEY = "sdk_pattern"
TITLE = "9. The SDK's connection pattern (Connection: close, the three-request sequence; agent vs nginx)"
ROLE = "sdk-role"
CREDS = "/latest/meta-data/iam/security-credentials/"
AGENT_PORT, NGINX_PORT = 80, 81
"""Ports of 169.254.169.254 as the pod sees them."""
PATTERNS: dict[str, WrkScript] = {"close": SDK_GET, "sequence": SDK_SEQUENCE}
RPS_TARGET, CPU_TARGET = 0.8, 1.5
"""Issue 11: agent/nginx requests/s at least this, CPU per request at most this."""
OPENS_TOLERANCE = 0.05
"""Connections per request within this of 1: wrk's last connections of a run may open and not answer."""


async def run(ctx: Context, result: ScenarioResult) -> None:
    async with bench_world() as world:
        await _run(world, ctx, result)


async def _answers(pod: WorldPod, port: int, token: str) -> dict[str, bytes]:
    """What the metadata server at 169.254.169.254:``port`` answers the pod's SDK, path -> body."""
    got: dict[str, bytes] = {}
    for method, path, headers in (("PUT", TOKEN_PATH, dict([TOKEN_TTL_HEADER])),
                                  ("GET", CREDS, {"X-aws-ec2-metadata-token": token}),
                                  ("GET", CREDS + ROLE, {"X-aws-ec2-metadata-token": token})):
        resp = await pod.net.http(method, path, headers, port=port)
        if resp.status != 200:
            raise RuntimeError(f"{method} {path} on :{port} answered {resp.status}: {resp.body[:300]!r}")
        got[path] = resp.body
    return got


async def _run(world: World, ctx: Context, result: ScenarioResult) -> None:
    p = ctx.profile
    flags = ["--log-level", "warning"]
    if await agent_has_flag("--pod-rate-limit"):
        flags += ["--pod-rate-limit", "0"]  # wrk's thousands of requests/s from one pod are the point here
    agent = await start_agent(world, *flags)
    result.command(agent.process.argv)
    pod = await world.add_pod("sdk", "bench", role=ROLE)
    token, body = await served_credentials(pod, CREDS + ROLE)
    agent_answers = await _answers(pod, AGENT_PORT, token)
    gateway = world.net.gateway_ip
    nginx_port = free_port()
    async with contextlib.AsyncExitStack() as stack:
        # The token PUT and the role list as `return 200`, the credentials as the static file (as in
        # scenarios 1 and 6). Each token the agent hands out differs; they have the same length.
        nginx = await stack.enter_async_context(nginx_serving(
            body, CREDS + ROLE, host=gateway, port=nginx_port, workdir=ctx.workdir, result=result,
            answers={TOKEN_PATH: agent_answers[TOKEN_PATH], CREDS: agent_answers[CREDS]}))
        await stack.enter_async_context(
            dnat_rule(world.net.bridge_name, NGINX_PORT, host=gateway, port=nginx_port, result=result))
        nginx_answers = await _answers(pod, NGINX_PORT, token)
        lengths = {path: (len(a), len(nginx_answers[path])) for path, a in agent_answers.items()}
        if any(a != n for a, n in lengths.values()) or nginx_answers[CREDS + ROLE] != body:
            raise RuntimeError(f"nginx does not answer the agent's bytes: (agent, nginx) lengths {lengths}")
        servers = {"agent": (agent.pid, AGENT_PORT), "nginx": (nginx.pid, NGINX_PORT)}
        targets = {f"{server}_{pattern}": (pid, port, script)
                   for pattern, script in PATTERNS.items() for server, (pid, port) in servers.items()}

        async def load(port: int, script: WrkScript, seconds: float) -> dict[str, float]:
            return await wrk(pod.net.netns, f"http://169.254.169.254:{port}{CREDS}{ROLE}", token,
                             threads=p.wrk_threads, connections=p.wrk_connections, seconds=seconds,
                             workdir=ctx.workdir, result=result, headers=("Connection: close",), script=script)

        for _, port, script in targets.values() if p.wrk_warmup else ():  # warm-up: first-use paths
            await load(port, script, p.wrk_warmup)
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
        for _ in range(p.runs):
            for name, (pid, port, script) in targets.items():  # interleaved, so drift hits all alike
                cpu, opens = cpu_seconds(pid), await pod_tcp_active_opens(pod.net.netns)
                summary = await load(port, script, p.wrk_seconds)
                summary["cpu_s"] = cpu_seconds(pid) - cpu
                summary["opens"] = await pod_tcp_active_opens(pod.net.netns) - opens
                summary["time_wait"] = await pod_time_wait(pod.net.netns, port)
                runs[name].append(summary)
    _report(runs, ctx, result)


def _report(runs: dict[str, list[dict[str, float]]], ctx: Context, result: ScenarioResult) -> None:
    p = ctx.profile
    for name, rs in runs.items():
        add_wrk_figures(result, name, rs, p999=False)
        result.add(f"{name}.connections_per_request", "conns", [r["opens"] / max(r["requests"], 1) for r in rs],
                   "TCP connections the pod opened during the run (Tcp ActiveOpens) / requests wrk counted")
        result.add(f"{name}.pod_time_wait", "sockets", [r["time_wait"] for r in rs],
                   "the pod's TIME_WAIT sockets towards this server right after the run (they live 60 s)")

    def fig(name: str) -> list[float]:
        return result.figures[name].values

    for pattern in PATTERNS:
        a, n = f"agent_{pattern}", f"nginx_{pattern}"
        for q in ("requests_per_s", "p50_ms", "p99_ms", "cpu_us_per_request"):
            result.ratio(f"{a}/{n}.{q}", pairwise(fig(f"{a}.{q}"), fig(f"{n}.{q}")))
        rps = result.ratios[f"{a}/{n}.requests_per_s"].median
        cpu = result.ratios[f"{a}/{n}.cpu_us_per_request"].median
        what = {"close": "credential GET", "sequence": "token PUT, role list, credentials"}[pattern]
        result.targets += [
            Target(f"SDK pattern requests/s ({what}, Connection: close)", f">= {RPS_TARGET:.1f}x nginx's",
                   f"{rps:.2f}x nginx ({result.figures[f'{a}.requests_per_s'].median:,.0f} vs "
                   f"{result.figures[f'{n}.requests_per_s'].median:,.0f} req/s)", rps >= RPS_TARGET),
            Target(f"SDK pattern server CPU per request ({what})", f"<= {CPU_TARGET:.1f}x nginx's",
                   f"{cpu:.2f}x nginx ({result.figures[f'{a}.cpu_us_per_request'].median:.1f} vs "
                   f"{result.figures[f'{n}.cpu_us_per_request'].median:.1f} us)", cpu <= CPU_TARGET),
        ]
    per_request = [v for name in runs for v in fig(f"{name}.connections_per_request")]
    errors = {name: sum(fig(f"{name}.errors")) for name in runs}
    result.targets += [
        Target("SDK pattern: a new connection per request (the measurement's check)",
               f"every run 1 +- {OPENS_TOLERANCE:g} TCP opens per request",
               f"{min(per_request):.3f} to {max(per_request):.3f}",
               all(abs(v - 1) <= OPENS_TOLERANCE for v in per_request)),
        Target("SDK pattern: errors (socket errors, non-2xx, timeouts)", "0",
               ", ".join(f"{name} {count:g}" for name, count in errors.items()), not any(errors.values())),
    ]
    for name, rs in runs.items():
        if errors[name]:
            kinds = ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")
            result.simplifications.append(f"wrk reported errors against {name}: " + ", ".join(
                f"{k} {sum(r[k] for r in rs):g}" for k in kinds) + " (summed over the runs).")
    result.simplifications += [
        f"wrk -t{p.wrk_threads} -c{p.wrk_connections} -d{p.wrk_seconds:g}s -H 'Connection: close', {p.runs} "
        "round(s) of the four loads, interleaved (agent close, nginx close, agent sequence, nginx sequence): "
        "wrk reconnects after each reply, as the server closes; `connections_per_request` checks it.",
        "close: the SDK's credential GET (IMDSv2 token header) alone. sequence: each wrk thread sends in "
        "turn the token PUT (X-aws-ec2-metadata-token-ttl-seconds: 21600, Content-Length: 0), the role "
        "list GET and the credentials GET, each with the token header but the PUT, each on its own "
        "connection: a third of the requests each (the Lua script is in the commands). The GETs use one "
        "token the agent issued before the runs (tokens are per agent process and bound to the pod's IP); "
        "nginx ignores it.",
        "nginx answers the token PUT and the role list with `return 200` (bytes the agent answered before "
        "the runs; every token the agent issues differs, all have the same length) and the credentials as a "
        "static file (as in scenarios 1 and 6); the lengths and the credentials' bytes are checked through "
        "each server's DNAT rule before the runs. Headers differ (Server, Content-Type, Last-Modified).",
        f"nginx and the agent are each behind their own DNAT rule (169.254.169.254:{NGINX_PORT} and "
        f":{AGENT_PORT}), the same kernel path.",
        "The agent runs with `--pod-rate-limit 0`: the default 100 requests/s per pod would refuse most of "
        "wrk's requests (scenario 1 measures the bucket's cost).",
        "The server sends the first FIN right after its reply (the agent in the reply's last segment), so the "
        "server, not the pod, holds nearly every TIME_WAIT (a pod that closes first keeps one per request, "
        "until its ephemeral ports run out); pod_time_wait counts the pod's with `ss -Htan state "
        "time-wait '( dport = :PORT )'` in its network namespace right after each run (the last 60 s; wrk "
        "closing its open connections when a run ends leaves up to -c of them each time).",
        "CPU per request is user+system time of the server's process tree from /proc/PID/stat before and "
        "after each run (10 ms ticks), divided by the requests wrk counted; the kernel's connection set-up "
        "and teardown is partly charged to whichever process the softirq interrupts.",
        "wrk, the agent and nginx share the machine's cores: the load generator's CPU use is in every figure.",
    ]
