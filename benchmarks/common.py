"""
Shared pieces of the benchmark suite: run statistics, the result model, /proc readers
(CPU time and RSS of a process tree), the agent's Prometheus metrics, and subprocesses
that are always stopped, whatever happens.

Every figure is a ``Stat``: the values of several runs (or, where stated, of several
items of one run) with their median, min and max. Nothing here judges speed: targets are
reported as met or not, never asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import shlex
import signal
import statistics
import sys
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO / "benchmarks"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# -- statistics and results ------------------------------------------------------------------


@dataclass
class Stat:
    """One figure: the value of each run, summarised."""

    unit: str
    values: list[float]
    note: str = ""

    @property
    def median(self) -> float:
        return float(statistics.median(self.values)) if self.values else float("nan")

    @property
    def min(self) -> float:
        return float(min(self.values)) if self.values else float("nan")

    @property
    def max(self) -> float:
        return float(max(self.values)) if self.values else float("nan")

    def to_json(self) -> dict[str, Any]:
        return {"unit": self.unit, "median": _clean(self.median), "min": _clean(self.min), "max": _clean(self.max),
                "n": len(self.values), "runs": [_clean(v) for v in self.values], "note": self.note}


def _clean(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 6)  # NaN -> null in JSON


@dataclass
class Target:
    """A target of the issue, and whether this run meets it (reported, never asserted)."""

    name: str
    goal: str
    measured: str
    met: bool | None
    """None: not measurable in this mode (e.g. smoke sizes)."""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "goal": self.goal, "measured": self.measured, "met": self.met}


@dataclass
class ScenarioResult:
    key: str
    title: str
    figures: dict[str, Stat] = field(default_factory=dict)
    ratios: dict[str, Stat] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)
    simplifications: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None

    def add(self, name: str, unit: str, values: Iterable[float], note: str = "") -> Stat:
        stat = self.figures[name] = Stat(unit, [float(v) for v in values], note)
        return stat

    def ratio(self, name: str, values: Iterable[float], note: str = "") -> Stat:
        stat = self.ratios[name] = Stat("x", [float(v) for v in values], note)
        return stat

    def command(self, argv: Sequence[str] | str) -> None:
        text = argv if isinstance(argv, str) else shlex.join(argv)
        if text not in self.commands:
            self.commands.append(text)

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "seconds": round(self.seconds, 1),
            "error": self.error,
            "figures": {k: v.to_json() for k, v in self.figures.items()},
            "ratios": {k: v.to_json() for k, v in self.ratios.items()},
            "targets": [t.to_json() for t in self.targets],
            "simplifications": self.simplifications,
            "commands": self.commands,
        }


def pairwise(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """Ratios of runs taken side by side (run i with run i): the ratio is what drifts least."""
    return [n / d if d else float("nan") for n, d in zip(numerators, denominators, strict=True)]


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of ``values``; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100.0 * len(ordered) + 0.5)))
    return float(ordered[rank - 1])


# -- /proc --------------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text.rsplit(")", 1)[1].split()  # fields from 3 (state) on


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (through /proc/PID/task/TID/children)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            with contextlib.suppress(OSError):
                todo.extend(int(c) for c in (task / "children").read_text().split())
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid``'s process tree (live processes), in seconds."""
    total = 0
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            fields = _stat_fields(p)
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / CLK_TCK


def side_threads_cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid``'s threads other than its main one (gRPC's, botocore's...)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        if task.name != str(pid):
            with contextlib.suppress(OSError):
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def rss_mb(pid: int) -> float:
    """Resident set size of one process, MiB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS for pid {pid}")


def find_pid(argv: Sequence[str]) -> int:
    """The pid of the live process started with exactly ``argv``."""
    wanted = "\0".join(argv) + "\0"
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "cmdline").read_text() == wanted:
                    return int(entry.name)
    raise RuntimeError(f"no process runs {shlex.join(argv)}")


# -- the agent ----------------------------------------------------------------------------------

_METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` in Prometheus text whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        m = _METRIC_LINE.match(line)
        if m is None or m.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total


def agent_env() -> dict[str, str]:
    """Extra environment for every agent: PYTHONPATH passes through, to bench another checkout."""
    return {"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}


_HELP_CACHE: dict[str, str] = {}


async def agent_help() -> str:
    if "agent" not in _HELP_CACHE:
        result = await run([sys.executable, "-m", "podiam", "agent", "--help"], timeout=60)
        _HELP_CACHE["agent"] = result.stdout
    return _HELP_CACHE["agent"]


async def agent_has_flag(flag: str) -> bool:
    return re.search(rf"(^|[\s,]){re.escape(flag)}([\s=,]|$)", await agent_help(), re.MULTILINE) is not None


async def wait_for(check: Any, timeout: float, what: str, interval: float = 0.02) -> float:
    """Poll the async ``check`` until true; returns the seconds waited; TimeoutError names ``what``.

    Used to wait for a state of a peer (moto's count, the agent's gauge), never as a delay.
    """
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(interval)
    return time.monotonic() - started


# -- subprocesses ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def check(self) -> Completed:
        if self.returncode != 0:
            raise RuntimeError(f"{shlex.join(self.argv)} exited {self.returncode}: "
                               f"{(self.stderr.strip() or self.stdout.strip())[-1500:]}")
        return self


async def stop_process(process: asyncio.subprocess.Process, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Signal the process group and wait; SIGKILL the group if it does not end in time."""
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    try:
        async with asyncio.timeout(timeout):
            await process.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()


async def run(argv: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None,
              stdin: bytes | None = None) -> Completed:
    """Run argv in its own process group; on timeout or cancellation the group is killed."""
    process = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, start_new_session=True,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await process.communicate(stdin)
    finally:
        await stop_process(process, signal.SIGKILL, 5.0)
    assert process.returncode is not None
    return Completed(tuple(argv), process.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


@contextlib.asynccontextmanager
async def spawned(argv: Sequence[str], *, env: Mapping[str, str] | None = None, stdout: Any = None,
                  stderr: Any = None, stdin: Any = asyncio.subprocess.DEVNULL,
                  stop_signal: int = signal.SIGTERM,
                  line_limit: int = 2**16) -> AsyncIterator[asyncio.subprocess.Process]:
    """A long-running process for the block's duration; always stopped (group-wide) at exit.
    ``line_limit``: the longest line its piped output may be read by (readline), in bytes."""
    process = await asyncio.create_subprocess_exec(*argv, env=env, stdout=stdout, stderr=stderr, stdin=stdin,
                                                   start_new_session=True, limit=line_limit)
    try:
        yield process
    finally:
        await stop_process(process, stop_signal)


async def http_get(port: int, path: str, host: str = "127.0.0.1", timeout: float = 5.0) -> tuple[int, str]:
    """One plain HTTP/1.0 GET (status, body); raises OSError when nothing listens yet."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            data = await reader.read()
        finally:
            writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body.decode(errors="replace")
