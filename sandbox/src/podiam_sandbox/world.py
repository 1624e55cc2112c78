"""
A whole node on one machine, for the demo and the end-to-end tests: a Kubernetes API
emulator, moto as STS, a stand-in for the node's own IMDS, pods as network namespaces on
a bridge, and the real ``podiam agent`` process with its real iptables rule.

In split mode (``World(mode="split", flag_route=...)``) each agent comes with its own
``podiam server`` process, which holds what the agent then does not: the kubeconfig, STS's
address and the AWS credentials. The agent's environment is built from nothing (no AWS_*
variable, no KUBECONFIG, an empty HOME) and it is given only node-local flags; the world
checks both before starting it. A test of failover starts the replicas itself instead
(``start_server``, ``restart_server`` on the same port) and an agent streaming from all of them
(``start_split_agent(servers=...)``).

Pods are registered in the API the way a kubelet would report them (spec.nodeName,
status.podIP, phase Running), through a real Kubernetes client, so the agent sees exactly
the events a cluster would send it. SDKs run inside the pods with no credentials of their
own and only find the metadata service at 169.254.169.254.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import aiohttp
import lightkube
from lightkube.core.exceptions import ApiError
from lightkube.models.core_v1 import Container, NodeSpec, PodSpec, Taint
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Event, Namespace, Node
from lightkube.resources.core_v1 import Pod as KubePod
from lightkube.types import PatchType

from podiam_sandbox.kubeapi import write_kubeconfig
from podiam_sandbox.netns import CommandResult, HttpResponse, Pod, PodNetwork, cleanup_stale
from podiam_sandbox.split import SERVER_NAME, FlagRoute, TlsFiles, podiam_certs
from podiam_sandbox.sts import MotoSts

NODE_NAME = "node-1"
ACCOUNT = "123456789012"
BASE_ARN = f"arn:aws:iam::{ACCOUNT}:role/"
AGENT_START_TIMEOUT = 30.0
AGENT_STOP_TIMEOUT = 20.0
_BIN = Path(sys.executable).parent
Mode = Literal["agent", "split"]
MODES: tuple[Mode, ...] = ("agent", "split")


def _tls_flags(files: tuple[str, str, str]) -> list[str]:
    cert, key, ca = files
    return ["--cert", cert, "--key", key, "--ca", ca]


def option(argv: Sequence[str], flag: str) -> str:
    """The value of ``flag`` in ``argv``, as ``--flag value`` or ``--flag=value``; the last wins, as in click."""
    values = [argv[i + 1] if arg == flag else arg.split("=", 1)[1] for i, arg in enumerate(argv)
              if arg == flag or arg.startswith(flag + "=")]
    if not values:
        raise WorldError(f"{flag} is not given in {list(argv)}")
    return values[-1]


class WorldError(Exception):
    """The sandbox could not be set up or did not behave (not a podiam error)."""


async def wait_until(check: Callable[[], Awaitable[bool]], timeout: float = 10.0,
                     what: str = "a condition") -> None:
    """Poll ``check`` until it holds; WorldError naming ``what`` after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise WorldError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.05)  # the polling interval; the deadline bounds the wait


def free_port() -> int:
    """A TCP port nothing on this host uses now, on any address.

    Probed on the wildcard address because the agent listens there: a port free on one
    address can still be taken on another (a client's ephemeral port to moto or the API
    emulator on 127.0.0.1), and then the agent's bind to 0.0.0.0 fails.
    """
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))  # noqa: S104 - probing, not serving
        return int(s.getsockname()[1])


