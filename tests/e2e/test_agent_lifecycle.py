"""
Agent configurations and lifecycle through the real DNAT path: default role, IMDSv2
required, the iptables rule across restarts and at SIGTERM, draining at shutdown, and logs that never hold a secret.
Each test runs its own agent; only one agent holds the rule at a time.
"""

from __future__ import annotations

import asyncio
import signal

import aiohttp
import pytest

from podiam.node.iptables import DnatRule, remove_rule, rule_count
from podiam_sandbox.netns import PodHttpError
from podiam_sandbox.world import ACCOUNT, AgentProcess, World, established_from, free_port, wait_until
from sdk_probes import PROBES, probe_caller_arn

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

CREDS = "/latest/meta-data/iam/security-credentials/"


def rule_for(world: World, app_port: int) -> DnatRule:
    return DnatRule(interface=world.net.bridge_name, host_ip=world.net.gateway_ip, host_port=app_port)


async def test_the_default_role_serves_unannotated_pods(world: World) -> None:
    # Also the end-to-end check of the aiohttp server, which must behave as the fast path does.
    agent = await world.start_agent("--default-role", "fallback", "--http-server", "aiohttp")
    try:
        pod = await world.add_pod("plain-default", "team-c")
        assert await pod.boto3_caller_arn() == f"arn:aws:sts::{ACCOUNT}:assumed-role/fallback/team-c.plain-default"
    finally:
        assert await agent.stop() == 0


