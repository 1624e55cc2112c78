"""
Split mode's failover with the shipped processes, through the real DNAT path (issue 9): two
``podiam server`` replicas the test starts itself, a split agent given both addresses, and pods
running an SDK's credential flow in a loop (imds_loop.py, in each pod's network namespace).

1. The replica the agent streams from is killed (SIGKILL) while the pods fetch credentials.
2. Both replicas are down for two minutes while the pods fetch credentials; then one restarts
   on its port.

tests/integration/test_remote_failover.py proves the same and more in one process; this proves
it of the real processes, with the agent's production back-off (0.2 s to 5 s: no flag sets it).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from itertools import pairwise
from pathlib import Path
from typing import Any, Self

import pytest

from podiam.decision import REFUSALS
from podiam.errors import NoServerReachable
from podiam.remote.client import StreamSettings
from podiam_sandbox.netns import CommandResult
from podiam_sandbox.world import ACCOUNT, BASE_ARN, AgentProcess, PodiamProcess, World, WorldPod, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module"),
              pytest.mark.modes("split", why="failover between podiam server replicas is split mode's own")]

CREDS = "/latest/meta-data/iam/security-credentials/"
LOOP = Path(__file__).with_name("imds_loop.py")
NAMESPACE = "failover"
OUTAGE = 120.0
"""Seconds both replicas are down: the issue's two minutes."""
POD_WAIT = 1.0
"""Seconds the agent waits for an unknown pod (--pod-wait) before it answers."""
RETRY_MAX = StreamSettings(()).retry_max
"""The agent's reconnect back-off cap."""


