"""
The demo: one node on this machine, three pods, one real ``podiam agent --iptables``.

Each pod runs ``aws sts get-caller-identity`` with no credentials of its own; podiam
answers its metadata requests with its own role's credentials. Exits non-zero if any pod
got something other than what it should, or if anything is left behind.
Run as root: ``scripts/demo`` (or ``python -m podiam_sandbox.demo``).

``scripts/demo --split`` runs the same steps in split mode: a ``podiam server`` holds the
kubeconfig, STS's address and the AWS credentials, and the agent, started with none of them,
streams its node's pods and credentials from it over mutual TLS. The demo also shows that:
the agent's environment and flags, and moto's AssumeRole count against the server's counter.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path

from podiam import cli
from podiam.node.iptables import DnatRule, rule_count
from podiam_sandbox.node_imds import NODE_ACCESS_KEY_ID, NODE_ROLE_NAME
from podiam_sandbox.split import FlagRoute
from podiam_sandbox.world import ACCOUNT, AgentProcess, Mode, World, WorldError, WorldPod

ASSUME_ROLE_CALLS = "podiam_sts_assume_role_calls_total"

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


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def _reaching(pid: int, argv: list[str]) -> list[str]:
    """What in a process's environment and command line reaches AWS or the API."""
    env = sorted(k for k in _environ(pid) if k.startswith("AWS_") or k == "KUBECONFIG")
    return env + [flag for flag in ("--kubeconfig", "--base-role-arn") if flag in argv]


def _show_access(agent: AgentProcess) -> bool:
    """Split mode: the agent has no AWS or API access at all, the server has it; True when so."""
    assert agent.server is not None
    agent_has = _reaching(agent.pid, agent.argv)
    server_has = _reaching(agent.server.pid, agent.server.argv)
    say(f"   the agent's environment and flags (/proc/{agent.pid}): "
        f"{', '.join(agent_has) if agent_has else 'no AWS_* variable, no KUBECONFIG, no --kubeconfig'}")
    say(f"   the server's (/proc/{agent.server.pid}): {', '.join(server_has)}")
    return not agent_has and {"AWS_ACCESS_KEY_ID", "AWS_ENDPOINT_URL_STS", "--kubeconfig"} <= set(server_has)


def _calls(metrics: str) -> float | None:
    """The sum of the AssumeRole call counter's samples; None when the process has none."""
    values = [float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
              if line.startswith(ASSUME_ROLE_CALLS + "{")]
    return sum(values) if values else None


async def _show_sts_calls(world: World, agent: AgentProcess) -> bool:
    """Split mode: every AssumeRole moto answered was the server's; True when so."""
    assert agent.server is not None
    moto = len(await world.sts.assume_role_calls())
    server, own = _calls(await agent.server.metrics()), _calls(await agent.metrics())
    say(f"   STS AssumeRole calls: moto answered {moto}, the server counted {server or 0:g}, "
        f"the agent {'made none' if own is None else f'counted {own:g}'}")
    return own is None and server == moto > 0


def flag_route() -> FlagRoute:
    """Which agent flags are the server's in split mode: the CLI's own list (as tests/e2e/cli_flags.py)."""
    return FlagRoute.from_click(cli.agent, cli.SERVER_POLICY_FLAGS)


async def demo(mode: Mode = "agent") -> int:
    ok = True
    split = mode == "split"
    say("podiam demo: one Kubernetes node on this machine, three pods, one podiam agent"
        + (" fed by one podiam server (split mode).\n" if split else ".\n"))
    say("1. Starting a Kubernetes API emulator, moto as STS, and a stand-in for the node's own")
    say("   metadata service (which holds the node's credentials and user-data) ..."
        if not split else "   metadata service (which holds the node's credentials and user-data), and making")
    if split:
        say("   split mode's certificates with podiam certs init (a CA, the server's, the agent's) ...")
    async with World(mode=mode, flag_route=flag_route() if split else None) as world:
        say(f"   ready: pods live on bridge {world.net.bridge_name} ({world.net.subnet}), "
            f"the node is {world.net.gateway_ip}\n")
        say("2. Creating pods (network namespaces, registered in the API as running on node-1):")
        pods: list[tuple[WorldPod, str | None]] = []
        for namespace, name, role in PODS:
            pod = await world.add_pod(name, namespace, role=role)
            pods.append((pod, role))
            note = f"iam.amazonaws.com/role: {role}" if role else "(no role annotation)"
            say(f"   {pod.ref:<16} {pod.ip:<14} {note}")
        if split:
            say("\n3. Starting podiam server (the kubeconfig, STS's address and AWS credentials; base role ARN")
            say("   arn:aws:iam::123456789012:role/), then podiam agent --iptables --server-address, with none ...")
        else:
            say("\n3. Starting podiam agent --iptables (base role ARN arn:aws:iam::123456789012:role/) ...")
        agent = await world.start_agent()
        port = int(agent.argv[agent.argv.index("--app-port") + 1])
        rule = DnatRule(interface=world.net.bridge_name, host_ip=world.net.gateway_ip, host_port=port)
        if agent.server is not None:
            say(f"   ready: the server on {agent.server.address}, the agent streaming from it over mutual TLS")
            ok &= _show_access(agent)
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
        if split:
            ok &= await _show_sts_calls(world, agent)
        say("\n5. Stopping the agent" + (" and then its server" if split else "")
            + " (SIGTERM) and tearing everything down ...")
        code = await agent.stop(signal.SIGTERM)
        remaining = await rule_count(rule)
        server_exit = "" if agent.server is None else f", server exited with {agent.server.returncode}"
        say(f"   agent exited with {agent.returncode if split else code}{server_exit}; DNAT rules left: {remaining}")
        ok &= code == 0 and remaining == 0
        bridge = world.net.bridge_name
    left = await _leftovers(bridge)
    say(f"   network namespaces and links left: {', '.join(left) if left else 'none'}")
    ok &= not left
    say("\n" + ("Demo passed: each pod was exactly its own role, and nothing was left behind."
                if ok else "Demo FAILED: see above."))
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="scripts/demo", description="podiam's demo, on this machine (root).")
    parser.add_argument("--split", action="store_true",
                        help="split mode: a podiam server with the STS access, an agent with none")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("the demo creates network namespaces and an iptables rule: run it as root")
    sys.exit(asyncio.run(demo("split" if args.split else "agent")))


if __name__ == "__main__":
    main()
