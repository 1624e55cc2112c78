"""
Pods as Linux network namespaces, for the tests and the demo.

``PodNetwork`` is a node in miniature: a Linux bridge (the pod-facing interface the DNAT
rule names, its address the node IP podiam listens on) and, per pod, a network namespace
joined to it by a veth pair. Traffic from a pod to 169.254.169.254 is routed through the
bridge, so it crosses nat PREROUTING exactly as pod traffic does on a real node, with the
pod's own source IP. Needs root.

Every object is named ``pdm`` + a 6-hex-digit network id (+ a suffix), so that parallel
runs never collide and ``cleanup_stale`` can find what a crashed run left. A run records
its owner process in ``STATE_DIR``; ``cleanup_stale`` removes only objects whose owner is
gone, so it is safe to call while other runs are alive.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import json
import os
import random
import re
import secrets
import shlex
import shutil
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, Self

PREFIX = "pdm"
"""Start of every bridge, veth and netns name this module creates."""

STATE_DIR = Path("/run/podiam-sandbox")
"""One file per live PodNetwork naming its owner process; on tmpfs, like /run/netns."""

SUBNET_POOL = ipaddress.IPv4Network("10.213.0.0/16")
"""Where each PodNetwork takes its /24 from, avoiding subnets already in use."""

IP_TIMEOUT = 10.0
"""Seconds: deadline of one ``ip`` command."""

RUN_TIMEOUT = 60.0
"""Seconds: default deadline of a command run inside a pod."""

HTTP_TIMEOUT = 5.0
"""Seconds: default socket timeout of an HTTP request made from inside a pod."""

_ID_RE = re.compile(rf"^{PREFIX}([0-9a-f]{{6}})")
_LINK_RE = re.compile(rf"^{PREFIX}([0-9a-f]{{6}})(v\d+)?$")
_NETNS_RE = re.compile(rf"^{PREFIX}([0-9a-f]{{6}})-")
_POD_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,40}")
_RULE_COMMENT_MARK = "podiam:"

# Runs inside the pod with the interpreter running podiam, standard library only. The
# request comes on stdin and the response goes to stdout as JSON, so that nothing needs
# quoting and binary bodies survive (base64).
_HTTP_SCRIPT = """\
import base64, http.client, json, sys
req = json.load(sys.stdin)
try:
    conn = http.client.HTTPConnection(req["host"], req["port"], timeout=req["timeout"])
    body = None if req["body"] is None else base64.b64decode(req["body"])
    conn.request(req["method"], req["path"], body=body, headers=req["headers"])
    resp = conn.getresponse()
    data = resp.read()
    out = {"status": resp.status, "headers": resp.getheaders(), "body": base64.b64encode(data).decode()}
    conn.close()
except Exception as e:
    out = {"error": type(e).__name__, "message": str(e)}
json.dump(out, sys.stdout)
"""


class SandboxError(Exception):
    """The sandbox could not set up, use or tear down its network."""


class CommandTimeout(SandboxError):
    """A command did not finish within its deadline; it was killed."""


class PodHttpError(SandboxError):
    """An HTTP request from inside a pod got no response.

    ``reason`` is the Python exception name inside the pod (ConnectionRefusedError,
    TimeoutError, ...), for tests that expect a particular failure.
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def check(self) -> Self:
        """Self when the command succeeded, else SandboxError with its stderr."""
        if self.returncode != 0:
            raise SandboxError(
                f"{shlex.join(self.argv)} failed with exit status {self.returncode}: "
                f"{self.stderr.strip() or '(no stderr)'}"
            )
        return self


