"""
The chart's containers, run: the sandbox's agent (and, in split mode, its server) started with
the arguments and environment of the rendered DaemonSet (and Deployment), only addresses and
file paths substituted, serve a pod its role through the real DNAT rule and refuse another.

And the RBAC the chart grants is exactly what podiam uses: the API emulator's audit log of that
whole life (a pod watch, a namespace watch with the chart's namespace restrictions, a Warning
event created and then patched) is mapped to (verb, resource) pairs and compared with the
rendered ClusterRole, in both directions: no verb used that the chart does not grant (podiam
would fail on a cluster), none granted that podiam does not use (least privilege).
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from chart_tools import chart
from podiam_sandbox.world import ACCOUNT, AgentProcess, PodiamProcess, ServerProcess, World, free_port, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module"), pytest.mark.modes("agent", "split")]

CREDS = "/latest/meta-data/iam/security-credentials/"
CASE = {"agent": "agent", "split": "split"}
"""The chart's case per mode: its defaults (split mode with a base role ARN, which it needs)."""
TLS_DIR = "/etc/podiam/tls"


def substitute(args: list[str], values: dict[str, str], tls: tuple[str, str, str] | None = None) -> list[str]:
    """``args`` with the value of each ``--flag=`` in ``values`` replaced (each must be there), and
    the certificate files' mount replaced by ``tls``' paths. Nothing else changes."""
    files = {}
    if tls is not None:
        cert, key, ca = tls
        files = {f"--cert={TLS_DIR}/tls.crt": f"--cert={cert}", f"--key={TLS_DIR}/tls.key": f"--key={key}",
                 f"--ca={TLS_DIR}/ca.crt": f"--ca={ca}"}
    out: list[str] = []
    seen: set[str] = set()
    for arg in args:
        flag = arg.split("=", 1)[0]
        if flag in values:
            seen.add(flag)
            out.append(f"{flag}={values[flag]}")
        else:
            out.append(files.get(arg, arg))
    assert seen == set(values), f"not in the rendered arguments: {set(values) - seen}"
    assert not any(TLS_DIR in arg for arg in out)
    return out


def downward(container: dict[str, Any], world: World) -> dict[str, str]:
    """The container's environment, with the values the kubelet gives the downward API's fields."""
    fields = {"spec.nodeName": world.node_name, "status.hostIP": world.net.gateway_ip}
    return {v["name"]: fields[v["valueFrom"]["fieldRef"]["fieldPath"]] if "valueFrom" in v else v["value"]
            for v in container.get("env", [])}