async def test_required_imdsv2_refuses_tokenless_requests_and_serves_sdks(world: World) -> None:
    agent = await world.start_agent("--require-imdsv2")
    try:
        pod = await world.add_pod("v2-only", "team-c", role="role-v2")
        assert (await pod.http("GET", CREDS)).status == 401
        token = (await pod.http("PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "60"})).body
        assert (await pod.http("GET", CREDS, {"X-aws-ec2-metadata-token": token.decode()})).status == 200
        arn = f"arn:aws:sts::{ACCOUNT}:assumed-role/role-v2/team-c.v2-only"
        assert await pod.boto3_caller_arn() == arn
        assert await pod.cli_caller_arn() == arn
        # Every SDK's default chain sends the token on its GETs, not just asks for one.
        for sdk in PROBES:
            assert await probe_caller_arn(pod, sdk) == arn, sdk
    finally:
        assert await agent.stop() == 0


async def test_the_rule_is_added_once_across_restarts_and_removed_at_sigterm(world: World) -> None:
    port = free_port()
    rule = rule_for(world, port)
    first = await world.start_agent(app_port=port)
    assert await rule_count(rule) == 1
    # A crash (SIGKILL) leaves the rule; the next start must not add a second copy.
    await first.stop(signal.SIGKILL)
    assert await rule_count(rule) == 1
    second = await world.start_agent(app_port=port)
    assert await rule_count(rule) == 1
    pod = await world.add_pod("after-restart", "team-c", role="role-r")
    assert (await pod.http("GET", CREDS)).body == b"role-r"
    assert await second.stop(signal.SIGTERM) == 0
    assert await rule_count(rule) == 0
    assert "iptables rule removed" in second.logs()


async def test_a_rule_deleted_while_the_agent_runs_is_restored_counted_and_told_on_the_node(
    world: World,
) -> None:
    port = free_port()
    rule = rule_for(world, port)
    agent = await world.start_agent("--iptables-check-interval", "200ms", app_port=port)
    try:
        pod = await world.add_pod("after-flush", "team-c", role="role-f")
        assert (await pod.http("GET", CREDS)).body == b"role-f"
        # What a CNI restart or `iptables -t nat -F` does to the rule, limited to ours.
        assert await remove_rule(rule) == 1

        async def restored() -> bool:
            return await rule_count(rule) == 1 and "podiam_iptables_rule_restored_total 1.0" in await agent.metrics()

        await wait_until(restored, 20, "the guard to restore the rule")

        async def told() -> bool:
            return any(e.reason == "IptablesRuleRestored" for e in await world.node_events())

        await wait_until(told, 20, "the Node Warning event")
        [event] = [e for e in await world.node_events() if e.reason == "IptablesRuleRestored"]
        assert event.type == "Warning" and "was missing and has been restored" in event.message
        assert "podiam_iptables_rule_present 1.0" in await agent.metrics()
        assert "iptables rule restored" in agent.logs()
        assert (await pod.http("GET", CREDS)).body == b"role-f"  # pods reach the agent again
    finally:
        assert await agent.stop() == 0
    assert await rule_count(rule) == 0  # the guard stopped first: the removal at shutdown stands


async def test_shutdown_lets_in_flight_requests_finish(world: World) -> None:
    port = free_port()
    agent = await world.start_agent("--pod-wait", "5s", "--shutdown-grace", "10s", app_port=port)
    pod = await world.add_pod("in-flight", "team-c", register=False)
    request = asyncio.create_task(pod.http("GET", CREDS))
    await wait_until(lambda: established_from(pod.ip, port), what="the pod's request to reach the agent")
    stopping = asyncio.create_task(agent.stop(signal.SIGTERM))

    async def stopping_logged() -> bool:
        return "stopping" in agent.logs()

    await wait_until(stopping_logged, what="the agent to begin stopping")
    await world.register(pod, role="role-late")
    async with asyncio.timeout(15):
        resp = await request
        assert await stopping == 0
    assert (resp.status, resp.body) == (200, b"role-late")


def secret_fragments(secret: str, size: int = 12) -> set[str]:
    """Every ``size``-character window of ``secret``: a log that holds part of it leaks too."""
    return {secret[i:i + size] for i in range(max(1, len(secret) - size + 1))}


@pytest.mark.parametrize("log_format", ["json", "text"])
async def test_logs_record_issuance_and_never_a_secret(world: World, log_format: str) -> None:
    agent: AgentProcess = await world.start_agent("--log-format", log_format, "--log-level", "debug")
    name = f"audited-{log_format}"
    try:
        pod = await world.add_pod(name, "team-c", role="role-audit")
        token = (await pod.http("PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "60"})).body
        header = {"X-aws-ec2-metadata-token": token.decode()}
        doc = (await pod.http("GET", CREDS + "role-audit", header)).json()
        await pod.http("GET", CREDS + "role-audit", header)
        await pod.http("GET", CREDS + "someone-else", header)  # a refusal is logged too
        await pod.http("GET", "/latest/meta-data/placement/region", header)  # and a proxied read
    finally:
        assert await agent.stop() == 0
    logs = agent.logs()
    for secret in (doc["SecretAccessKey"], doc["Token"], token.decode()):
        leaked = sorted(f for f in secret_fragments(secret) if f in logs)
        assert not leaked, leaked[:3]
    issued = [line for line in logs.splitlines() if "credentials issued" in line]
    assert len(issued) == 1, issued
    assert doc["AccessKeyId"] in issued[0] and "team-c" in issued[0] and "role-audit" in issued[0]
    assert "role_mismatch" in logs
    assert "node metadata proxied" in logs and "placement/region" in logs


async def test_debug_pods_is_for_loopback_and_the_metrics_bind_address_narrows_the_port(world: World) -> None:
    agent = await world.start_agent("--debug")
    try:
        pod = await world.add_pod("curious", "team-d", role="role-d")
        from_pod = await pod.net.http("GET", "/debug/pods", host=world.net.gateway_ip, port=agent.metrics_port)
        assert from_pod.status == 403  # it would list every pod, IP and role of the node
        assert b"role-d" not in from_pod.body
        assert (await pod.net.http("GET", "/metrics", host=world.net.gateway_ip, port=agent.metrics_port)).status == 200
        async with aiohttp.ClientSession() as http, \
                http.get(f"http://127.0.0.1:{agent.metrics_port}/debug/pods") as resp:
            assert resp.status == 200
            assert "role-d" in await resp.text()
    finally:
        assert await agent.stop() == 0
    narrowed = await world.start_agent("--metrics-bind-address", "127.0.0.1")
    try:
        pod = await world.add_pod("curious-2", "team-d", role="role-d")
        with pytest.raises(PodHttpError) as refused:
            await pod.net.http("GET", "/metrics", host=world.net.gateway_ip, port=narrowed.metrics_port)
        assert refused.value.reason == "ConnectionRefusedError"
    finally:
        assert await narrowed.stop() == 0