class HttpResponse(NamedTuple):
    status: int
    headers: dict[str, str]
    """Lower-cased names; repeated headers joined with ', '."""
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def _exec(
    argv: Sequence[str],
    *,
    deadline: float,
    env: Mapping[str, str] | None = None,
    stdin: bytes | None = None,
) -> CommandResult:
    """Run argv (no shell); on deadline or cancellation kill its whole process group."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,  # its own process group, so children die with it
        )
    except OSError as e:
        raise SandboxError(f"cannot run {shlex.join(argv)}: {e}") from e
    try:
        async with asyncio.timeout(deadline):
            out, err = await proc.communicate(stdin)
    except BaseException as e:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        if isinstance(e, TimeoutError):
            raise CommandTimeout(f"{shlex.join(argv)} did not finish within {deadline:g} s") from None
        raise
    assert proc.returncode is not None
    return CommandResult(
        tuple(argv), proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")
    )


def _ip_binary() -> str:
    # Absolute, because pod commands run with a replaced environment that may lack PATH.
    return shutil.which("ip") or "/sbin/ip"


async def _ip(*args: str, ok_errors: tuple[str, ...] = ()) -> CommandResult:
    """Run ``ip ARGS``; failures whose stderr contains one of ``ok_errors`` are not errors."""
    result = await _exec([_ip_binary(), *args], deadline=IP_TIMEOUT)
    if result.returncode != 0 and any(marker in result.stderr for marker in ok_errors):
        return result
    return result.check()


async def _ip_json(*args: str) -> list[dict[str, Any]]:
    result = await _ip("-j", *args)
    text = result.stdout.strip()
    if not text:  # some iproute2 versions print nothing for an empty list
        return []
    parsed = json.loads(text)
    if not isinstance(parsed, list):
        raise SandboxError(f"unexpected output of ip -j {' '.join(args)}: {text[:200]}")
    return parsed


_GONE = ("Cannot find device", "No such file or directory", "does not exist")


@dataclass(eq=False)
class Pod:
    """A pod: a network namespace with eth0 on the PodNetwork's bridge."""

    name: str
    ip: str
    netns: str
    veth: str
    """Host end of the veth pair (a port of the bridge)."""
    removed: bool = field(default=False, init=False)

    async def run(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        *,
        timeout: float = RUN_TIMEOUT,
        stdin: bytes | None = None,
    ) -> CommandResult:
        """Run argv inside the pod's network namespace; a non-zero exit is not an error.

        ``env`` replaces the environment entirely. Without it the command gets PATH and
        LANG only: host credentials (AWS_*, KUBECONFIG, ...) never leak into a pod.
        """
        if env is None:
            env = {"PATH": os.environ.get("PATH", os.defpath), "LANG": "C.UTF-8"}
        return await _exec(
            [_ip_binary(), "netns", "exec", self.netns, *argv], deadline=timeout, env=env, stdin=stdin
        )

    async def http(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str] | None = None,
        host: str = "169.254.169.254",
        port: int = 80,
        *,
        body: bytes | None = None,
        timeout: float = HTTP_TIMEOUT,
    ) -> HttpResponse:
        """One HTTP request made from inside the pod; PodHttpError if no response came."""
        request = {
            "method": method,
            "path": path,
            "headers": dict(headers or {}),
            "host": host,
            "port": port,
            "timeout": timeout,
            "body": None if body is None else base64.b64encode(body).decode(),
        }
        # The outer deadline leaves room for the interpreter to start and report the
        # socket timeout itself, which says more than a killed process.
        result = await self.run(
            [sys.executable, "-I", "-c", _HTTP_SCRIPT],
            timeout=timeout + 10.0,
            stdin=json.dumps(request).encode(),
        )
        result.check()
        try:
            answer = json.loads(result.stdout)
        except json.JSONDecodeError as e:
            raise SandboxError(
                f"pod {self.name}: unreadable HTTP helper output: {result.stdout[:200]!r}"
            ) from e
        if "error" in answer:
            raise PodHttpError(
                f"pod {self.name}: {method} http://{host}:{port}{path} failed: "
                f"{answer['error']}: {answer['message']}",
                reason=answer["error"],
            )
        merged: dict[str, str] = {}
        for name, value in answer["headers"]:
            key = name.lower()
            merged[key] = f"{merged[key]}, {value}" if key in merged else value
        return HttpResponse(answer["status"], merged, base64.b64decode(answer["body"]))


