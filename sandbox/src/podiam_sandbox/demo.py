"""
The demo: one node on this machine, three pods, one real ``podiam agent --iptables``.

Each pod runs ``aws sts get-caller-identity`` with no credentials of its own; podiam
answers its metadata requests with its own role's credentials. Exits non-zero if any pod
got something other than what it should, or if anything is left behind.
Run as root: ``scripts/demo`` (or ``python -m podiam_sandbox.demo``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from podiam.node.iptables import DnatRule, rule_count
from podiam_sandbox.node_imds import NODE_ACCESS_KEY_ID, NODE_ROLE_NAME
from podiam_sandbox.world import ACCOUNT, World, WorldError, WorldPod

PODS = [
    # namespace, name, role annotation
    ("team-a", "reader", "reader"),
    ("team-b", "writer", "writer"),
    ("team-a", "no-role", None),
]


def say(text: str = "") -> None:
    print(text, flush=True)


async def _leftovers(bridge: str) -> list[str]:
    async def out(*argv: str) -> str:
        process = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE)
        async with asyncio.timeout(10):
            stdout, _ = await process.communicate()
        return stdout.decode()

    netns = [line.split()[0] for line in (await out("ip", "netns", "list")).splitlines()
             if line.startswith(bridge + "-")]
    links = [name for name in (await out("ip", "-o", "link", "show")).split()
             if name.rstrip(":").split("@")[0].startswith(bridge)]
    return netns + links


async def _show_pod(pod: WorldPod, role: str | None) -> bool:
    """Run the AWS CLI in the pod; True when the pod got exactly what it should."""
    try:
        arn = await pod.cli_caller_arn()
    except WorldError as e:
        answer = await pod.http("GET", "/latest/meta-data/iam/security-credentials/")
        say(f"   {pod.ref:<16} -> no credentials: the AWS CLI found none; podiam answered "
            f"{answer.status}: {answer.body.decode().strip()}")
        return role is None and "Unable to locate credentials" in str(e)
    say(f"   {pod.ref:<16} -> {arn}")
    return role is not None and arn == f"arn:aws:sts::{ACCOUNT}:assumed-role/{role}/{pod.namespace}.{pod.name}"


async def demo() -> int:
    ok = True
    say("podiam demo: one Kubernetes node on this machine, three pods, one podiam agent.\n")
    say("1. Starting a Kubernetes API emulator, moto as STS, and a stand-in for the node's own")
    say("   metadata service (which holds the node's credentials and user-data) ...")
    async with World() as world:
        say(f"   ready: pods live on bridge {world.net.bridge_name} ({world.net.subnet}), "
            f"the node is {world.net.gateway_ip}\n")
        say("2. Creating pods (network namespaces, registered in the API as running on node-1):")
        pods: list[tuple[WorldPod, str | None]] = []
        for namespace, name, role in PODS:
            pod = await world.add_pod(name, namespace, role=role)
            pods.append((pod, role))
            note = f"iam.amazonaws.com/role: {role}" if role else "(no role annotation)"
            say(f"   {pod.ref:<16} {pod.ip:<14} {note}")
        say("\n3. Starting podiam agent --iptables (base role ARN arn:aws:iam::123456789012:role/) ...")
        agent = await world.start_agent()
        port = int(agent.argv[agent.argv.index("--app-port") + 1])
        rule = DnatRule(interface=world.net.bridge_name, host_ip=world.net.gateway_ip, host_port=port)
        say(f"   ready; iptables -t nat -I PREROUTING {' '.join(rule.spec())}\n")
        say("4. Inside each pod: aws sts get-caller-identity (the pod has no AWS credentials at all)")
        for pod, role in pods:
            ok &= await _show_pod(pod, role)
        user_data = await pods[0][0].http("GET", "/latest/user-data")
        say(f"   and the node's user-data from a pod: {user_data.status} "
            f"({user_data.body.decode().strip()})")
        ok &= user_data.status == 404
        traversal = await pods[0][0].http(
            "GET", f"/latest/meta-data/placement/../iam/security-credentials/{NODE_ROLE_NAME}")
        say(f"   and the node's credentials by path traversal (placement/../iam/...): {traversal.status} "
            f"({traversal.body.decode().strip().rpartition(': ')[2]})")
        ok &= traversal.status == 400 and NODE_ACCESS_KEY_ID.encode() not in traversal.body
        say("\n5. Stopping the agent (SIGTERM) and tearing everything down ...")
        code = await agent.stop(signal.SIGTERM)
        remaining = await rule_count(rule)
        say(f"   agent exited with {code}; DNAT rules left: {remaining}")
        ok &= code == 0 and remaining == 0
        bridge = world.net.bridge_name
    left = await _leftovers(bridge)
    say(f"   network namespaces and links left: {', '.join(left) if left else 'none'}")
    ok &= not left
    say("\n" + ("Demo passed: each pod was exactly its own role, and nothing was left behind."
                if ok else "Demo FAILED: see above."))
    return 0 if ok else 1


def main() -> None:
    if os.geteuid() != 0:
        sys.exit("the demo creates network namespaces and an iptables rule: run it as root")
    sys.exit(asyncio.run(demo()))


if __name__ == "__main__":
    main()