async def established_from(ip: str, port: int) -> bool:
    """Whether a TCP connection from ``ip`` to our ``port`` is open (a pod's request is in flight)."""
    ss = await asyncio.create_subprocess_exec(
        "ss", "-Htn", "state", "established", f"( sport = :{port} )", stdout=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(5):
        out, _ = await ss.communicate()
    return f"{ip}:" in out.decode()


@dataclass
class WorldPod:
    """A pod both as a network namespace (where SDKs run) and as an API object."""

    world: World
    net: Pod
    namespace: str
    name: str

    @property
    def ip(self) -> str:
        return self.net.ip

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    async def http(self, method: str, path: str, headers: Mapping[str, str] | None = None) -> HttpResponse:
        """A raw request to 169.254.169.254 from inside the pod."""
        return await self.net.http(method, path, headers)

    async def run(self, argv: Sequence[str], timeout: float = 60.0) -> CommandResult:
        """Run a program in the pod with an SDK's environment: no credentials, only STS's address."""
        return await self.net.run(argv, self.world.sdk_env(), timeout=timeout)

    async def boto3_caller_arn(self) -> str:
        """STS GetCallerIdentity through boto3's default credential chain, inside the pod."""
        script = "import boto3, json; print(json.dumps(boto3.client('sts').get_caller_identity()))"
        return _caller_arn(await self.run([sys.executable, "-c", script]), "boto3")

    async def cli_caller_arn(self) -> str:
        """``aws sts get-caller-identity`` inside the pod."""
        return _caller_arn(await self.run([str(_BIN / "aws"), "sts", "get-caller-identity", "--output", "json"]),
                           "aws cli")


def _caller_arn(result: CommandResult, what: str) -> str:
    if result.returncode != 0:
        raise WorldError(f"{what} failed in the pod (exit {result.returncode}): {result.stderr.strip()[-800:]}")
    try:
        return str(json.loads(result.stdout)["Arn"])
    except (ValueError, KeyError) as e:
        raise WorldError(f"{what} printed no caller identity: {result.stdout[:300]!r}") from e


class PodiamProcess:
    """A running podiam command (``agent`` or ``server``); its log goes to a file that tests and
    the demo can read."""

    what = "podiam"

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path, metrics_port: int) -> None:
        self.argv, self._env, self.log_path, self.metrics_port = argv, env, log_path, metrics_port
        self._process: asyncio.subprocess.Process | None = None

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.returncode

    @property
    def pid(self) -> int:
        """The process id (for /proc readings); podiam runs in this process, not a wrapper."""
        assert self._process is not None, f"the {self.what} was not started"
        return self._process.pid

    def option(self, flag: str) -> str:
        """The value given to ``flag`` on the command line (``--app-port``, ``--metrics-port``)."""
        return option(self.argv, flag)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def start(self) -> None:
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self._process = await asyncio.create_subprocess_exec(
                *self.argv, env=self._env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        await self.wait_ready()

    async def wait_ready(self, timeout: float = AGENT_START_TIMEOUT) -> None:
        url = f"http://127.0.0.1:{self.metrics_port}/readyz"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0)) as session:

            async def ready() -> bool:
                if self.returncode is not None:
                    raise WorldError(f"the {self.what} exited with {self.returncode} at start:\n"
                                     f"{self.logs()[-3000:]}")
                try:
                    async with session.get(url) as resp:
                        return resp.status == 200
                except (aiohttp.ClientError, TimeoutError):
                    return False

            try:
                await wait_until(ready, timeout, f"the {self.what} to be ready")
            except WorldError as e:
                raise WorldError(f"{e}:\n{self.logs()[-3000:]}") from None

    async def metrics(self) -> str:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5.0)) as session, \
                session.get(f"http://127.0.0.1:{self.metrics_port}/metrics") as resp:
            return await resp.text()

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = AGENT_STOP_TIMEOUT) -> int:
        """Signal the process and wait for it to exit; returns its exit code."""
        process = self._process
        if process is None:
            return 0
        if process.returncode is None:
            process.send_signal(sig)
        try:
            async with asyncio.timeout(timeout):
                return await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()
            raise WorldError(f"the {self.what} did not stop within {timeout:g}s of signal {sig}") from None


class ServerProcess(PodiamProcess):
    """A running ``podiam server`` (split mode), serving one world's agents."""

    what = "server"

    @property
    def address(self) -> str:
        """host:port of its gRPC service."""
        return self.option("--bind")


