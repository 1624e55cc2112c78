"""
A pod that floods the metadata endpoint and never reads its replies, against the real agent
process through the real DNAT rule: the agent's memory stays bounded, its per-IP connection
cap refuses the pod's excess connections, and another pod is served all along.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path

import pytest

from podiam_sandbox.world import World, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

CREDS = "/latest/meta-data/iam/security-credentials/"
FLOOD_SECONDS = 8.0
RSS_GROWTH_LIMIT_MB = 50.0
FLOODING, IDLE = 16, 300
CAP = 256
"""The agent's default --max-connections-per-ip."""
HOG = r"""
import socket, sys, time
# Pipelined GET /healthz on argv[1] connections that are never read, plus argv[2] idle connections,
# past the agent's per-IP cap. Prints the bytes sent so far, twice a second.
request = b"GET /healthz HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n" * 2000
flooding, idle = [], []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("169.254.169.254", 80))
    s.setblocking(False)
    flooding.append([s, 0])
for _ in range(int(sys.argv[2])):
    try:
        idle.append(socket.create_connection(("169.254.169.254", 80), timeout=5))
    except OSError:
        pass
sent, last = 0, 0.0
while True:
    for entry in flooding:
        try:
            n = entry[0].send(request[entry[1] % len(request):])  # whole requests, in order
        except (BlockingIOError, ConnectionError):
            continue
        entry[1] += n
        sent += n
    if time.monotonic() - last > 0.5:
        last = time.monotonic()
        print(sent, flush=True)
    time.sleep(0.0005)
"""


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


async def test_a_flooding_pod_neither_grows_the_agent_nor_starves_another(world: World) -> None:
    agent = await world.start_agent()
    hog_pod = await world.add_pod("hog", "flood", role="hog-role")
    victim = await world.add_pod("victim", "flood", role="victim-role")
    assert (await victim.http("GET", CREDS + "victim-role")).status == 200  # warm: credentials cached
    start_rss = rss_mb(agent.pid)
    hog = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", hog_pod.net.netns, sys.executable, "-I", "-c", HOG, str(FLOODING), str(IDLE),
        stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
    )
    try:
        assert hog.stdout is not None
        async with asyncio.timeout(30):
            first = await hog.stdout.readline()  # its connections are open, the flood begins
        assert first, "the flooding client exited at start"
        peak, sent, served = start_rss, int(first), 0
        loop = asyncio.get_running_loop()
        end = loop.time() + FLOOD_SECONDS
        while loop.time() < end:  # a measurement window: the victim's requests pace it
            resp = await victim.net.http("GET", CREDS + "victim-role", timeout=2.0)
            assert resp.status == 200, resp
            served += 1
            peak = max(peak, rss_mb(agent.pid))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.01):
                    sent = int(await hog.stdout.readline() or sent)
        assert hog.returncode is None, "the flooding client died"
        assert sent > 2_000_000, f"the flood sent only {sent} bytes"
        assert served >= 3
        assert peak - start_rss < RSS_GROWTH_LIMIT_MB, (
            f"agent RSS grew {peak - start_rss:.0f} MB ({start_rss:.0f} -> {peak:.0f}) under a flood of {sent} bytes")

        async def refused() -> bool:
            return f"podiam_imds_connections_refused_total {FLOODING + IDLE - CAP}.0" in await agent.metrics()

        await wait_until(refused, 10, f"the {FLOODING + IDLE - CAP} connections past the cap to be counted")
    finally:
        hog.kill()
        await hog.wait()
    assert await agent.stop() == 0, agent.logs()[-2000:]
