"""
Scenario 8's simulated agents: one process holding many split-mode agents, one per node,
each a real WatchNode stream over mutual TLS (podiam's own ``ServerStream``) into a real
``Mirror`` over a real ``PodIndex``: the agent's own code from the socket to the index, so
"the node's agent knows the pod" is exactly what a split agent knows, the moment its index
resolves the pod's IP. Only the metadata endpoint and the iptables rule are left out.

A process of its own, so that the measuring process (which writes the IPs into the API and
reads the clock) and the fleet do not share an event loop. Protocol, JSON lines:

  stdin, first line:  {"address": "127.0.0.1:PORT", "server_name": "...", "cert": PATH,
                       "key": PATH, "ca": PATH, "nodes": ["scale-0", ...]}
  then one command a line: "status" or "report"; "stop" (or the end of input) stops every
  stream and exits.
  stdout: one JSON object per command, nothing else (logs go to stderr).

Times are ``time.monotonic()``: CLOCK_MONOTONIC, one clock for every process of the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from podiam.credentials import Identity
from podiam.kube.pod_index import PodIndex
from podiam.observability.logging import configure
from podiam.observability.metrics import Metrics
from podiam.pods import PodEntry, PodInfo
from podiam.remote.client import ServerStream, StreamSettings
from podiam.remote.mirror import Mirror
from podiam.remote.tls import TlsFiles
from podiam.settings import LogSettings

Seen = dict[str, tuple[str, float]]
"""Pod IP -> (the node whose agent learnt it first, monotonic seconds then)."""


class FirstSeen:
    """Pod index listener: when each pod's IP first became resolvable on this node."""

    def __init__(self, node: str, seen: Seen) -> None:
        self._node, self._seen = node, seen

    def pod_active(self, entry: PodEntry) -> None:
        ip = entry.pod.ip
        if ip is not None and ip not in self._seen:
            self._seen[ip] = (self._node, time.monotonic())

    def pod_gone(self, entry: PodEntry) -> None:
        pass


@dataclass
class SimulatedAgent:
    node: str
    mirror: Mirror
    index: PodIndex
    metrics: Metrics
    task: asyncio.Task[None]

    def servable(self) -> int:
        """Pods this agent could answer now: known, with an identity, and its credentials at hand."""
        return sum(1 for e in self.index.entries() if e.identity is not None and self.mirror.fresh(e.identity))


def _counter(metrics: Metrics, name: str) -> float:
    """The sum of a counter's samples (all labels) in one agent's registry."""
    return sum(s.value for m in metrics.registry.collect() for s in m.samples if s.name == name)


def start_agent(node: str, job: dict[str, Any], seen: Seen) -> SimulatedAgent:
    indexes: list[PodIndex] = []

    def make_index(decide: Callable[[PodInfo], Identity]) -> PodIndex:
        index = PodIndex(decide)
        index.subscribe(FirstSeen(node, seen))
        indexes.append(index)
        return index

    mirror = Mirror(make_index, node)
    metrics = Metrics()
    stream = ServerStream(mirror, TlsFiles(job["cert"], job["key"], job["ca"]),
                          StreamSettings((job["address"],), server_name=job["server_name"]), metrics)
    task = asyncio.create_task(stream.run(), name=f"fleet-stream-{node}")
    return SimulatedAgent(node, mirror, indexes[0], metrics, task)


def status(agents: list[SimulatedAgent], seen: Seen) -> dict[str, Any]:
    return {
        "synced": sum(a.mirror.synced.is_set() for a in agents),
        "connected": sum(a.mirror.connected for a in agents),
        "mirrored": sum(len(a.mirror) for a in agents),
        "known": len(seen),
    }


def report(agents: list[SimulatedAgent], seen: Seen) -> dict[str, Any]:
    return {
        **status(agents, seen),
        "seen": {ip: [node, t] for ip, (node, t) in seen.items()},
        "servable": sum(a.servable() for a in agents),
        "rpcs": sum(_counter(a.metrics, "podiam_remote_rpcs_total") for a in agents),
        "stream_failures": sum(_counter(a.metrics, "podiam_remote_stream_failures_total") for a in agents),
    }


async def _lines() -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=1 << 20)
    await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


def _answer(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


async def main() -> None:
    configure(LogSettings(level="warning"))  # to stderr: stdout carries only the answers
    reader = await _lines()
    job: dict[str, Any] = json.loads(await reader.readline())
    seen: Seen = {}
    agents = [start_agent(node, job, seen) for node in job["nodes"]]
    try:
        while (line := (await reader.readline()).decode().strip()) not in ("", "stop"):
            if line == "status":
                _answer(status(agents, seen))
            elif line == "report":
                _answer(report(agents, seen))
            else:
                _answer({"error": f"unknown command {line[:40]!r}"})
    finally:
        for agent in agents:
            agent.task.cancel()
        for agent in agents:
            with contextlib.suppress(asyncio.CancelledError):
                await agent.task


if __name__ == "__main__":
    try:
        import uvloop  # the agent's own loop where installed (podiam.cli)
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
