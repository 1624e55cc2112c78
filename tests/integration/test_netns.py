"""Pods as network namespaces: addressing, reachability, isolation, and that nothing is left behind."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from podiam_sandbox.netns import (
    STATE_DIR,
    CommandTimeout,
    PodHttpError,
    PodNetwork,
    SandboxError,
    cleanup_stale,
)
from podiam_sandbox.peer_server import PeerServer

pytestmark = pytest.mark.root


async def ip_json(*args: str) -> list[dict[str, object]]:
    proc = await asyncio.create_subprocess_exec("ip", "-j", *args, stdout=asyncio.subprocess.PIPE)
    async with asyncio.timeout(10):
        out, _ = await proc.communicate()
    assert proc.returncode == 0
    return json.loads(out or b"[]")  # type: ignore[no-any-return]


async def objects_named(fragment: str) -> list[str]:
    """Every netns and link on the machine whose name contains ``fragment``."""
    names = [str(n["name"]) for n in await ip_json("netns", "list")]
    names += [str(link["ifname"]) for link in await ip_json("link", "show")]
    return [n for n in names if fragment in n]


async def dnat_rules_naming(bridge: str) -> int:
    proc = await asyncio.create_subprocess_exec(
        "iptables", "-w", "5", "-t", "nat", "-S", "PREROUTING", stdout=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(10):
        out, _ = await proc.communicate()
    return sum(1 for line in out.decode().splitlines() if f"-i {bridge} " in line)


def state_file(net_id: str) -> Path:
    return STATE_DIR / f"{net_id}.json"


@pytest.fixture
async def net() -> AsyncIterator[PodNetwork]:
    async with PodNetwork() as network:
        yield network


async def test_bridge_and_gateway(net: PodNetwork) -> None:
    assert net.bridge_name.startswith("pdm")
    assert len(net.bridge_name) <= 15
    assert net.gateway_ip == str(net.subnet.network_address + 1)
    (link,) = await ip_json("addr", "show", "dev", net.bridge_name)
    assert "UP" in link["flags"]  # type: ignore[operator]
    assert [a["local"] for a in link["addr_info"] if a["family"] == "inet"] == [net.gateway_ip]  # type: ignore[attr-defined]


async def test_pods_get_distinct_ips_and_reach_the_gateway_from_their_own_ip(net: PodNetwork) -> None:
    a, b = await asyncio.gather(net.add_pod("a"), net.add_pod("b"))
    assert a.ip != b.ip
    assert net.gateway_ip not in (a.ip, b.ip)
    objects = await objects_named(net.bridge_name)
    assert a.netns in objects
    assert b.netns in objects
    async with PeerServer(net.gateway_ip) as server:
        for pod in (a, b):
            response = await pod.http("GET", "/whoami", host=net.gateway_ip, port=server.port)
            assert response.status == 200
            assert response.body == pod.ip.encode()
    assert server.peers == [a.ip, b.ip]


async def test_commands_run_inside_the_pod(net: PodNetwork) -> None:
    pod = await net.add_pod("inside")
    addr = (await pod.run(["ip", "-4", "-o", "addr", "show", "dev", "eth0"])).check()
    assert f"inet {pod.ip}/24" in addr.stdout
    route = (await pod.run(["ip", "route", "show", "default"])).check()
    assert f"default via {net.gateway_ip} dev eth0" in route.stdout
    failed = await pod.run(["ip", "link", "show", "dev", net.bridge_name])  # the bridge is not in the pod
    assert failed.returncode != 0


async def test_run_never_passes_the_host_environment(
    net: PodNetwork, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAHOSTMUSTNOTLEAK")
    pod = await net.add_pod("env")
    default = (await pod.run(["env"])).check()
    assert "AKIAHOSTMUSTNOTLEAK" not in default.stdout
    assert sorted(line.split("=")[0] for line in default.stdout.splitlines()) == ["LANG", "PATH"]
    given = (await pod.run(["/usr/bin/env"], env={"ONLY": "this"})).check()
    assert given.stdout == "ONLY=this\n"


async def test_run_deadline_kills_the_command(net: PodNetwork) -> None:
    pod = await net.add_pod("slow")
    with pytest.raises(CommandTimeout, match="did not finish"):
        await pod.run(["sleep", "30"], timeout=0.5)
    pids = await asyncio.create_subprocess_exec(
        "ip", "netns", "pids", pod.netns, stdout=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(10):
        out, _ = await pids.communicate()
    assert out.split() == []


async def test_http_failure_names_the_reason(net: PodNetwork) -> None:
    pod = await net.add_pod("refused")
    async with PeerServer(net.gateway_ip) as server:
        port = server.port
    # The port was just released: nothing listens there now.
    with pytest.raises(PodHttpError, match="ConnectionRefusedError") as e:
        await pod.http("GET", "/", host=net.gateway_ip, port=port)
    assert e.value.reason == "ConnectionRefusedError"


async def test_ip_reuse_after_removal(net: PodNetwork) -> None:
    old = await net.add_pod("old")
    with pytest.raises(SandboxError, match="in use"):
        await net.add_pod("twin", ip=old.ip)
    await net.remove_pod(old)
    assert await objects_named(old.netns) == []
    assert await objects_named(old.veth) == []
    new = await net.add_pod("new", ip=old.ip)
    assert new.ip == old.ip
    assert new.netns != old.netns
    async with PeerServer(net.gateway_ip) as server:
        response = await new.http("GET", "/", host=net.gateway_ip, port=server.port)
    assert response.body == old.ip.encode()


async def test_bad_pod_requests(net: PodNetwork) -> None:
    with pytest.raises(SandboxError, match="pod name"):
        await net.add_pod("no spaces")
    with pytest.raises(SandboxError, match="not a host address"):
        await net.add_pod("outside", ip="192.0.2.77")
    with pytest.raises(SandboxError, match="in use"):
        await net.add_pod("gateway", ip=net.gateway_ip)
    assert net.pods == []


async def test_exit_removes_everything() -> None:
    async with PodNetwork() as net:
        await net.add_pod("a")
        await net.add_pod("b")
        assert len(await objects_named(net.bridge_name)) == 5  # bridge, 2 veths, 2 netns
        assert state_file(net.id).exists()
    assert await objects_named(net.bridge_name) == []
    assert not state_file(net.id).exists()


async def test_exit_after_an_error_removes_everything() -> None:
    net = PodNetwork()

    async def failing_block() -> None:
        async with net:
            await net.add_pod("a")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await failing_block()
    assert await objects_named(net.bridge_name) == []
    assert not state_file(net.id).exists()


async def test_networks_get_distinct_subnets() -> None:
    async with PodNetwork() as one, PodNetwork() as two:
        assert not one.subnet.overlaps(two.subnet)
        assert one.bridge_name != two.bridge_name


CRASHING_RUN = """
import asyncio, os
from podiam.node.iptables import DnatRule, ensure_rule
from podiam_sandbox.netns import PodNetwork

