"""The DNAT rule against real iptables: idempotence, removal, and pod traffic really redirected.

Every rule names a bridge created for the test (or, for the negated rule, a TEST-NET-2
destination nothing uses), so these tests never touch other traffic on the machine; rules
are removed in fixture teardown even when a test fails.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from podiam.errors import ConfigError
from podiam.node.iptables import RULE_COMMENT, DnatRule, ensure_rule, remove_rule, rule_count
from podiam_sandbox.netns import PodNetwork
from podiam_sandbox.peer_server import PeerServer

UNUSED_DESTINATION = "198.51.100.254"  # TEST-NET-2: no traffic on this machine goes there


async def iptables(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        "iptables",
        "-w",
        "5",
        "-t",
        "nat",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(10):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def our_lines(marker: str) -> list[str]:
    """The nat PREROUTING rules that mention ``marker`` (a test's bridge), in chain order."""
    return [line for line in (await iptables("-S", "PREROUTING")).splitlines() if marker in line]


@pytest.fixture
async def net() -> AsyncIterator[PodNetwork]:
    async with PodNetwork() as network:
        yield network


@pytest.fixture
async def installed() -> AsyncIterator[Callable[[DnatRule], DnatRule]]:
    """Registers rules for removal at teardown, whatever the test did."""
    rules: list[DnatRule] = []

    def register(rule: DnatRule) -> DnatRule:
        rules.append(rule)
        return rule

    yield register
    for rule in rules:
        await remove_rule(rule)
        assert await rule_count(rule) == 0


@pytest.mark.root
async def test_ensure_is_idempotent_and_remove_deletes_it(
    net: PodNetwork, installed: Callable[[DnatRule], DnatRule]
) -> None:
    rule = installed(DnatRule(interface=net.bridge_name, host_ip=net.gateway_ip, host_port=18181))
    assert await rule_count(rule) == 0
    assert await ensure_rule(rule) is True
    assert await ensure_rule(rule) is False  # a second agent start
    assert await rule_count(rule) == 1
    (line,) = await our_lines(net.bridge_name)
    assert f'--comment "{RULE_COMMENT}"' in line
    assert f"-j DNAT --to-destination {net.gateway_ip}:18181" in line
    assert await remove_rule(rule) == 1
    assert await rule_count(rule) == 0
    assert await our_lines(net.bridge_name) == []
    assert await remove_rule(rule) == 0  # absent is fine


@pytest.mark.root
async def test_remove_deletes_every_copy(net: PodNetwork, installed: Callable[[DnatRule], DnatRule]) -> None:
    rule = installed(DnatRule(interface=net.bridge_name, host_ip=net.gateway_ip, host_port=18181))
    for _ in range(3):  # as left by agents that appended without checking
        await iptables("-A", "PREROUTING", *rule.spec())
    assert await rule_count(rule) == 3
    assert await ensure_rule(rule) is False
    assert await remove_rule(rule) == 3
    assert await rule_count(rule) == 0


@pytest.mark.root
async def test_rule_goes_before_existing_rules(
    net: PodNetwork, installed: Callable[[DnatRule], DnatRule]
) -> None:
    # An earlier rule that would otherwise see the traffic first (scoped to the test's bridge).
    shadow = ["PREROUTING", "-i", net.bridge_name, "-p", "tcp", "-j", "RETURN"]
    await iptables("-A", *shadow)
    try:
        rule = installed(DnatRule(interface=net.bridge_name, host_ip=net.gateway_ip, host_port=18181))
        await ensure_rule(rule)
        first = (await iptables("-S", "PREROUTING")).splitlines()[1]  # after the policy line
        assert rule.matches(first)
    finally:
        await iptables("-D", *shadow)


@pytest.mark.root
@pytest.mark.parametrize(
    ("pattern", "printed"),
    [
        pytest.param("!{bridge}", "! -i {bridge} ", id="negated"),
        pytest.param("{bridge}+", "-i {bridge}+ ", id="wildcard"),
        pytest.param("!{bridge}+", "! -i {bridge}+ ", id="negated-wildcard"),
    ],
)
async def test_negated_and_wildcard_interfaces(
    net: PodNetwork, installed: Callable[[DnatRule], DnatRule], pattern: str, printed: str
) -> None:
    rule = installed(
        DnatRule(
            interface=pattern.format(bridge=net.bridge_name),
            host_ip=net.gateway_ip,
            host_port=18181,
            metadata_ip=UNUSED_DESTINATION,
        )
    )
    assert await ensure_rule(rule) is True
    assert await ensure_rule(rule) is False
    (line,) = await our_lines(net.bridge_name)
    assert printed.format(bridge=net.bridge_name) in line
    assert await rule_count(rule) == 1
    assert await remove_rule(rule) == 1


def test_bad_patterns_are_config_errors() -> None:
    for pattern in ("eth 0", "a/b", "x" * 16, "!", ""):
        with pytest.raises(ConfigError, match="interface pattern"):
            DnatRule(interface=pattern, host_ip="10.0.0.1", host_port=8181)


@pytest.mark.root
@pytest.mark.parametrize("wildcard", [False, True], ids=["exact", "wildcard"])
async def test_pod_metadata_traffic_reaches_the_agent_with_the_pods_ip(
    net: PodNetwork, installed: Callable[[DnatRule], DnatRule], wildcard: bool
) -> None:
    a, b = await asyncio.gather(net.add_pod("a"), net.add_pod("b"))
    async with PeerServer(net.gateway_ip) as agent:
        interface = net.bridge_name + ("+" if wildcard else "")
        rule = installed(DnatRule(interface=interface, host_ip=net.gateway_ip, host_port=agent.port))
        assert await ensure_rule(rule) is True
        for pod in (a, b):
            response = await pod.http("GET", "/latest/meta-data/iam/security-credentials/")
            assert response.status == 200
            assert response.body == pod.ip.encode()  # the agent can tell the pods apart
        assert agent.peers == [a.ip, b.ip]
