"""
A metadata client that acts as many pods at once: one process, sockets created inside
each pod's network namespace (setns), so every request leaves from the pod's own IP and
crosses the real DNAT rule, without one interpreter per pod competing for the CPU.

Run as root by the benchmark runner; standard library only (uvloop when installed).
Reads one JSON job on the first line of stdin, writes one JSON result as the last line of
stdout. Modes:

``flows``   the SDK credential flow (PUT token, GET security-credentials/, GET
            security-credentials/ROLE; one connection per flow) once per pod. With
            ``"trigger": "stdin"`` flow i starts when the line ``i`` arrives (the runner
            writes it just before it sets that pod's IP); else all start at once.
``burst``   ``count`` concurrent GET security-credentials/ROLE from the first pod, each
            on its own connection; prints ``sent`` once every request is written, then
            waits for all the answers.
``rate``    the SDK flow at ``rate`` flows/s for ``duration`` s, round robin over the pods.

Every request has the SDKs' ``timeout`` (1 s by default) and no retry: a timeout or a
status other than 200 is a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

CLONE_NEWNET = 0x40000000
TOKEN_TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"  # noqa: S105 - a header name
TOKEN_HEADER = "X-aws-ec2-metadata-token"  # noqa: S105 - a header name
CREDS = "/latest/meta-data/iam/security-credentials/"
USER_AGENT = "Boto3/1.x md/podiam-bench"

_libc = ctypes.CDLL(None, use_errno=True)


class Netns:
    """Create sockets inside other network namespaces from this thread."""

    def __init__(self) -> None:
        self._own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        self._fds: dict[str, int] = {}

    def socket_in(self, netns: str) -> socket.socket:
        fd = self._fds.get(netns)
        if fd is None:
            fd = self._fds[netns] = os.open(f"/run/netns/{netns}", os.O_RDONLY)
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {netns}: {os.strerror(err)}")
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        finally:
            if _libc.setns(self._own, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns back: {os.strerror(err)}")
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


@dataclass
class Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    def send(self, method: str, path: str, host: str, headers: dict[str, str]) -> None:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"User-Agent: {USER_AGENT}",
                 "Accept-Encoding: identity", "Content-Length: 0" if method == "PUT" else ""]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self.writer.write(("\r\n".join(line for line in lines if line) + "\r\n\r\n").encode())

    async def receive(self) -> tuple[int, bytes]:
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        length = 0
        for line in header_lines:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        body = await self.reader.readexactly(length) if length else b""
        return int(status_line.split()[1]), body

    async def request(self, method: str, path: str, host: str, headers: dict[str, str]) -> tuple[int, bytes]:
        self.send(method, path, host, headers)
        await self.writer.drain()
        return await self.receive()

    def close(self) -> None:
        self.writer.close()


async def connect(sock: socket.socket, host: str, port: int) -> Conn:
    await asyncio.get_running_loop().sock_connect(sock, (host, port))
    reader, writer = await asyncio.open_connection(sock=sock)
    return Conn(reader, writer)


@dataclass
class Job:
    mode: str
    pods: list[dict[str, str]]
    host: str
    port: int
    timeout: float
    raw: dict[str, Any]


async def sdk_flow(netns: Netns, job: Job, pod: dict[str, str], sock: socket.socket | None = None) -> dict[str, Any]:
    """PUT token, GET the role list, GET the role's credentials; what an SDK does."""
    started = time.monotonic()
    out: dict[str, Any] = {"pod": pod["netns"], "start": started}
    conn = None
    step = "connect"
    try:
        async with asyncio.timeout(job.timeout):
            conn = await connect(sock or netns.socket_in(pod["netns"]), job.host, job.port)
        step = "token"
        async with asyncio.timeout(job.timeout):
            status, token = await conn.request("PUT", "/latest/api/token", job.host, {TOKEN_TTL_HEADER: "21600"})
        _expect(step, status)
        auth = {TOKEN_HEADER: token.decode()}
        step = "role_list"
        async with asyncio.timeout(job.timeout):
            status, role = await conn.request("GET", CREDS, job.host, auth)
        _expect(step, status)
        step = "credentials"
        async with asyncio.timeout(job.timeout):
            status, body = await conn.request("GET", CREDS + role.decode(), job.host, auth)
        _expect(step, status)
        json.loads(body)  # a whole credentials document
        out.update(ok=True, status=200)
    except _Failed as f:
        out.update(ok=False, status=f.status, error=f"{f.step}: HTTP {f.status}")
    except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
        out.update(ok=False, status=None, error=f"{step}: {type(e).__name__} {e}".strip())
    finally:
        if conn is not None:
            conn.close()
    out["end"] = time.monotonic()
    out["seconds"] = out["end"] - started
    return out