def granted(objects: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """(verb, resource) pairs the chart's ClusterRoles grant (core group only: podiam uses no other)."""
    pairs = set()
    for role in (o for o in objects if o["kind"] in ("ClusterRole", "Role")):
        for rule in role["rules"]:
            assert rule["apiGroups"] == [""], rule
            pairs |= {(verb, resource) for verb in rule["verbs"] for resource in rule["resources"]}
    return pairs


def used(records: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """(verb, resource) pairs of audit records, subresources as RBAC names them (pods/status)."""
    assert not [r for r in records if "nonResourceURL" in r or r["apiGroup"] != ""], records
    return {(r["verb"], r["resource"] + (f"/{r['subresource']}" if r["subresource"] else "")) for r in records}


async def samples(process: PodiamProcess, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in (await process.metrics()).splitlines()
               if re.match(rf"{name}(\{{.*\}})? ", line))


async def start_rendered(world: World, objects: list[dict[str, Any]]) -> tuple[AgentProcess, str]:
    """The chart's agent (and server) as the world's processes; the user the API sees for the policy holder."""
    agent = chart.container(objects, "DaemonSet")
    local = {"--host-interface": world.net.bridge_name, "--app-port": str(free_port()),
             "--metrics-port": str(free_port())}
    # Added: where this world's node metadata and API are; a cluster's are at the defaults.
    here = [f"--metadata-addr={world.node_imds_addr}"]
    if world.mode == "agent":
        user = "podiam-agent"
        args = [*substitute(agent["args"], local), *here, f"--kubeconfig={world.user_kubeconfig(user)}"]
        # The node's own AWS credentials (its instance profile's, on EC2): moto's here.
        process = await world.start_podiam(args, {**downward(agent, world), **world.sts.client_env()})
        assert isinstance(process, AgentProcess)
        return process, user
    assert world.tls is not None
    user = "podiam-server"
    server = chart.container(objects, "Deployment")
    server_args = substitute(server["args"], {"--bind": f"127.0.0.1:{free_port()}", "--metrics-port": str(free_port())},
                             world.tls.server)
    # The server's own AWS credentials (IRSA's, on EKS): moto's here.
    started = await world.start_podiam([*server_args, *here, f"--kubeconfig={world.user_kubeconfig(user)}"],
                                       {**downward(server, world), **world.sts.client_env()})
    assert isinstance(started, ServerProcess)
    args = substitute(agent["args"], {**local, "--server-address": started.address}, world.tls.agent)
    # The split agent's environment from nothing (the world refuses AWS_* and KUBECONFIG in it).
    process = await world.start_podiam([*args, *here], world.split_agent_env(downward(agent, world)),
                                       server=started)
    assert isinstance(process, AgentProcess)
    return process, user


async def test_the_charts_containers_serve_a_role_and_use_exactly_the_rbac_granted(world: World) -> None:
    objects = chart.render(chart.CASES[CASE[world.mode]])
    # The chart turns namespace restrictions on: one namespace permits the role, one does not.
    await world.set_namespace("team-a", {"iam.amazonaws.com/allowed-roles": json.dumps(["reader"])})
    await world.set_namespace("team-b", {"iam.amazonaws.com/allowed-roles": json.dumps(["writer"])})
    agent, user = await start_rendered(world, objects)
    reader = await world.add_pod("reader", "team-a", role="reader")
    intruder = await world.add_pod("intruder", "team-b", role="reader")

    assert await reader.boto3_caller_arn() == f"arn:aws:sts::{ACCOUNT}:assumed-role/reader/team-a.reader"

    async def forbidden_event() -> bool:
        return any(e.reason == "IAMRoleForbidden" for e in await world.pod_events(intruder))

    # Decided when indexed (agent mode) or bound (split mode): the event is created before any request.
    await wait_until(forbidden_event, what="the IAMRoleForbidden event")
    assert (await intruder.http("GET", CREDS + "reader")).status == 403
    if world.mode == "split":  # the agent reports the refusal; the server writes the event
        async def reported() -> bool:
            return await samples(agent, "podiam_remote_refusals_reported_total") >= 1
        await wait_until(reported, what="the refusal reported to the server")
    # Stopping flushes the aggregated repeat: the event's count is patched.
    assert await agent.stop() == 0, agent.logs()[-3000:]

    records = world.api_requests(user)
    assert used(records) == granted(objects) == {
        ("list", "pods"), ("watch", "pods"), ("list", "namespaces"), ("watch", "namespaces"),
        ("create", "events"), ("patch", "events"),
    }


READY_CASE = {"agent": "agent-iptables-legacy-ready-taint", "split": "split-iptables-nft-ready-taint"}
"""The chart's cases with agent.nodeReadyTaint (and a named iptables backend) set, per mode."""


async def test_the_charts_node_ready_taint_goes_and_its_nodes_grant_is_exactly_what_is_used(world: World) -> None:
    """With agent.nodeReadyTaint the chart grants nodes get/patch to whoever removes the taint
    (the agent, or in split mode the server, which renders the flag) and nothing else more."""
    objects = chart.render(chart.CASES[READY_CASE[world.mode]])
    other = {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}
    await world.set_node_taints([{"key": chart.READY_TAINT, "value": "true", "effect": "NoSchedule"}, other])
    agent, user = await start_rendered(world, objects)

    async def untainted() -> bool:
        return await world.node_taints() == [other]

    await wait_until(untainted, 15, "the node-ready taint to go")
    assert await agent.stop() == 0, agent.logs()[-3000:]
    assert ("get", "nodes") in granted(objects) and ("patch", "nodes") in granted(objects)
    assert {pair for pair in used(world.api_requests(user)) if pair[1] == "nodes"} == {("get", "nodes"),
                                                                                       ("patch", "nodes")}
    # The rest of the grant is the defaults': watched and listed pods and namespaces, events
    # (none written here: no pod was refused), and the nodes above.
    assert used(world.api_requests(user)) <= granted(objects)
