"""
Safe node start-up (--node-ready-taint), through real processes in both modes: the node joins
with the taint and another one; once the agent is ready (its rule installed, its pods known)
the taint goes and the other stays. In agent mode the agent removes it; in split mode the
server does (its own flag), when the agent, which has no API access, reports ready. An agent
that cannot install its rule (no CAP_NET_ADMIN) stops at start, and the taint stays.
"""

from __future__ import annotations

import pytest

from podiam_sandbox.world import ACCOUNT, World, WorldError, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module"), pytest.mark.modes("agent", "split")]

KEY = "podiam.io/agent-not-ready"
OURS = {"key": KEY, "value": "true", "effect": "NoSchedule"}
OTHER = {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}
NO_NET_ADMIN = ("setpriv", "--bounding-set=-net_admin")
"""Runs the agent without CAP_NET_ADMIN, as a DaemonSet that forgot to add it: iptables is refused."""


async def test_the_taint_goes_once_the_agent_is_ready_and_no_other_taint_does(world: World) -> None:
    await world.set_node_taints([OURS, OTHER])
    agent = await world.start_agent("--node-ready-taint", KEY)
    try:
        async def untainted() -> bool:
            return await world.node_taints() == [OTHER]

        await wait_until(untainted, 15, "the node-ready taint to go")
        # A pod scheduled now is already behind the rule: it gets its own role, not the node's.
        pod = await world.add_pod("first-after-taint", "team-t", role="role-t")
        assert await pod.boto3_caller_arn() == f"arn:aws:sts::{ACCOUNT}:assumed-role/role-t/team-t.first-after-taint"
        # Logged once, where it was removed: the agent in agent mode, the server in split mode.
        assert agent.policy_process.logs().count("node-ready taint removed") == 1
        assert "iptables backend chosen" in agent.logs()
    finally:
        assert await agent.stop() == 0
    assert await world.node_taints() == [OTHER]  # not put back at shutdown


async def test_a_node_without_the_taint_is_left_as_it_is(world: World) -> None:
    await world.set_node_taints([OTHER])
    agent = await world.start_agent("--node-ready-taint", KEY)
    try:
        async def checked() -> bool:
            return "node-ready taint already absent" in agent.policy_process.logs()

        await wait_until(checked, 15, "the agent's (or server's) look at the node")
        assert await world.node_taints() == [OTHER]
    finally:
        assert await agent.stop() == 0


async def test_an_agent_that_cannot_install_its_rule_leaves_the_taint(world: World) -> None:
    await world.set_node_taints([OURS, OTHER])
    with pytest.raises(WorldError, match="exited with 1 at start"):
        await world.start_agent("--node-ready-taint", KEY, wrapper=NO_NET_ADMIN)
    agent = world.agents[-1]
    assert "podiam needs root or CAP_NET_ADMIN for --iptables" in agent.logs()
    # The agent is gone without reporting ready (split mode: its server, ready and with the flag,
    # was never asked), so the node takes no pods until an agent that can protect them starts.
    assert await world.node_taints() == [OURS, OTHER]
    assert "node-ready taint" not in agent.policy_process.logs()
    if agent.server is not None:
        assert "podiam_server_ready_reports_total{" not in await agent.server.metrics()
        await agent.server.stop()
