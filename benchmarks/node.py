"""
The benchmark's hands on the sandboxed node: Pod objects as a kubelet reports them (with
or without an IP yet, with or without a network namespace), the multi-pod client
(``podclient.py``) as a subprocess, and agents started with exact flags.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightkube.models.core_v1 import Container, PodSpec, PodStatus
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Pod as KubePod
from lightkube.types import PatchType

from benchmarks.common import BENCH_DIR, agent_env, find_pid, spawned
from podiam_sandbox.world import AgentProcess, World, WorldPod, free_port

ROLE_KEY = "iam.amazonaws.com/role"
PODCLIENT = BENCH_DIR / "podclient.py"


@contextlib.asynccontextmanager
async def bench_world() -> AsyncIterator[World]:
    """A fresh sandboxed node; on failure the agents' logs are printed before it is torn down.

    Fresh per scenario (or per run): every scenario starts from an empty API and moto.
    """
    async with World() as world:
        try:
            yield world
        except Exception:
            for agent in world.agents:
                print(f"--- {agent.log_path}:\n{agent.logs()[-3000:]}", file=sys.stderr, flush=True)
            raise


BASELINE_ENV = "PODIAM_BENCH_BASELINE"
"""Names a src/ tree of another commit: the hot-path and churn scenarios run an agent from it too."""


async def imds_token(pod: WorldPod, port: int) -> str:
    """An IMDSv2 token from the metadata server the pod reaches at 169.254.169.254:``port``."""
    resp = await pod.net.http("PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "21600"},
                              port=port)
    if resp.status != 200:
        raise RuntimeError(f"the token request answered {resp.status}: {resp.body[:300]!r}")
    return resp.body.decode()


async def served_credentials(pod: WorldPod, path: str) -> tuple[str, bytes]:
    """A token and the agent's credential reply for ``path``, as the pod's SDK gets them: the
    bytes nginx then serves, so both servers answer the same."""
    token = await imds_token(pod, 80)
    resp = await pod.http("GET", path, {"X-aws-ec2-metadata-token": token})
    if resp.status != 200:
        raise RuntimeError(f"the agent answered {resp.status}: {resp.body[:300]!r}")
    return token, resp.body


async def create_pod(world: World, name: str, namespace: str, role: str | None, node: str | None = None) -> None:
    """The Pod object as the scheduler leaves it: bound to this node (or ``node``), no IP yet."""
    await world.ensure_namespace(namespace)
    await world.kube.create(KubePod(
        metadata=ObjectMeta(name=name, namespace=namespace, annotations={ROLE_KEY: role} if role else {}),
        spec=PodSpec(containers=[Container(name="app", image="app")], nodeName=node or world.node_name,
                     serviceAccountName="default"),
    ))


async def set_running(world: World, name: str, namespace: str, ip: str) -> None:
    """The kubelet's status report: Running, with the pod's IP."""
    await world.kube.patch(KubePod.Status, name, {"status": {
        "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
    }}, namespace=namespace, patch_type=PatchType.MERGE)


API_POD_NAMESPACES = 10
API_POD_ROLES = 20


def api_pod_ip(i: int) -> str:
    """Pod IPs outside the sandbox's bridge subnet: these pods are API objects only."""
    return f"10.250.{i // 250}.{i % 250 + 1}"


async def api_pod(world: World, i: int) -> None:
    """Pod ``i``: Running with an IP in one write (the emulator keeps status on create; a real
    API server does not), in one of 10 namespaces, with one of 20 roles; its own identity."""
    namespace = f"ns-{i % API_POD_NAMESPACES}"
    await world.ensure_namespace(namespace)
    await world.kube.create(KubePod(
        metadata=ObjectMeta(name=f"idle-{i}", namespace=namespace,
                            annotations={ROLE_KEY: f"role-{i % API_POD_ROLES}"}),
        spec=PodSpec(containers=[Container(name="app", image="app")], nodeName=world.node_name,
                     serviceAccountName="default"),
        status=PodStatus(phase="Running", podIP=api_pod_ip(i)),
    ))


