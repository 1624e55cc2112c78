"""
The benchmark suite's one entry point.

    python -m benchmarks.run --mode full     # every scenario, >= 3 runs per figure (make bench)
    python -m benchmarks.run --mode smoke    # every scenario, tiny sizes, seconds (make bench-smoke)

Needs root (network namespaces, iptables), wrk and nginx (``PODIAM_BENCH=1 scripts/setup``).
Each scenario builds fresh sandboxed nodes (``World``) that are torn down after it, even on
failure. Results go to ``benchmarks/results/<timestamp>.json``, ``.md`` and ``.png`` (the
chart, when matplotlib is installed) and to ``latest.*``. Figures are reported, never
asserted: the exit status is non-zero only when a scenario could not run (or the chart of
its results could not be drawn: a bug in the suite).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from benchmarks import chart, report
from benchmarks.common import REPO, ScenarioResult, agent_env, run
from benchmarks.http_load import tools_missing, versions
from benchmarks.profiles import PROFILES, Context, Profile
from benchmarks.scenarios import (
    app_impact,
    churn,
    hot_path,
    memory,
    sdk_pattern,
    server_scale,
    split_mode,
    startup_burst,
    sts_economy,
)

SCENARIOS: list[ModuleType] = [hot_path, sts_economy, startup_burst, app_impact, memory, churn, split_mode,
                               server_scale, sdk_pattern]
RESULTS_DIR = REPO / "benchmarks" / "results"


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10,
                              check=False).stdout.strip()
    except OSError:
        return ""


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _mem_total_gb() -> float:
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    return 0.0


async def machine(argv: list[str]) -> dict[str, Any]:
    podiam_version = (await run([sys.executable, "-m", "podiam", "--version"], timeout=60,
                                env={**os.environ, **agent_env()})).stdout.strip()
    js_pkg = REPO / "tests" / "sdk-js" / "node_modules" / "@aws-sdk" / "client-sts" / "package.json"
    node = shutil.which("node")
    return {
        "command": shlex.join(["python", "-m", "benchmarks.run", *argv]),
        "started": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "host": platform.node(),
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory_gb": _mem_total_gb(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "kernel": platform.release(),
        "os": _os_release(),
        "git": {"commit": _git("rev-parse", "--short", "HEAD"),
                "dirty": bool(_git("status", "--porcelain", "--untracked-files=no"))},
        "podiam_pythonpath": os.environ.get("PYTHONPATH", ""),
        "versions": {
            "python": platform.python_version(),
            "podiam": podiam_version.removeprefix("podiam, version ").strip(),
            **await versions(),
            "kernel": platform.release(),
            "aiohttp": _version("aiohttp"),
            "uvloop": _version("uvloop"),
            "aiobotocore": _version("aiobotocore"),
            "boto3": _version("boto3"),
            "botocore": _version("botocore"),
            "moto": _version("moto"),
            "node": (await run([node, "--version"], timeout=30)).stdout.strip() if node else "not installed",
            "aws-sdk-js-v3 client-sts": json.loads(js_pkg.read_text())["version"] if js_pkg.exists() else "missing",
        },
    }


def _os_release() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    return platform.platform()


async def run_scenario(module: ModuleType, profile: Profile) -> ScenarioResult:
    result = ScenarioResult(module.KEY, module.TITLE)
    started = time.monotonic()
    print(f"== {module.TITLE}", flush=True)
    scenario: Callable[[Context, ScenarioResult], Awaitable[None]] = module.run
    try:
        with tempfile.TemporaryDirectory(prefix=f"podiam-bench-{module.KEY}-") as tmp:
            await scenario(Context(profile, Path(tmp)), result)
    except Exception as e:  # one scenario's failure is reported, the others still run
        result.error = f"{type(e).__name__}: {e}"
        print(traceback.format_exc(), file=sys.stderr, flush=True)
    result.seconds = time.monotonic() - started
    print(f"   {result.seconds:.1f} s{' FAILED: ' + result.error if result.error else ''}", flush=True)
    return result


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else hard
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))  # inherited by the agent and the clients


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=sorted(PROFILES), default="full")
    parser.add_argument("--only", default="", help="comma-separated scenario keys: " +
                        ", ".join(m.KEY for m in SCENARIOS))
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root: network namespaces and iptables")
    if missing := tools_missing():
        parser.error(f"missing {', '.join(missing)}: run PODIAM_BENCH=1 scripts/setup")
    # SIGTERM unwinds like Ctrl-C: every node, nginx, wrk and client is stopped on the way out.
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    selected = [m for m in SCENARIOS if not args.only or m.KEY in args.only.split(",")]
    profile = PROFILES[args.mode]
    _raise_fd_limit()
    meta = await machine(argv)
    meta["mode"] = profile.name
    meta["profile"] = {k: v for k, v in vars(profile).items() if k != "name"}
    started = time.monotonic()
    results = [await run_scenario(module, profile) for module in selected]
    meta["seconds"] = round(time.monotonic() - started, 1)
    meta["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    doc = {"meta": meta, "scenarios": {r.key: r.to_json() for r in results}}
    args.results_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + ("" if profile.name == "full" else f"-{profile.name}")
    text = json.dumps(doc, indent=2)
    markdown = report.render(doc)
    for name in (stamp, "latest"):
        (args.results_dir / f"{name}.json").write_text(text)
        (args.results_dir / f"{name}.md").write_text(markdown)
    print(f"results: {args.results_dir / stamp}.json and .md (also latest.*), {meta['seconds']} s", flush=True)
    drawn = _draw_chart(args.results_dir, stamp)
    return 1 if any(r.error for r in results) or not drawn else 0


def _draw_chart(results_dir: Path, stamp: str) -> bool:
    """``<stamp>.png`` and ``latest.png`` beside the results; False only when the chart is wrong (a bug)."""
    png = results_dir / f"{stamp}.png"
    (results_dir / "latest.png").unlink(missing_ok=True)  # never an older run's chart beside these results
    try:
        chart.chart(results_dir / f"{stamp}.json", png)
    except (chart.MatplotlibMissing, chart.NothingToChart) as e:
        print(f"chart: none drawn: {e}", flush=True)
        return True
    except chart.ChartError as e:
        print(f"chart: FAILED: {e}", file=sys.stderr, flush=True)
        return False
    shutil.copyfile(png, results_dir / "latest.png")
    print(f"chart: {png} (also latest.png)", flush=True)
    return True


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