class PodNetwork:
    """A bridge with pods on it; everything it created is removed on exit, even after errors.

    ``async with PodNetwork() as net: pod = await net.add_pod("a")``
    """

    def __init__(self, *, subnet_pool: ipaddress.IPv4Network = SUBNET_POOL) -> None:
        if subnet_pool.prefixlen > 24:
            raise ValueError(f"subnet pool {subnet_pool} is smaller than a /24")
        self.id = secrets.token_hex(3)
        self.bridge_name = f"{PREFIX}{self.id}"
        self._pool = subnet_pool
        self._subnet: ipaddress.IPv4Network | None = None
        self._pods: dict[str, Pod] = {}
        self._used_ips: set[str] = set()
        self._counter = 0
        self._state_file = STATE_DIR / f"{self.id}.json"

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        if self._subnet is None:
            raise SandboxError("the PodNetwork is not set up: use it as 'async with PodNetwork() as net'")
        return self._subnet

    @property
    def gateway_ip(self) -> str:
        """The bridge's address: the pods' default gateway, the node IP the DNAT rule targets."""
        return str(self.subnet.network_address + 1)

    @property
    def pods(self) -> list[Pod]:
        return list(self._pods.values())

    async def __aenter__(self) -> Self:
        # Recorded before anything exists, so that cleanup_stale never takes a live
        # network for a crashed one.
        _record_owner(self._state_file)
        try:
            await _ip(
                "link", "add", self.bridge_name, "type", "bridge", "stp_state", "0", "forward_delay", "0"
            )
            self._subnet = await self._claim_subnet()
            await _ip("link", "set", self.bridge_name, "up")
        except BaseException as e:
            await self._teardown(e)
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._teardown(exc)

    async def _claim_subnet(self) -> ipaddress.IPv4Network:
        candidates = list(self._pool.subnets(new_prefix=24))
        random.shuffle(candidates)  # parallel runs rarely try the same subnet at once
        for subnet in candidates:
            if any(subnet.overlaps(used) for used in await _networks_in_use(exclude=self.bridge_name)):
                continue
            gateway = f"{subnet.network_address + 1}/{subnet.prefixlen}"
            await _ip("addr", "add", gateway, "dev", self.bridge_name)
            # Check again now that it is ours: another run may have claimed it meanwhile.
            if not any(subnet.overlaps(used) for used in await _networks_in_use(exclude=self.bridge_name)):
                return subnet
            await _ip("addr", "del", gateway, "dev", self.bridge_name)
        raise SandboxError(f"no /24 in {self._pool} is free of existing addresses and routes")

    async def add_pod(self, name: str, ip: str | None = None) -> Pod:
        """Create a pod (netns + veth on the bridge) with the next free IP, or ``ip``."""
        if not _POD_NAME_RE.fullmatch(name):
            raise SandboxError(f"pod name {name!r}: use 1-40 letters, digits, '_', '.' or '-'")
        address = self._take_ip(ip)
        index = self._counter
        self._counter += 1
        pod = Pod(
            name=name,
            ip=address,
            netns=f"{self.bridge_name}-{index}-{name}",
            veth=f"{self.bridge_name}v{index}",
        )
        self._pods[pod.netns] = pod
        try:
            await _ip("netns", "add", pod.netns)
            # The pod end is created directly inside the namespace, already named eth0.
            await _ip("link", "add", pod.veth, "type", "veth", "peer", "name", "eth0", "netns", pod.netns)
            await _ip("link", "set", pod.veth, "master", self.bridge_name, "up")
            await _ip("-n", pod.netns, "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", "eth0")
            await _ip("-n", pod.netns, "link", "set", "lo", "up")
            await _ip("-n", pod.netns, "link", "set", "eth0", "up")
            await _ip("-n", pod.netns, "route", "add", "default", "via", self.gateway_ip)
        except BaseException:
            with contextlib.suppress(SandboxError):
                await self.remove_pod(pod)
            raise
        return pod

    def _take_ip(self, ip: str | None) -> str:
        subnet = self.subnet
        if ip is None:
            for host in subnet.hosts():
                candidate = str(host)
                if candidate != self.gateway_ip and candidate not in self._used_ips:
                    self._used_ips.add(candidate)
                    return candidate
            raise SandboxError(f"no free address left in {subnet}")
        try:
            wanted = ipaddress.IPv4Address(ip)
        except ValueError as e:
            raise SandboxError(f"pod IP {ip!r} is not an IPv4 address") from e
        if wanted not in subnet or wanted in (subnet.network_address, subnet.broadcast_address):
            raise SandboxError(f"pod IP {ip} is not a host address of this network's subnet {subnet}")
        if str(wanted) == self.gateway_ip or str(wanted) in self._used_ips:
            raise SandboxError(f"pod IP {ip} is in use (gateway or another pod)")
        self._used_ips.add(str(wanted))
        return str(wanted)

    async def remove_pod(self, pod: Pod) -> None:
        """Delete the pod's processes, veth and namespace; its IP becomes free again."""
        if pod.removed:
            return
        await _remove_netns_objects(pod.netns, pod.veth)
        pod.removed = True
        self._pods.pop(pod.netns, None)
        self._used_ips.discard(pod.ip)

    async def _teardown(self, exc: BaseException | None) -> None:
        failures: list[str] = []
        for pod in list(self._pods.values()):
            try:
                await self.remove_pod(pod)
            except SandboxError as e:
                failures.append(str(e))
        try:
            await _ip("link", "del", self.bridge_name, ok_errors=_GONE)
        except SandboxError as e:
            failures.append(str(e))
        if not failures:
            self._state_file.unlink(missing_ok=True)
            return
        # With the state file kept, cleanup_stale will retry once this process is gone.
        message = f"PodNetwork {self.bridge_name}: teardown left objects behind: " + "; ".join(failures)
        if exc is not None:
            exc.add_note(message)  # never hide the error that ended the block
        else:
            raise SandboxError(message)