class _Failed(Exception):
    def __init__(self, step: str, status: int) -> None:
        super().__init__(step)
        self.step, self.status = step, status


def _expect(step: str, status: int) -> None:
    if status != 200:
        raise _Failed(step, status)


async def read_line() -> str:
    line: str = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    return line.strip()


async def run_flows(netns: Netns, job: Job) -> dict[str, Any]:
    # Sockets are made before any trigger, so that a flow starts with a connect, not a setns.
    socks = [netns.socket_in(p["netns"]) for p in job.pods]
    tasks: list[asyncio.Task[dict[str, Any]]] = []
    if job.raw.get("trigger") == "stdin":
        print("ready", flush=True)
        while len(tasks) < len(job.pods):
            line = await read_line()
            if not line:
                break
            i = int(line)
            tasks.append(asyncio.create_task(sdk_flow(netns, job, job.pods[i], socks[i])))
    else:
        tasks = [asyncio.create_task(sdk_flow(netns, job, p, s)) for p, s in zip(job.pods, socks, strict=True)]
    return {"flows": list(await asyncio.gather(*tasks))}


async def run_burst(netns: Netns, job: Job) -> dict[str, Any]:
    pod = job.pods[0]
    count = int(job.raw["count"])
    role = job.raw["role"]
    setup = await connect(netns.socket_in(pod["netns"]), job.host, job.port)
    status, token = await setup.request("PUT", "/latest/api/token", job.host, {TOKEN_TTL_HEADER: "21600"})
    setup.close()
    if status != 200:
        raise SystemExit(f"token request answered {status}")
    auth = {TOKEN_HEADER: token.decode()}
    conns = await asyncio.gather(*(connect(netns.socket_in(pod["netns"]), job.host, job.port) for _ in range(count)))
    for c in conns:
        c.send("GET", CREDS + role, job.host, auth)
    await asyncio.gather(*(c.writer.drain() for c in conns))
    sent = time.monotonic()
    print("sent", flush=True)

    async def answer(c: Conn) -> tuple[int | None, float]:
        try:
            async with asyncio.timeout(job.timeout):
                status, _ = await c.receive()
            return status, time.monotonic() - sent
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            return None, time.monotonic() - sent
        finally:
            c.close()

    answers = await asyncio.gather(*(answer(c) for c in conns))
    return {"sent_at": sent, "statuses": [s for s, _ in answers], "seconds": [t for _, t in answers]}


async def run_rate(netns: Netns, job: Job) -> dict[str, Any]:
    rate, duration = float(job.raw["rate"]), float(job.raw["duration"])
    loop = asyncio.get_running_loop()
    start = loop.time()
    tasks: list[asyncio.Task[dict[str, Any]]] = []
    i = 0
    while (due := start + i / rate) < start + duration:
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)  # the pacing of a steady request rate
        tasks.append(asyncio.create_task(sdk_flow(netns, job, job.pods[i % len(job.pods)])))
        i += 1
    flows = await asyncio.gather(*tasks)
    return {"flows": [{k: f[k] for k in ("ok", "seconds", "error") if k in f} for f in flows]}


async def main() -> None:
    raw = json.loads(sys.stdin.readline())
    job = Job(raw["mode"], raw["pods"], raw.get("host", "169.254.169.254"), int(raw.get("port", 80)),
              float(raw.get("timeout", 1.0)), raw)
    netns = Netns()
    runner = {"flows": run_flows, "burst": run_burst, "rate": run_rate}[job.mode]
    result = await runner(netns, job)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        with contextlib.suppress(KeyboardInterrupt):
            uvloop.run(main())