class AgentProcess(PodiamProcess):
    """A running ``podiam agent``; in split mode with the ``server`` it owns and streams from, or
    none when it streams from replicas the test started (``World.start_split_agent``)."""

    what = "agent"

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path, metrics_port: int,
                 server: ServerProcess | None = None) -> None:
        super().__init__(argv, env, log_path, metrics_port)
        self.server = server

    @property
    def policy_process(self) -> PodiamProcess:
        """The process that runs the policy and calls STS: the server in split mode, else the agent."""
        if self.server is None and "--server-address" in self.argv:
            raise WorldError("this agent streams from replicas the test started: read the replica you mean")
        return self.server or self

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = AGENT_STOP_TIMEOUT) -> int:
        """Stop the agent, then its server; the agent's exit code, or the server's if only it failed."""
        code = await super().stop(sig, timeout)
        if self.server is not None:
            server_code = await self.server.stop(timeout=timeout)
            return code or server_code
        return code


async def _stop_quietly(process: PodiamProcess) -> None:
    with contextlib.suppress(WorldError):
        await process.stop()


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.read(65536):
        pass


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _terminate(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
        try:
            async with asyncio.timeout(10):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()


class World:
    """``async with World() as world:`` builds the node; everything is removed on exit."""

    def __init__(self, node_name: str = NODE_NAME, *, mode: Mode = "agent",
                 flag_route: FlagRoute | None = None, podiam_command: Sequence[str] | None = None) -> None:
        """``podiam_command`` runs the agents and servers instead of this interpreter's ``-m podiam``
        (the image tests give a ``podman run`` of the image); it gets the same argv and environment."""
        if mode == "split" and flag_route is None:
            raise WorldError("split mode needs the CLI's flag route, to give each flag to the server or the agent")
        self.node_name = node_name
        self._podiam_command = tuple(podiam_command) if podiam_command is not None else None
        self.mode: Mode = mode
        self._flag_route = flag_route
        self.tls: TlsFiles | None = None
        """Split mode's certificates, from `podiam certs init`: one CA per world, a server and an agent leaf."""
        self._stack = contextlib.AsyncExitStack()
        self._tmp: Path
        """The world's own directory, made by __aenter__."""
        self.agents: list[AgentProcess] = []
        self.servers: list[ServerProcess] = []
        """Every ``podiam server`` started, agents' own and tests' replicas; all stopped with the world."""
        self._namespaces: set[str] = set()
        self.net: PodNetwork
        self.sts: MotoSts
        self.node_imds_addr: str
        """host:port of the stand-in for the node's own IMDS."""
        self.kube: lightkube.AsyncClient
        self.kubeconfig: Path
        self.kube_url: str
        self._audit_log: Path

    async def __aenter__(self) -> Self:
        self._tmp = Path(tempfile.mkdtemp(prefix="podiam-world-"))
        self._audit_log = self._tmp / "kubeapi-audit.jsonl"
        if not os.environ.get("PODIAM_KEEP_WORLD"):  # its logs, certificates, kubeconfig: gone last
            self._stack.callback(shutil.rmtree, self._tmp, ignore_errors=True)
        try:
            await cleanup_stale()  # a crashed earlier run must not leave rules that shadow ours
            self.net = await self._stack.enter_async_context(PodNetwork())
            # STS listens on the bridge address: the agent and the pods' SDKs both reach it there.
            self.sts = await self._stack.enter_async_context(MotoSts(host=self.net.gateway_ip))
            self.node_imds_addr = (await self._start_service(
                "podiam_sandbox.node_imds", "--host", "127.0.0.1", "--port", "0"
            )).removeprefix("http://").rstrip("/")
            self.kubeconfig = self._tmp / "kubeconfig"
            self.kube_url = await self._start_service(
                "podiam_sandbox.kubeapi", "--host", "127.0.0.1", "--port", "0", "--kubeconfig", str(self.kubeconfig),
                "--audit-log", str(self._audit_log))
            self.kube = lightkube.AsyncClient(lightkube.KubeConfig.from_file(self.kubeconfig))
            self._stack.push_async_callback(self.kube.close)
            self._stack.push_async_callback(self._stop_processes)
            if self.mode == "split":
                self.tls = await podiam_certs(self._tmp / "tls")
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.aclose()

    async def _start_service(self, module: str, *args: str) -> str:
        """Run ``python -m module`` until the world ends; returns the URL from its ``ready <url>`` line.

        The sandbox servers run in processes of their own: kmock patches aiohttp's resolver
        process-wide, and in-process servers would keep connection tasks in the test process.
        """
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", module, *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL,
        )
        self._stack.push_async_callback(_terminate, process)
        assert process.stdout is not None
        try:
            async with asyncio.timeout(AGENT_START_TIMEOUT):
                while not (line := (await process.stdout.readline()).decode()).startswith("ready "):
                    if not line:
                        raise WorldError(f"{module} exited with {await process.wait()} at start")
        except TimeoutError:
            raise WorldError(f"{module} did not start in time") from None
        # Keep draining its output so a chatty server never blocks on a full pipe.
        drain = asyncio.create_task(_drain(process.stdout), name=f"{module}-output")
        self._stack.push_async_callback(_cancel, drain)
        return line.split(" ", 1)[1].strip()

    async def _stop_processes(self) -> None:
        for process in [*self.agents, *self.servers]:  # agents first: they stream from the servers
            with contextlib.suppress(WorldError):
                await process.stop()

    def sdk_env(self) -> dict[str, str]:
        """What an application container would have: no credentials, region and STS's address."""
        home = self._tmp / "home"
        home.mkdir(exist_ok=True)
        return {
            "PATH": os.environ.get("PATH", os.defpath),
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL_STS": self.sts.endpoint_url,
            # For the SDKs that do not read AWS_ENDPOINT_URL_STS (Debian's Go v1 and v2, Ruby):
            # their test programs set it on the STS client.
            "PODIAM_TEST_STS_ENDPOINT": self.sts.endpoint_url,
            "AWS_CONFIG_FILE": str(home / "no-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(home / "no-credentials"),
        }

    def _podiam(self, interpreter_flags: Sequence[str] = ()) -> list[str]:
        """The command that runs podiam: this interpreter's module, or ``podiam_command``."""
        if self._podiam_command is None:
            return [sys.executable, *interpreter_flags, "-m", "podiam"]
        if interpreter_flags:
            raise WorldError("interpreter flags need podiam run by this interpreter, not podiam_command")
        return list(self._podiam_command)

    def agent_argv(self, *extra: str, app_port: int, metrics_port: int, iptables: bool = True,
                   interpreter_flags: Sequence[str] = ()) -> list[str]:
        argv = [
            *self._podiam(interpreter_flags), "agent",
            "--node", self.node_name,
            "--kubeconfig", str(self.kubeconfig),
            "--app-port", str(app_port),
            "--metrics-port", str(metrics_port),
            "--host-ip", self.net.gateway_ip,
            "--host-interface", self.net.bridge_name,
            "--base-role-arn", BASE_ARN,
            "--metadata-addr", self.node_imds_addr,
        ]  # fmt: skip
        if iptables:
            argv.append("--iptables")
        return [*argv, *extra]

    async def start_agent(self, *extra: str, iptables: bool = True, app_port: int | None = None,
                          env: Mapping[str, str] | None = None,
                          interpreter_flags: Sequence[str] = (), wrapper: Sequence[str] = ()) -> AgentProcess:
        """Start ``podiam agent`` for this node with the flags ``extra`` and wait until it is ready.

        In split mode, first a ``podiam server`` of its own, given those of ``extra`` that are
        the server's (policy, STS, events), and the agent the rest; ``env`` is the agent's.
        ``interpreter_flags`` go to the agent's Python (``-X importtime``); ``wrapper`` runs the
        agent (``setpriv --bounding-set=-net_admin``: an agent without CAP_NET_ADMIN).
        """
        if self.mode == "split":
            return await self._start_split_agent(extra, iptables=iptables, app_port=app_port, env=env,
                                                 interpreter_flags=interpreter_flags, wrapper=wrapper)
        metrics_port = free_port()
        argv = self.agent_argv(*extra, app_port=app_port or free_port(), metrics_port=metrics_port,
                               iptables=iptables, interpreter_flags=interpreter_flags)
        argv[0:0] = wrapper
        agent_env = {"PATH": os.environ.get("PATH", os.defpath), "LANG": "C.UTF-8",
                     **self.sts.client_env(), **(env or {})}
        agent = AgentProcess(argv, agent_env, self._tmp / f"agent-{len(self.agents)}.log", metrics_port)
        self.agents.append(agent)
        await agent.start()
        return agent

    async def start_server(self, *flags: str) -> ServerProcess:
        """Start ``podiam server`` for this world (split mode) and wait until it is ready.

        The server alone gets what reaches the API and STS: the kubeconfig, STS's address and
        the AWS credentials (moto's), in its own environment. It is stopped with the world
        unless stopped before.
        """
        assert self.tls is not None, "a server needs split mode's certificates: World(mode='split')"
        metrics_port = free_port()
        argv = [
            *self._podiam(), "server",
            "--kubeconfig", str(self.kubeconfig),
            "--bind", f"127.0.0.1:{free_port()}",
            *_tls_flags(self.tls.server),
            "--metrics-port", str(metrics_port),
            "--base-role-arn", BASE_ARN,
            "--metadata-addr", self.node_imds_addr,
            *flags,
        ]  # fmt: skip
        return await self._run_server(argv, metrics_port)

    async def restart_server(self, server: ServerProcess) -> ServerProcess:
        """A new ``podiam server`` with an exited one's command line: the same flags, --bind and
        --metrics-port, as a kubelet restarts a replica, so agents' --server-address still names it.

        The old process must have exited: gRPC binds its port with SO_REUSEPORT, so a second
        process on a live one's port would share its connections instead of replacing it.
        """
        if server.returncode is None:
            raise WorldError(f"the server on {server.address} has not exited (stop it first): "
                             "a restart takes over its port")
        return await self._run_server(list(server.argv), server.metrics_port)

    async def _run_server(self, argv: list[str], metrics_port: int) -> ServerProcess:
        env = {"PATH": os.environ.get("PATH", os.defpath), "LANG": "C.UTF-8", **self.sts.client_env()}
        server = ServerProcess(argv, env, self._tmp / f"server-{len(self.servers)}.log", metrics_port)
        self.servers.append(server)
        try:
            await server.start()
        except BaseException:
            with contextlib.suppress(WorldError):
                await server.stop()
            raise
        return server

    def user_kubeconfig(self, user: str) -> Path:
        """A kubeconfig of this world's API whose requests the audit log records as ``user``'s."""
        return write_kubeconfig(self._tmp / f"kubeconfig-{user}", self.kube_url, token=user)

    def api_requests(self, user: str) -> list[dict[str, Any]]:
        """Every API request ``user`` made so far, as audit records (kubeapi_wire.audit_record)."""
        records = [json.loads(line) for line in self._audit_log.read_text().splitlines() if line]
        return [r for r in records if r["user"] == user]

    async def start_podiam(self, args: Sequence[str], env: Mapping[str, str],
                           server: ServerProcess | None = None) -> AgentProcess | ServerProcess:
        """Start ``podiam ARGS`` (``agent ...`` or ``server ...``) exactly as given, with ``env`` besides
        PATH and LANG, and wait until it is ready: a manifest's container, its addresses and paths
        replaced by the test. An agent is stopped with the world (with ``server``, its server too)."""
        argv = [sys.executable, "-m", "podiam", *args]
        full_env = {"PATH": os.environ.get("PATH", os.defpath), "LANG": "C.UTF-8", **env}
        metrics_port = int(option(args, "--metrics-port"))
        log_path = self._tmp / f"{args[0]}-{len(self.agents)}-rendered.log"
        if args[0] == "server":
            process: AgentProcess | ServerProcess = ServerProcess(argv, full_env, log_path, metrics_port)
            self._stack.push_async_callback(_stop_quietly, process)
        else:
            process = AgentProcess(argv, full_env, log_path, metrics_port, server=server)
            self.agents.append(process)
        await process.start()
        return process

    def split_agent_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """A split agent's whole environment, from nothing: no AWS credentials, STS address or kubeconfig."""
        home = self._tmp / "agent-home"  # empty: no ~/.aws or ~/.kube to fall back on
        home.mkdir(exist_ok=True)
        env = {"PATH": os.environ.get("PATH", os.defpath), "LANG": "C.UTF-8", "HOME": str(home), **(extra or {})}
        reaching = sorted(k for k in env if k.startswith("AWS_") or k == "KUBECONFIG")
        if reaching:
            raise WorldError(f"a split agent must not have {', '.join(reaching)}: the server holds those")
        return env

    async def start_split_agent(self, *extra: str, servers: Sequence[ServerProcess], iptables: bool = True,
                                app_port: int | None = None, env: Mapping[str, str] | None = None,
                                interpreter_flags: Sequence[str] = ()) -> AgentProcess:
        """Start a split agent streaming from ``servers`` (replicas started with ``start_server``),
        tried in turn (``--server-address`` lists their addresses), and wait until it is ready.

        ``extra`` are the agent's flags only: the servers' were given to ``start_server``. The
        agent does not own the replicas; the world stops them (or the test, earlier).
        """
        if self.mode != "split":
            raise WorldError("a split agent needs a split-mode world: World(mode='split')")
        if not servers:
            raise WorldError("a split agent needs at least one server to stream from")
        return await self._start_split_agent(extra, servers=servers, iptables=iptables, app_port=app_port, env=env,
                                             interpreter_flags=interpreter_flags)

    async def _start_split_agent(self, extra: Sequence[str], *, servers: Sequence[ServerProcess] | None = None,
                                 iptables: bool, app_port: int | None, env: Mapping[str, str] | None,
                                 interpreter_flags: Sequence[str], wrapper: Sequence[str] = ()) -> AgentProcess:
        """A split agent; with ``servers`` None, it owns a server of its own, given ``extra``'s server flags."""
        assert self._flag_route is not None
        server_flags, agent_flags = self._flag_route.split(extra)
        reaching = sorted(set(agent_flags) & (self._flag_route.server | {"--kubeconfig"}))
        if reaching:
            raise WorldError(f"a split agent must not be given {', '.join(reaching)}: those are the server's")
        if servers is not None and server_flags:
            raise WorldError(f"{', '.join(server_flags)}: give the servers' flags to start_server, "
                             "not to an agent of replicas already running")
        agent_env = self.split_agent_env(env)  # checked before anything starts
        assert self.tls is not None
        owned = None
        if servers is None:
            owned = await self.start_server(*server_flags)
            servers = [owned]
        metrics_port = free_port()
        argv = [
            *wrapper, *self._podiam(interpreter_flags), "agent",
            "--node", self.node_name,
            "--app-port", str(app_port or free_port()),
            "--metrics-port", str(metrics_port),
            "--host-ip", self.net.gateway_ip,
            "--host-interface", self.net.bridge_name,
            "--metadata-addr", self.node_imds_addr,
            "--server-address", ",".join(s.address for s in servers),
            "--server-name", SERVER_NAME,
            *_tls_flags(self.tls.agent),
            *(["--iptables"] if iptables else []),
            *agent_flags,
        ]  # fmt: skip
        agent = AgentProcess(argv, agent_env, self._tmp / f"agent-{len(self.agents)}.log", metrics_port,
                             server=owned)
        self.agents.append(agent)
        await agent.start()  # on failure, stopped with the world's agents, and its server with it
        return agent

    async def set_namespace(self, namespace: str, annotations: Mapping[str, str | None]) -> None:
        """Create the namespace or change its annotations (None removes one), as kubectl annotate."""
        await self.ensure_namespace(namespace)
        await self.kube.patch(Namespace, namespace, {"metadata": {"annotations": dict(annotations)}},
                              patch_type=PatchType.MERGE)

    async def pod_events(self, pod: WorldPod) -> list[Any]:
        """The Events recorded on ``pod``, as `kubectl describe pod` shows them."""
        events = [e async for e in self.kube.list(Event, namespace=pod.namespace)]
        return [e for e in events if e.involvedObject.name == pod.name]

    async def node_events(self) -> list[Any]:
        """The Events recorded on this world's Node, as `kubectl describe node` shows them."""
        events = [e async for e in self.kube.list(Event, namespace="default")]
        return [e for e in events if e.involvedObject.kind == "Node" and e.involvedObject.name == self.node_name]

    async def set_node_taints(self, taints: Sequence[Mapping[str, str]]) -> None:
        """This world's Node with exactly these taints (key, value, effect): registered as a kubelet
        with --register-with-taints does it, or its taints replaced as `kubectl taint` would."""
        spec = NodeSpec(taints=[Taint(key=t["key"], effect=t["effect"], value=t.get("value")) for t in taints] or None)
        try:
            await self.kube.create(Node(metadata=ObjectMeta(name=self.node_name), spec=spec))
        except ApiError as e:
            if e.status.code != 409:
                raise
            await self.kube.patch(Node, self.node_name, {"spec": {"taints": [dict(t) for t in taints] or None}},
                                  patch_type=PatchType.MERGE)

    async def node_taints(self) -> list[dict[str, Any]]:
        """This world's Node's taints, as `kubectl get node -o json` shows them."""
        node = await self.kube.get(Node, self.node_name)
        return [t.to_dict() for t in (node.spec.taints if node.spec is not None and node.spec.taints else [])]

    async def explain(self, *args: str) -> tuple[int, str]:
        """Run `podiam explain` against this world's API; returns exit code and output."""
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "podiam", "explain", "--kubeconfig", str(self.kubeconfig),
            "--base-role-arn", BASE_ARN, *args,
            env={"PATH": os.environ.get("PATH", os.defpath), "LANG": "C.UTF-8", **self.sts.client_env()},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        async with asyncio.timeout(60):
            out, _ = await process.communicate()
        assert process.returncode is not None
        return process.returncode, out.decode()

    async def ensure_namespace(self, namespace: str) -> None:
        if namespace in self._namespaces:
            return
        with contextlib.suppress(Exception):  # already there (the emulator answers 409)
            await self.kube.create(Namespace(metadata=ObjectMeta(name=namespace)))
        self._namespaces.add(namespace)

    async def add_pod(
        self,
        name: str,
        namespace: str = "default",
        *,
        role: str | None = None,
        annotations: Mapping[str, str] | None = None,
        ip: str | None = None,
        register: bool = True,
        host_network: bool = False,
    ) -> WorldPod:
        """A pod network namespace and, unless ``register`` is False, its Running Pod object."""
        net_pod = await self.net.add_pod(f"{namespace}-{name}"[:40], ip=ip)
        pod = WorldPod(self, net_pod, namespace, name)
        if register:
            await self.register(pod, role=role, annotations=annotations, host_network=host_network)
        return pod

    async def register(self, pod: WorldPod, *, role: str | None = None,
                       annotations: Mapping[str, str] | None = None, host_network: bool = False) -> None:
        """Create the Pod object as a kubelet would report a running pod on this node."""
        await self.ensure_namespace(pod.namespace)
        notes = dict(annotations or {})
        if role is not None:
            notes["iam.amazonaws.com/role"] = role
        await self.kube.create(KubePod(
            metadata=ObjectMeta(name=pod.name, namespace=pod.namespace, annotations=notes),
            spec=PodSpec(containers=[Container(name="app", image="app")], nodeName=self.node_name,
                         serviceAccountName="default", hostNetwork=host_network or None),
        ))
        # Like a kubelet: the API server ignores status on create; it is reported separately.
        await self.kube.patch(KubePod.Status, pod.name, {"status": {
            "phase": "Running", "podIP": pod.ip, "podIPs": [{"ip": pod.ip}],
        }}, namespace=pod.namespace, patch_type=PatchType.MERGE)

    async def delete_pod(self, pod: WorldPod, *, keep_network: bool = False) -> None:
        """Delete the Pod object and, unless ``keep_network``, its network namespace."""
        await self.kube.delete(KubePod, pod.name, namespace=pod.namespace)
        if not keep_network:
            await self.net.remove_pod(pod.net)
