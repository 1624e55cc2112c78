"""
4. Application impact, the article's experiment: an application in a pod calls STS
GetCallerIdentity in a loop with its SDK's default credential chain (boto3, the JS SDK v3,
the Go SDKs v1 and v2, the Ruby SDK). Throughput with static credentials vs through podiam,
and the credential fetches it makes, in three configurations on one node: an agent-mode agent
(default flags), a split-mode agent fed by a `podiam server`, and a kiam-like agent-mode agent
(15-minute sessions refreshed at 5 minutes).
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import BENCH_DIR, REPO, ScenarioResult, Target, metric, pairwise
from benchmarks.http_load import dnat_rule
from benchmarks.node import bench_world, start_agent
from benchmarks.profiles import Context
from benchmarks.split import start_split
from podiam_sandbox.world import World, WorldPod

KEY = "app_impact"
TITLE = "4. Application impact (the article's experiment: SDK calls with static credentials vs podiam)"
APPS_DIR = BENCH_DIR / "apps"
GO_BUILD = REPO / "tests" / "sdk-go" / ".build"
"""scripts/setup builds the Go loops (benchmarks/apps/go-v1, go-v2) here, with the Go test probes."""
APPS: dict[str, tuple[str, ...]] = {
    "boto3": (sys.executable, str(APPS_DIR / "boto3_loop.py")),
    "js": ("node", str(APPS_DIR / "js_loop.cjs")),
    "go-v1": (str(GO_BUILD / "loop-v1"),),
    "go-v2": (str(GO_BUILD / "loop-v2"),),
    "ruby": ("ruby", str(APPS_DIR / "ruby_loop.rb")),
}
"""Each SDK's application: argv before the run's seconds; every one prints boto3_loop.py's JSON line."""
APP_ENV = {"js": {"NODE_PATH": str(REPO / "tests" / "sdk-js" / "node_modules")}}
CONFIGS = ("podiam", "split", "kiam_like")
"""Agent mode with default flags (figure names from before split mode: ``SDK.podiam.*``), split
mode, and agent mode with kiam's session settings."""
KIAM_LIKE = ("--session-duration", "15m", "--session-refresh", "5m")
LOG = ("--log-level", "warning")
FETCHES = "podiam_imds_request_duration_seconds_count"
ROLE = "app-role"
CREDS = "/latest/meta-data/iam/security-credentials/"
SECRETS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


@dataclass(frozen=True)
class Config:
    """One podiam configuration on the node: how to read its agent's metrics, and the port the
    pod's metadata traffic must be DNAT'ed to (None: the agent's own --iptables rule does it)."""

    metrics: Callable[[], Awaitable[str]]
    rule_port: int | None