class Loops:
    """Each pod running imds_loop.py until the block exits; what they did, read while they run."""

    def __init__(self, pods: list[tuple[WorldPod, str]], directory: Path, max_seconds: float) -> None:
        self.pods = pods
        """Each pod with the role it is annotated with."""
        self._dir, self._max = directory, max_seconds
        self._tasks: list[asyncio.Task[CommandResult]] = []
        self.results: list[CommandResult | BaseException] = []

    def _out(self, pod: WorldPod) -> Path:
        return self._dir / f"{pod.name}.jsonl"

    def flows(self, pod: WorldPod) -> list[dict[str, Any]]:
        path = self._out(pod)
        lines = path.read_text().splitlines(keepends=True) if path.exists() else []
        return [json.loads(line) for line in lines if line.endswith("\n")]  # a line being written waits

    def served_since(self, since: float) -> int:
        """Successful flows started at monotonic time ``since`` or later, of the pod with the fewest."""
        return min(sum(1 for f in self.flows(p) if f["ok"] and f["start"] >= since) for p, _ in self.pods)

    def total(self) -> int:
        return sum(len(self.flows(p)) for p, _ in self.pods)

    def wrong(self) -> list[tuple[str, dict[str, Any]]]:
        """Every flow that failed, or was served a role other than its pod's."""
        return [(p.name, f) for p, role in self.pods for f in self.flows(p)
                if not f["ok"] or f["role"] != role]

    def longest_gap(self, start: float, end: float) -> float:
        """Seconds of the longest time any pod went without a flow ending, between ``start`` and ``end``."""
        gaps = []
        for p, _ in self.pods:
            ends = [start, *sorted(float(f["end"]) for f in self.flows(p) if start <= f["end"] <= end), end]
            gaps.append(max(b - a for a, b in pairwise(ends)))
        return max(gaps)

    async def __aenter__(self) -> Self:
        self._dir.mkdir(parents=True)
        argv = [sys.executable, "-I", str(LOOP)]
        self._tasks = [
            asyncio.create_task(pod.run([*argv, str(self._out(pod)), str(self._dir / "stop"),
                                         "--max-seconds", str(self._max)], timeout=self._max + 30),
                                name=f"imds-loop-{pod.name}")
            for pod, _ in self.pods
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        (self._dir / "stop").touch()
        self.results = await asyncio.gather(*self._tasks, return_exceptions=True)

    def exited_cleanly(self) -> bool:
        return all(isinstance(r, CommandResult) and r.returncode == 0 for r in self.results)


def holds(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    """A synchronous check in wait_until's form."""
    async def probe() -> bool:
        return check()
    return probe


async def sample(process: PodiamProcess, name: str) -> float:
    """A sample of the process's /metrics (``name`` with its labels, if any); a labelled
    metric named without labels is the sum of its samples."""
    total = 0.0
    for line in (await process.metrics()).splitlines():
        if line.startswith((name + " ", name + "{")):
            total += float(line.rsplit(" ", 1)[1])
    return total


def assumed(role: str, pod: WorldPod) -> str:
    return f"arn:aws:sts::{ACCOUNT}:assumed-role/{role}/{pod.namespace}.{pod.name}"


async def add_pods(world: World, roles: dict[str, str]) -> list[tuple[WorldPod, str]]:
    """A pod per name with its role, and the role."""
    return [(await world.add_pod(name, NAMESPACE, role=role), role) for name, role in roles.items()]


async def served_once(pods: list[tuple[WorldPod, str]]) -> None:
    """Before the loops: the agent has each pod and its credentials from the first replica."""
    for pod, role in pods:
        async def served(pod: WorldPod = pod, role: str = role) -> bool:
            return (await pod.http("GET", CREDS + role)).status == 200
        await wait_until(served, what=f"pod {pod.name} served")


async def identities_called(world: World) -> Counter[tuple[str, str]]:
    """moto's AssumeRole calls so far, by (role ARN, session name)."""
    return Counter((c.role_arn, c.session_name) for c in await world.sts.assume_role_calls())


async def cleanup(world: World, agent: AgentProcess, pods: list[WorldPod]) -> None:
    """Stop the agent and every replica, and delete the pods: the next test's replicas list none of them."""
    await agent.stop()
    for server in world.servers:
        await server.stop()
    for pod in pods:
        await world.delete_pod(pod)


# -- 1. the replica the agent streams from is killed ---------------------------------------------

async def test_killing_the_replica_the_agent_streams_from_fails_no_request(world: World, tmp_path: Path) -> None:
    a, b = await asyncio.gather(world.start_server(), world.start_server())
    agent = await world.start_split_agent(servers=[a, b])
    pods = await add_pods(world, {"kill-a1": "role-a", "kill-a2": "role-a", "kill-b": "role-b", "kill-c": "role-c"})
    late = None
    try:
        await served_once(pods)
        async with Loops(pods, tmp_path / "loops", max_seconds=60) as loops:
            await wait_until(holds(lambda: loops.served_since(0) >= 3), what="every pod's loop served")
            streams = {s: await sample(s, "podiam_server_streams") for s in (a, b)}
            assert sorted(streams.values()) == [0, 1]
            victim = next(s for s, n in streams.items() if n == 1)
            survivor = b if victim is a else a
            killed = time.monotonic()
            assert await victim.stop(signal.SIGKILL) == -signal.SIGKILL

            async def on_survivor() -> bool:
                return (await sample(survivor, "podiam_server_streams") == 1
                        and await sample(agent, "podiam_remote_connected") == 1)

            await wait_until(on_survivor, what="the agent streaming from the other replica")
            moved = time.monotonic() - killed
            late = await world.add_pod("kill-late", NAMESPACE, role="role-late")  # only the survivor sees it
            assert await late.boto3_caller_arn() == assumed("role-late", late)
            await wait_until(holds(lambda: loops.served_since(killed) >= 10),
                             what="the loops served after the kill")
        after_kill = loops.served_since(killed)
        assert loops.exited_cleanly(), loops.results
        assert loops.wrong() == []  # 0 failed requests over the whole loop, each pod its own role
        assert await sample(agent, "podiam_remote_rpcs_total") == 2  # one stream per replica, none per request
        assert await sample(agent, "podiam_remote_stream_failures_total") == 1
        assert await sample(survivor, "podiam_server_streams") == 1
        print(f"\nSIGKILL of the streaming replica: the agent on the other {moved:.2f} s later; "
              f"{loops.total()} flows of {len(pods)} pods, none failed; at least {after_kill} per pod after the kill")
        assert await agent.stop() == 0
    finally:
        await cleanup(world, agent, [*(p for p, _ in pods), *([late] if late else [])])


# -- 2. both replicas down for two minutes, then one returns ---------------------------------------

@pytest.mark.timeout(OUTAGE + 90)
async def test_with_both_replicas_down_for_two_minutes_known_pods_are_served_and_a_new_one_once_one_returns(
        world: World, tmp_path: Path) -> None:
    a, b = await asyncio.gather(world.start_server(), world.start_server())
    agent = await world.start_split_agent("--pod-wait", f"{POD_WAIT:g}s", servers=[a, b])
    pods = await add_pods(world, {"outage-x": "role-x", "outage-y1": "role-y", "outage-y2": "role-y"})
    newcomer = None
    row = REFUSALS[NoServerReachable]
    try:
        await served_once(pods)
        async with Loops(pods, tmp_path / "loops", max_seconds=OUTAGE + 60) as loops:
            await wait_until(holds(lambda: loops.served_since(0) >= 3), what="every pod's loop served")
            down = time.monotonic()
            assert list(await asyncio.gather(a.stop(signal.SIGKILL), b.stop(signal.SIGKILL))) == [-signal.SIGKILL] * 2
            calls_before = await identities_called(world)

            async def disconnected() -> bool:
                return await sample(agent, "podiam_remote_connected") == 0

            await wait_until(disconnected, what="the agent without a server")
            newcomer = await world.add_pod("outage-new", NAMESPACE, role="role-new")  # no server sees it
            started = time.monotonic()
            refused = await newcomer.http("GET", CREDS + "role-new")
            waited = time.monotonic() - started
            assert (refused.status, refused.body.decode()) == (row.status, (
                f"no pod with IP {newcomer.ip} is known to this node's agent and no podiam server is reachable "
                "to learn of it (it keeps trying); retry shortly\n"))
            assert POD_WAIT <= waited < POD_WAIT + 3
            assert await sample(agent, f'podiam_imds_refusals_total{{reason="{row.reason}"}}') == 1

            await wait_until(holds(lambda: time.monotonic() - down >= OUTAGE), timeout=OUTAGE + 10,
                             what="two minutes without a server")
            outage_end = time.monotonic()
            assert await disconnected()
            attempts = await sample(agent, "podiam_remote_stream_failures_total")
            served_in_outage = loops.served_since(down)
            gap = loops.longest_gap(down, outage_end)

            restarting = time.monotonic()
            restarted = await world.restart_server(b)  # either would do: each is reached within one capped wait
            returned = time.monotonic()
            assert restarted.address == b.address  # its port: the agent's --server-address names it

            async def newcomer_served() -> bool:
                assert newcomer is not None
                return (await newcomer.http("GET", CREDS + "role-new")).status == 200

            await wait_until(newcomer_served, timeout=RETRY_MAX + 3, what="the new pod served by the returned replica")
            recovery = time.monotonic() - returned
            assert await newcomer.boto3_caller_arn() == assumed("role-new", newcomer)
            in_use = Counter((BASE_ARN + role, f"{NAMESPACE}.{pod.name}")
                             for pod, role in [*pods, (newcomer, "role-new")])

            async def prefetched() -> bool:
                return await identities_called(world) - calls_before == in_use

            await wait_until(prefetched, what="the restarted replica's AssumeRole calls")
            await wait_until(holds(lambda: loops.served_since(returned + recovery) >= 5),
                             what="the loops served after the return")
            after_restart = await identities_called(world) - calls_before
        assert loops.exited_cleanly(), loops.results
        assert loops.wrong() == []  # known pods: not one failed request, before, during or after the outage
        assert after_restart == in_use  # once per identity in use: no storm
        assert await sample(restarted, "podiam_server_streams") == 1
        print(f"\nboth replicas down {outage_end - down:.0f} s: {served_in_outage}+ flows per known pod, none "
              f"failed, longest gap {gap:.2f} s; the new pod got {row.status} after {waited:.2f} s "
              f"(--pod-wait {POD_WAIT:g}s); the agent made {attempts:.0f} failed attempts; the restarted replica "
              f"was ready {returned - restarting:.2f} s after its start and served the new pod {recovery:.2f} s "
              f"later (back-off cap {RETRY_MAX:g} s); AssumeRole calls after the restart: "
              f"{sum(after_restart.values())} for {len(in_use)} identities in use")
        assert served_in_outage >= OUTAGE / 2  # at least one flow every two seconds, in fact many per second
        assert await agent.stop() == 0
    finally:
        await cleanup(world, agent, [*(p for p, _ in pods), *([newcomer] if newcomer else [])])