async def _remove_netns_objects(netns: str, veth: str | None) -> None:
    # A process left in the namespace would keep it, and its veth, alive after
    # `ip netns del`; so kill those first and delete the veth explicitly.
    pids = await _ip("netns", "pids", netns, ok_errors=_GONE)
    for pid in pids.stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    if veth is not None:
        await _ip("link", "del", veth, ok_errors=_GONE)
    await _ip("netns", "del", netns, ok_errors=_GONE)


async def _networks_in_use(*, exclude: str) -> list[ipaddress.IPv4Network]:
    """Networks of every IPv4 address and route on the machine, except on ``exclude``."""
    found: list[ipaddress.IPv4Network] = []
    for link in await _ip_json("-4", "addr", "show"):
        if link.get("ifname") == exclude:
            continue
        for info in link.get("addr_info", []):
            found.append(ipaddress.IPv4Network(f"{info['local']}/{info['prefixlen']}", strict=False))
    for route in await _ip_json("-4", "route", "show", "table", "all"):
        dst = route.get("dst", "default")
        if dst != "default" and route.get("dev") != exclude:
            found.append(ipaddress.IPv4Network(dst, strict=False))
    return found


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot; with the pid, a unique identity."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (starttime); fields are counted after the parenthesised command name.
    return stat.rsplit(")", 1)[1].split()[19]


def _record_owner(state_file: Path) -> None:
    state_file.parent.mkdir(parents=True, exist_ok=True)
    state_file.write_text(json.dumps({"pid": os.getpid(), "start": _process_start(os.getpid())}))


def _owner_alive(network_id: str) -> bool:
    """Whether the process that created network ``network_id`` is still running.

    Asked afresh for every object, never from a snapshot: a run that starts while
    cleanup_stale works writes its state file before creating anything, so this answer
    protects its objects even then.
    """
    try:
        owner = json.loads((STATE_DIR / f"{network_id}.json").read_text())
        return owner["start"] is not None and _process_start(int(owner["pid"])) == owner["start"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _forget_dead_owners() -> None:
    for path in STATE_DIR.glob("*.json") if STATE_DIR.is_dir() else ():
        if not _owner_alive(path.stem):
            path.unlink(missing_ok=True)


async def cleanup_stale() -> list[str]:
    """Remove what crashed runs left (netns, veths, bridges, DNAT rules on their bridges).

    Objects of runs whose owner process is alive are kept. Returns what was removed.
    """
    removed: list[str] = []
    for entry in await _ip_json("netns", "list"):
        name = str(entry.get("name", ""))
        match = _NETNS_RE.match(name)
        if match and not _owner_alive(match.group(1)):
            await _remove_netns_objects(name, None)
            removed.append(f"netns {name}")
    stale = [
        match
        for link in await _ip_json("link", "show")
        if (match := _LINK_RE.match(str(link.get("ifname", "")))) and not _owner_alive(match.group(1))
    ]
    # Pod veths before bridges: deleting a bridge does not delete its ports.
    for match in sorted(stale, key=lambda m: m.group(2) is None):
        await _ip("link", "del", match.group(0), ok_errors=_GONE)
        removed.append(f"link {match.group(0)}")
    removed.extend(await _remove_stale_rules())
    _forget_dead_owners()
    return removed


async def _remove_stale_rules() -> list[str]:
    """Delete podiam-commented nat PREROUTING rules that name a dead run's bridge."""
    iptables = shutil.which("iptables")
    if iptables is None:
        return []
    listing = (
        await _exec([iptables, "-w", "5", "-t", "nat", "-S", "PREROUTING"], deadline=IP_TIMEOUT)
    ).check()
    removed: list[str] = []
    for line in listing.stdout.splitlines():
        if _RULE_COMMENT_MARK not in line:
            continue
        tokens = shlex.split(line)
        if tokens[:2] != ["-A", "PREROUTING"] or "-i" not in tokens:
            continue
        match = _ID_RE.match(tokens[tokens.index("-i") + 1])
        if match and not _owner_alive(match.group(1)):
            delete = [iptables, "-w", "5", "-t", "nat", "-D", *tokens[1:]]
            result = await _exec(delete, deadline=IP_TIMEOUT)
            if result.returncode != 0 and "does a matching rule exist" not in result.stderr:
                result.check()
            removed.append(f"iptables {line}")
    return removed