async def main():
    net = PodNetwork()
    await net.__aenter__()
    pod = await net.add_pod("crashed")
    await ensure_rule(DnatRule(interface=net.bridge_name, host_ip=net.gateway_ip, host_port=18181))
    print(net.id, net.bridge_name, pod.netns, pod.veth, flush=True)
    os._exit(1)  # no teardown, as after a kill -9

asyncio.run(main())
"""


async def test_cleanup_stale_removes_a_crashed_run_and_keeps_live_ones(net: PodNetwork) -> None:
    live_pod = await net.add_pod("live")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CRASHING_RUN, stdout=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(20):
        out, _ = await proc.communicate()
    assert proc.returncode == 1
    net_id, bridge, netns, veth = out.decode().split()
    assert sorted(await objects_named(bridge)) == sorted([bridge, netns, veth])
    assert state_file(net_id).exists()
    assert await dnat_rules_naming(bridge) == 1

    removed = await cleanup_stale()

    assert f"netns {netns}" in removed
    assert f"link {bridge}" in removed
    assert await objects_named(bridge) == []
    assert await dnat_rules_naming(bridge) == 0
    assert any(entry.startswith("iptables ") and bridge in entry for entry in removed)
    assert not state_file(net_id).exists()
    # This process's network is alive, so it was left alone.
    assert live_pod.netns in await objects_named(net.bridge_name)
    assert state_file(net.id).exists()
    assert (await live_pod.run(["true"])).returncode == 0
