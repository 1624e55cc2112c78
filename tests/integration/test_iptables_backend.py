"""--iptables-mode against the real backends: both are installed here and the kernel runs both.

Each test runs podiam's code inside a fresh network namespace (a pod of a PodNetwork, run with
``ip netns exec``): its legacy and nft tables start empty and are the test's alone, so the
tables of the machine (and of tests running beside these) are never read or written, and the
namespace's tables go with it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator

import pytest

from podiam_sandbox.netns import Pod, PodNetwork

pytestmark = pytest.mark.root

CHOOSE = """\
import asyncio, json, sys
from podiam.node.backend import choose_backend
backend = asyncio.run(choose_backend(sys.argv[1]))
print(json.dumps({"mode": backend.mode, "binary": backend.binary, "reason": backend.reason}))
"""

# The agent's calls on its rule, each with the chosen backend's binary: install (twice: no
# second copy), the guard's check and restore, removal.
LIFECYCLE = """\
import asyncio, json, sys
from podiam.node.backend import choose_backend
from podiam.node.iptables import DnatRule, ensure_rule, remove_rule, rule_count
from podiam.node.rule_guard import IptablesRules

async def main():
    backend = await choose_backend(sys.argv[1])
    rule = DnatRule(interface="eth0", host_ip="10.213.255.1", host_port=18181)
    guard = IptablesRules(rule, binary=backend.binary)
    out = {"mode": backend.mode, "added": [await ensure_rule(rule, binary=backend.binary),
                                           await ensure_rule(rule, binary=backend.binary)]}
    out["count"] = await rule_count(rule, binary=backend.binary)
    out["present"] = await guard.present()
    out["removed"] = await remove_rule(rule, binary=backend.binary)
    out["present_after_removal"] = await guard.present()
    await guard.restore()
    out["restored"] = await rule_count(rule, binary=backend.binary)
    print(json.dumps(out))

asyncio.run(main())
"""


@pytest.fixture
async def pod() -> AsyncIterator[Pod]:
    async with PodNetwork() as net:
        yield await net.add_pod("tables")


async def run(pod: Pod, *argv: str) -> str:
    return (await pod.run(list(argv))).check().stdout


async def choose(pod: Pod, mode: str = "auto") -> dict[str, str]:
    return json.loads(await run(pod, sys.executable, "-c", CHOOSE, mode))  # type: ignore[no-any-return]


async def add_rules(pod: Pod, binary: str, count: int, *, ipv6: bool = False) -> None:
    source = "fd00::{}/128" if ipv6 else "198.51.100.{}/32"
    for i in range(count):
        await run(pod, binary, "-w", "5", "-t", "filter", "-A", "INPUT", "-s", source.format(i + 1), "-j", "ACCEPT")


async def rules_in(pod: Pod, backend: str) -> list[str]:
    """The nat PREROUTING rules as that backend lists them."""
    listing = await run(pod, f"iptables-{backend}", "-w", "5", "-t", "nat", "-S", "PREROUTING")
    return [line for line in listing.splitlines() if line.startswith("-A")]


async def test_auto_on_a_node_without_rules_is_nft(pod: Pod) -> None:
    chosen = await choose(pod)
    assert (chosen["mode"], chosen["binary"]) == ("nft", "/usr/sbin/iptables-nft")
    assert chosen["reason"].endswith("iptables-legacy holds 0 rules, iptables-nft 0 (nft unless legacy has more)")


async def test_auto_picks_legacy_when_only_legacy_holds_rules(pod: Pod) -> None:
    await add_rules(pod, "iptables-legacy", 2)
    await add_rules(pod, "ip6tables-legacy", 1, ipv6=True)
    chosen = await choose(pod)
    assert (chosen["mode"], chosen["binary"]) == ("legacy", "/usr/sbin/iptables-legacy")
    assert "iptables-legacy holds 3 rules, iptables-nft 0" in chosen["reason"]


async def test_auto_picks_nft_when_nft_holds_the_rules(pod: Pod) -> None:
    await add_rules(pod, "iptables-nft", 3)
    await add_rules(pod, "iptables-legacy", 1)
    chosen = await choose(pod)
    assert chosen["mode"] == "nft"
    assert "iptables-legacy holds 1 rules, iptables-nft 3" in chosen["reason"]


async def test_kubelets_marker_chain_outweighs_the_rule_counts(pod: Pod) -> None:
    # kubelet made its canary chain with iptables-legacy; nft holds more rules (another tool's).
    await run(pod, "iptables-legacy", "-w", "5", "-t", "mangle", "-N", "KUBE-KUBELET-CANARY")
    await add_rules(pod, "iptables-nft", 5)
    chosen = await choose(pod)
    assert (chosen["mode"], chosen["reason"]) == ("legacy", "kubelet's marker chain is in iptables-legacy's tables")
    # And in iptables-nft's mangle table, nft's marker comes first.
    await run(pod, "iptables-nft", "-w", "5", "-t", "mangle", "-N", "KUBE-IPTABLES-HINT")
    chosen = await choose(pod)
    assert (chosen["mode"], chosen["reason"]) == ("nft", "kubelet's marker chain is in iptables-nft's mangle table")


@pytest.mark.parametrize(("mode", "backend", "other"), [
    ("nft", "nft", "legacy"), ("legacy", "legacy", "nft"), ("auto", "nft", "legacy"),
])
async def test_the_rule_lives_in_the_chosen_backend_only(pod: Pod, mode: str, backend: str, other: str) -> None:
    out = json.loads(await run(pod, sys.executable, "-c", LIFECYCLE, mode))
    assert out["mode"] == backend
    assert (out["added"], out["count"], out["present"]) == ([True, False], 1, True)
    assert (out["removed"], out["present_after_removal"], out["restored"]) == (1, False, 1)
    [line] = await rules_in(pod, backend)
    assert "--to-destination 10.213.255.1:18181" in line
    assert await rules_in(pod, other) == []  # the other backend's tools do not see it