async def _static_env(pod: WorldPod) -> dict[str, str]:
    """The pod's own role credentials, fetched once from the agent, as static environment variables.

    The static run then signs with the very same assumed-role session, so moto does the same
    work per call in both runs and only the SDK's credential provider differs.
    """
    token = (await pod.http("PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "300"})).body
    resp = await pod.http("GET", CREDS + ROLE, {"X-aws-ec2-metadata-token": token.decode()})
    if resp.status != 200:
        raise RuntimeError(f"the agent answered {resp.status}: {resp.body[:300]!r}")
    doc = resp.json()
    return {"AWS_ACCESS_KEY_ID": doc["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": doc["SecretAccessKey"],
            "AWS_SESSION_TOKEN": doc["Token"]}


async def _app(world: World, pod: WorldPod, sdk: str, *, seconds: float, static: dict[str, str] | None,
               result: ScenarioResult) -> dict[str, Any]:
    env = {**world.sdk_env(), **APP_ENV.get(sdk, {}), **(static or {})}
    argv = [*APPS[sdk], f"{seconds:g}"]
    shown = {k: ("<from the agent>" if k in SECRETS else v) for k, v in env.items()
             if k.startswith(("AWS_", "NODE_", "PODIAM_"))}
    result.command(["ip", "netns", "exec", "<pod-netns>", "env", *(f"{k}={v}" for k, v in shown.items()), *argv])
    done = (await pod.net.run(argv, env, timeout=seconds + 120)).check()
    answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer


@contextlib.asynccontextmanager
async def _route(world: World, config: Config, result: ScenarioResult) -> AsyncIterator[None]:
    """The pod's 169.254.169.254:80 reaches ``config``'s agent for the duration of the block."""
    if config.rule_port is None:
        yield
        return
    # Inserted first in PREROUTING, ahead of the agent-mode agent's own rule (checked with -C,
    # never reordered): new connections go to this agent, as if it were the node's only one.
    async with dnat_rule(world.net.bridge_name, 80, host=world.net.gateway_ip, port=config.rule_port,
                         result=result):
        yield


async def _through(world: World, pod: WorldPod, sdk: str, name: str, config: Config, *, seconds: float,
                   result: ScenarioResult) -> dict[str, Any]:
    """The app with no credentials in its environment, through ``config``'s agent; with the
    credentials requests that agent answered meanwhile."""
    before = metric(await config.metrics(), FETCHES, route="credentials")
    async with _route(world, config, result):
        through = await _app(world, pod, sdk, seconds=seconds, static=None, result=result)
    through["fetches"] = metric(await config.metrics(), FETCHES, route="credentials") - before
    if through["fetches"] < 1:  # the app's first call fetched: a counter that missed it counts nothing
        raise RuntimeError(f"{name}: the agent counted no {FETCHES}{{route=\"credentials\"}} for {sdk}'s "
                           "first call (metric not exported, or the app did not reach this agent)")
    return through


def _check_apps(sdks: tuple[str, ...]) -> None:
    missing = [APPS[sdk][-1] for sdk in sdks if not Path(APPS[sdk][-1]).exists()]
    if missing:
        raise RuntimeError(f"{', '.join(missing)} not found: run scripts/setup (it builds the Go loops)")


async def run(ctx: Context, result: ScenarioResult) -> None:
    _check_apps(ctx.profile.app_sdks)
    runs: dict[str, list[dict[str, Any]]] = {}
    async with bench_world() as world:
        pod = await world.add_pod("app", "shop", role=ROLE)
        agent = await start_agent(world, *LOG)
        result.command(agent.process.argv)
        kiam = await start_agent(world, *LOG, *KIAM_LIKE, iptables=False)
        result.command(kiam.process.argv)
        split = await start_split(world, ctx.workdir, result, *LOG)
        configs = {
            "podiam": Config(agent.process.metrics, None),
            "split": Config(split.agent.metrics, split.app_port),
            "kiam_like": Config(kiam.process.metrics, kiam.app_port),
        }
        await _rounds(world, pod, configs, ctx=ctx, result=result, runs=runs)
    _report(runs, ctx, result)


async def _rounds(world: World, pod: WorldPod, configs: dict[str, Config], *, ctx: Context,
                  result: ScenarioResult, runs: dict[str, list[dict[str, Any]]]) -> None:
    """Each round, each SDK: one static-credentials run, then the app through each configuration,
    their order rotated from round to round so that each one follows the static run as often."""
    seconds = ctx.profile.app_seconds
    credentials = await _static_env(pod)
    for i in range(ctx.profile.runs):
        order = CONFIGS[i % len(CONFIGS):] + CONFIGS[:i % len(CONFIGS)]
        for sdk in ctx.profile.app_sdks:
            runs.setdefault(f"{sdk}.static", []).append(
                await _app(world, pod, sdk, seconds=seconds, static=credentials, result=result))
            for name in order:
                runs.setdefault(f"{sdk}.{name}", []).append(
                    await _through(world, pod, sdk, name, configs[name], seconds=seconds, result=result))


def _rates(rs: list[dict[str, Any]]) -> list[float]:
    return [r["calls"] / r["seconds"] for r in rs]


def _report(runs: dict[str, list[dict[str, Any]]], ctx: Context, result: ScenarioResult) -> None:
    for sdk in ctx.profile.app_sdks:
        static = runs[f"{sdk}.static"]
        result.add(f"{sdk}.static.calls_per_s", "calls/s", _rates(static),
                   "static credentials in the environment; one run per round, shared by the three configurations")
        result.add(f"{sdk}.static.p50_ms", "ms", [r["p50_ms"] for r in static])
        for name in CONFIGS:
            rs = runs[f"{sdk}.{name}"]
            rate = result.add(f"{sdk}.{name}.calls_per_s", "calls/s", _rates(rs))
            result.add(f"{sdk}.{name}.p50_ms", "ms", [r["p50_ms"] for r in rs])
            result.add(f"{sdk}.{name}.credential_fetches", "fetches", [r["fetches"] for r in rs],
                       "credentials requests the agent answered during the app's run, warm-up included")
            # The warm-up call's fetch is not a refresh: fetches beyond the first, per hour of calls.
            result.add(f"{sdk}.{name}.credential_fetches_per_hour", "fetches/h",
                       [(r["fetches"] - 1) / r["seconds"] * 3600 for r in rs],
                       "GET .../security-credentials/ROLE answered by the agent after the app's first call, "
                       "extrapolated from the run")
            result.add(f"{sdk}.{name}.credential_fetches_per_call", "fetches",
                       [(r["fetches"] - 1) / max(r["calls"], 1) for r in rs])
            result.ratio(f"{sdk}.{name}/static.calls_per_s", pairwise(rate.values, _rates(static)),
                         "paired with the static run of the same round")
            result.add(f"{sdk}.{name}.overhead_ms_per_call", "ms",
                       [1000 / r - 1000 / s for r, s in zip(rate.values, _rates(static), strict=True)])
        result.targets.append(_target(sdk, result))
    result.simplifications += _simplifications(ctx)


def _target(sdk: str, result: ScenarioResult) -> Target:
    def fetches(name: str) -> float:
        return result.figures[f"{sdk}.{name}.credential_fetches_per_hour"].max

    def ratio(name: str) -> str:
        r = result.ratios[f"{sdk}.{name}/static.calls_per_s"]
        return f"{r.median:.0%} of static ({r.min:.0%}-{r.max:.0%})"

    static = result.figures[f"{sdk}.static.calls_per_s"]
    return Target(
        f"{sdk}: an application through podiam, agent and split mode",
        "no credential refresh on the call path (the article's cost): 0 fetches/h after the first call",
        f"agent mode {fetches('podiam'):.0f} fetches/h, {ratio('podiam')}; split mode {fetches('split'):.0f} "
        f"fetches/h, {ratio('split')}; kiam-like {fetches('kiam_like'):,.0f} fetches/h, {ratio('kiam_like')} "
        f"(static runs alone {static.min:.0f}-{static.max:.0f} calls/s)",
        fetches("podiam") == 0 and fetches("split") == 0)


def _simplifications(ctx: Context) -> list[str]:
    p = ctx.profile
    sdks = ", ".join(p.app_sdks)
    return [
        f"SDKs: {sdks}"
        + ("" if set(p.app_sdks) == set(APPS) else f" (this mode's subset of {', '.join(APPS)})")
        + ". The AWS CLI is left out: it is botocore, boto3's engine, with the same credential provider "
        "and refresh windows, in a new process per command, so a loop of CLI commands would measure "
        "Python's start-up, and its credential behaviour is boto3's.",
        f"The application calls STS GetCallerIdentity on moto (in the sandbox, over the bridge) in a loop for "
        f"{p.app_seconds:g} s after one warm-up call, one client, sequential calls: the throughput is "
        "moto's and the SDK's, so the ratio to static credentials is the figure that matters. The article's "
        "application did real work between calls; here every call is pure overhead, which magnifies any cost. "
        "The target is judged on the mechanism (credential fetches after the first call), not on throughput: "
        "on 2 shared cores the static runs alone vary by tens of percent between runs.",
        f"Cost: {len(p.app_sdks)} SDKs x {p.runs} rounds x (1 static + {len(CONFIGS)} configurations) runs of "
        f"{p.app_seconds:g} s. One static run per SDK per round is shared by the three configurations (not one "
        "before each), and the configurations' order rotates from round to round, so each one follows its "
        "static run at each distance once in 3 rounds: a third fewer app runs than a static run per "
        "configuration, at the same run length.",
        "Static: the pod's own assumed-role credentials (fetched once from the agent-mode agent) as "
        "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN, the first link of every SDK's default "
        "chain, so that moto answers the same session in every run. Through podiam: no credentials in the "
        "environment; the chain reaches IMDS at 169.254.169.254 through a DNAT rule.",
        "The three configurations run side by side on the node for the whole scenario: the agent-mode agent "
        "(default flags, its own --iptables rule), the kiam-like agent-mode agent (`--session-duration 15m "
        "--session-refresh 5m`) and the split agent (`podiam agent --server-address`, fed over mutual TLS by a "
        "`podiam server` on loopback, as in scenario 7), both without --iptables: during their runs a DNAT "
        "rule of the benchmark, inserted ahead of the agent-mode agent's, sends 169.254.169.254:80 to them "
        "(the same kernel path; a new process, so new connections, for every run). Fetches are each agent's "
        "own counter podiam_imds_request_duration_seconds_count{route=\"credentials\"} (the split agent's "
        "endpoint exports the same metric; a run it did not count fails the scenario).",
        "Credential fetches per hour are extrapolated from the run; the warm-up call's fetch is not counted. "
        "With podiam's defaults credentials arrive with ~60 min left and no SDK refreshes within the run; the "
        "kiam-like agent serves credentials with 5-15 min left. Refresh windows of the SDKs here: botocore "
        "(boto3) refreshes below 15 min (advisory), and answers such credentials by extending their expiry "
        "locally by 12-20 min (random), so it refreshes every few minutes, not on every call; the JS SDK v3, "
        "Go v1 (1.44, ExpiryWindow 5 min) and Ruby (3.168, synchronous refresh below 5 min; no asynchronous "
        "refresh for instance-profile credentials) refresh below 5 min, and Go v2 (1.17, no expiry window for "
        "EC2 role credentials) at expiry: kiam-like never serves credentials that close to expiry. The "
        "article's per-call refresh was the Java SDK v1's (refresh below 15 min), not measured here (no Java "
        "SDK in the sandbox); a short run may see no kiam-like refresh at all.",
        f"Each {p.app_seconds:g} s run is a fresh process. moto (werkzeug) answers every call with "
        "`Connection: close`, so each call opens a new TCP connection to STS, in every run alike. Go v2 (1.17) "
        "then sometimes fails to read a response (net/http closes the connection under its body, "
        "aws/aws-sdk-go-v2#1825) and does not retry that error, which Go v1 retries as a connection reset: its "
        "loop adds that retry, at once (apps/go-v2/loop.go).",
    ]
