"""
The image on the sandbox node: `podman run` of the image is the agent (root, NET_ADMIN and
NET_RAW only, read-only root, the node's network) and, in split mode, the server too (its
non-root user, no capability), against the test world's API emulator and moto's STS; a pod's
SDK gets its own role through the DNAT rule the agent in the container installed, and the rule
is gone once the agent stops.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from podiam import cli
from podiam.node.iptables import DnatRule, rule_count
from podiam_sandbox.split import FlagRoute
from podiam_sandbox.world import ACCOUNT, MODES, Mode, World

pytestmark = [pytest.mark.root, pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

LAUNCHER = Path(__file__).with_name("podman_podiam.py")


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=MODES)
async def world(request: pytest.FixtureRequest, image: str) -> AsyncIterator[World]:
    mode: Mode = request.param
    route = FlagRoute.from_click(cli.agent, cli.SERVER_POLICY_FLAGS) if mode == "split" else None
    async with World(mode=mode, flag_route=route,
                     podiam_command=[sys.executable, str(LAUNCHER), image]) as w:
        yield w


async def test_a_pod_gets_its_role_from_the_agent_in_the_image(world: World) -> None:
    agent = await world.start_agent("--pod-wait", "5s")
    rule = DnatRule(interface=world.net.bridge_name, host_ip=world.net.gateway_ip,
                    host_port=int(agent.option("--app-port")))
    try:
        pod = await world.add_pod("web", "team-a", role="app-role")
        assert await pod.boto3_caller_arn() == f"arn:aws:sts::{ACCOUNT}:assumed-role/app-role/team-a.web"
        assert await rule_count(rule) == 1
    finally:
        assert await agent.stop() == 0
    assert await rule_count(rule) == 0
