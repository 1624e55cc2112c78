"""World's checks for tests that run podiam server replicas themselves: each refuses before
anything starts, so a mistaken test fails with what it did wrong, not with a process that
shares a live port or an agent given the servers' flags. (Starting and restarting real
replicas is tests/e2e/test_split_failover.py's subject: it needs root.)"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from podiam_sandbox.split import FlagRoute
from podiam_sandbox.world import ServerProcess, World, WorldError

ROUTE = FlagRoute(server=frozenset({"--base-role-arn", "--no-pod-events"}),
                  valued=frozenset({"--base-role-arn", "--pod-wait", "--kubeconfig"}))


def replica(tmp_path: Path) -> ServerProcess:
    """A replica's process object, as start_server makes it (not started: its returncode is None)."""
    argv = [sys.executable, "-m", "podiam", "server", "--bind", "127.0.0.1:9610", "--metrics-port", "9620"]
    return ServerProcess(argv, {}, tmp_path / "server.log", 9620)


async def test_a_split_agent_of_running_replicas_is_refused_the_servers_flags(tmp_path: Path) -> None:
    world = World(mode="split", flag_route=ROUTE)
    for flags in (("--base-role-arn", "arn:aws:iam::1:role/"), ("--pod-wait", "1s", "--no-pod-events")):
        with pytest.raises(WorldError, match="give the servers' flags to start_server"):
            await world.start_split_agent(*flags, servers=[replica(tmp_path)])
    with pytest.raises(WorldError, match="must not be given --kubeconfig"):
        await world.start_split_agent("--kubeconfig", "/etc/kube", servers=[replica(tmp_path)])
    assert world.agents == [] and world.servers == []  # refused before anything started


async def test_a_split_agent_needs_a_split_world_and_a_server(tmp_path: Path) -> None:
    with pytest.raises(WorldError, match="at least one server"):
        await World(mode="split", flag_route=ROUTE).start_split_agent(servers=[])
    with pytest.raises(WorldError, match="split-mode world"):
        await World().start_split_agent(servers=[replica(tmp_path)])


async def test_a_replica_that_has_not_exited_is_not_restarted(tmp_path: Path) -> None:
    world = World(mode="split", flag_route=ROUTE)
    with pytest.raises(WorldError, match=r"127\.0\.0\.1:9610 has not exited"):
        await world.restart_server(replica(tmp_path))
    assert world.servers == []
