"""
Split mode on the sandboxed node: certificates from ``podiam certs init``, a ``podiam server``
process (the only one with STS credentials and the kubeconfig) and a ``podiam agent
--server-address`` process fed by its stream (neither AWS credentials nor a kubeconfig in
its environment or argv), both registered with the world so that they are stopped with it.
Scenario 8 starts the server alone and feeds simulated agents (``fleet.py``) from it.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import ScenarioResult, agent_env, run
from podiam_sandbox.world import BASE_ARN, AgentProcess, World, free_port

SERVER_NAME = "podiam-server"
"""A default DNS name of `podiam certs init`'s server certificate; the agent dials 127.0.0.1."""


@dataclass(frozen=True)
class Pki:
    dir: Path

    def paths(self, side: str) -> tuple[str, str, str]:
        """(certificate, key, CA bundle) of ``side``: "server" or "agent"."""
        d = self.dir / side
        return str(d / "tls.crt"), str(d / "tls.key"), str(d / "ca.crt")

    def files(self, side: str) -> list[str]:
        cert, key, ca = self.paths(side)
        return ["--cert", cert, "--key", key, "--ca", ca]


@dataclass
class Split:
    """The server and the split agent; ``agent.pid`` / ``server.pid`` for /proc readings."""

    server: AgentProcess
    agent: AgentProcess
    app_port: int


def _base_env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", os.defpath), "LANG": "C.UTF-8", **agent_env()}


async def certs_init(workdir: Path, result: ScenarioResult) -> Pki:
    argv = [sys.executable, "-m", "podiam", "certs", "init", "--out", str(workdir / "pki")]
    result.command(argv)
    (await run(argv, timeout=60, env=_base_env())).check()
    return Pki(workdir / "pki")


@dataclass
class Server:
    """A `podiam server` on loopback; ``process.pid`` for /proc readings."""

    process: AgentProcess
    grpc_port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"


async def start_server(world: World, workdir: Path, result: ScenarioResult, pki: Pki, *flags: str) -> Server:
    """`podiam server` on loopback against the world's API and STS, registered with the world
    (stopped with it); returns once ready (the cluster's pods listed)."""
    grpc_port, metrics_port = free_port(), free_port()
    server_argv = [
        sys.executable, "-m", "podiam", "server",
        "--kubeconfig", str(world.kubeconfig),
        "--bind", f"127.0.0.1:{grpc_port}",
        "--metrics-port", str(metrics_port),
        "--base-role-arn", BASE_ARN,
        "--metadata-addr", world.node_imds_addr,
        *pki.files("server"), *flags,
    ]  # fmt: skip
    server = AgentProcess(server_argv, {**_base_env(), **world.sts.client_env()},
                          workdir / "podiam-server.log", metrics_port)
    world.agents.append(server)
    result.command(server_argv)
    await server.start()
    return Server(server, grpc_port)


async def start_split(world: World, workdir: Path, result: ScenarioResult, *agent_flags: str,
                      server_flags: tuple[str, ...] = ("--log-level", "warning")) -> Split:
    """`podiam server` on loopback, then a split agent of this node streaming from it (ready:
    first snapshot received). The agent installs no rule: the caller puts it behind one."""
    pki = await certs_init(workdir, result)
    server = await start_server(world, workdir, result, pki, *server_flags)
    app_port = free_port()
    agent_argv = [
        sys.executable, "-m", "podiam", "agent",
        "--node", world.node_name,
        "--app-port", str(app_port),
        "--metrics-port", str(metrics := free_port()),
        "--host-ip", world.net.gateway_ip,
        "--host-interface", world.net.bridge_name,
        "--metadata-addr", world.node_imds_addr,
        "--server-address", server.address, "--server-name", SERVER_NAME,
        *pki.files("agent"), *agent_flags,
    ]  # fmt: skip
    agent = AgentProcess(agent_argv, _base_env(), workdir / "split-agent.log", metrics)
    world.agents.append(agent)
    result.command(agent_argv)
    await agent.start()
    return Split(server.process, agent, app_port)