async def delete_pod(world: World, name: str, namespace: str) -> None:
    await world.kube.delete(KubePod, name, namespace=namespace)


async def bounded(coros: Sequence[Any], limit: int = 16) -> list[Any]:
    """Await ``coros`` with at most ``limit`` in flight (the API emulator is one process)."""
    gate = asyncio.Semaphore(limit)

    async def one(c: Any) -> Any:
        async with gate:
            return await c

    return list(await asyncio.gather(*(one(c) for c in coros)))


@dataclass
class PodClient:
    """A running podclient.py; ``send`` control lines, ``result`` for its JSON answer."""

    process: asyncio.subprocess.Process

    async def expect(self, word: str, timeout: float = 60.0) -> None:
        assert self.process.stdout is not None
        async with asyncio.timeout(timeout):
            line = (await self.process.stdout.readline()).decode().strip()
        if line != word:
            raise RuntimeError(f"podclient said {line!r}, expected {word!r}")

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{line}\n".encode())

    async def flush(self) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.drain()

    async def result(self, timeout: float = 600.0) -> dict[str, Any]:
        assert self.process.stdout is not None and self.process.stderr is not None
        async with asyncio.timeout(timeout):
            out = await self.process.stdout.read()
            err = await self.process.stderr.read()
            code = await self.process.wait()
        if code != 0 or not out.strip():
            raise RuntimeError(f"podclient exited {code}: {err.decode(errors='replace')[-1500:]}")
        answer: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
        return answer


@contextlib.asynccontextmanager
async def podclient(job: dict[str, Any]) -> AsyncIterator[PodClient]:
    """podclient.py with ``job``; stopped at exit whatever happens."""
    async with spawned([sys.executable, str(PODCLIENT)], stdin=asyncio.subprocess.PIPE,
                       stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE) as process:
        client = PodClient(process)
        client.send(json.dumps(job))
        yield client


async def run_podclient(job: dict[str, Any], timeout: float = 600.0) -> dict[str, Any]:
    async with podclient(job) as client:
        return await client.result(timeout)


@dataclass
class Agent:
    """An agent the benchmark started, with its pid for /proc readings."""

    process: AgentProcess
    pid: int
    app_port: int


async def start_agent(world: World, *flags: str, iptables: bool = True, argv_prefix: Sequence[str] | None = None,
                      log_dir: Path | None = None, env: dict[str, str] | None = None) -> Agent:
    """``podiam agent`` on this node with ``flags`` (or another entry point, ``argv_prefix``).

    World.start_agent when the entry point is podiam's own; otherwise the same argv with
    the entry point replaced, registered with the world so that it is stopped at the end.
    """
    if argv_prefix is None:
        process = await world.start_agent(*flags, iptables=iptables, env={**agent_env(), **(env or {})})
    else:
        app_port, metrics_port = free_port(), free_port()
        argv = world.agent_argv(*flags, app_port=app_port, metrics_port=metrics_port, iptables=iptables)
        assert argv[2:4] == ["podiam", "agent"], argv
        argv = [*argv_prefix, *argv[4:]]
        env = {"PATH": os.environ.get("PATH", os.defpath), "LANG": "C.UTF-8", **world.sts.client_env(), **agent_env(),
               **(env or {})}
        assert log_dir is not None
        process = AgentProcess(argv, env, log_dir / f"agent-{len(world.agents)}.log", metrics_port)
        world.agents.append(process)
        await process.start()
    app_port = int(process.argv[process.argv.index("--app-port") + 1])
    return Agent(process, find_pid(process.argv), app_port)


async def stop_agent(agent: Agent) -> None:
    code = await agent.process.stop()
    if code != 0:
        raise RuntimeError(f"the agent exited {code}: {agent.process.logs()[-2000:]}")
