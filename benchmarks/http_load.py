"""
The reference peer and the load generator of the hot-path scenario: nginx (one worker,
no access log) serving a static file, a DNAT rule that puts nginx behind the same kernel
path as the agent, and wrk run inside a pod's network namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import ScenarioResult, run, spawned

WRK_DONE_LUA = """\
-- A JSON summary for the runner.
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"status_errors":%d,"timeouts":%d,"p50_us":%.1f,"p99_us":%.1f,"p999_us":%.1f,' ..
    '"mean_us":%.1f,"max_us":%.1f}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.mean, latency.max))
end
"""

TOKEN_PATH = "/latest/api/token"  # noqa: S105 - a URL path, not a secret
TOKEN_TTL_HEADER = ("X-aws-ec2-metadata-token-ttl-seconds", "21600")


@dataclass(frozen=True)
class WrkScript:
    """A wrk Lua script: what each request is; every script ends with the JSON summary."""

    name: str
    lua: str


SDK_GET = WrkScript("sdk-request.lua", """\
-- The request an SDK makes for credentials (IMDSv2).
wrk.method = "GET"
wrk.headers["X-aws-ec2-metadata-token"] = os.getenv("BENCH_TOKEN")
wrk.headers["User-Agent"] = "Boto3/1.x md/podiam-bench"
wrk.headers["Accept-Encoding"] = "identity"
""" + WRK_DONE_LUA)

SDK_SEQUENCE = WrkScript("sdk-sequence.lua", f"""\
-- The three requests of an SDK's credential refresh, in turn (per wrk thread): the IMDSv2
-- token PUT, the role list GET, the credentials GET. The URL's path is the credentials'
-- (.../security-credentials/ROLE); -H headers (Connection: close) go on all three.
local creds = wrk.path
local list = creds:match("^(.*/)[^/]+$")
local requests, i = {{}}, 0

local function with(extra)
  local h = {{}}
  for k, v in pairs(wrk.headers) do h[k] = v end
  h["User-Agent"] = "Boto3/1.x md/podiam-bench"
  h["Accept-Encoding"] = "identity"
  for k, v in pairs(extra) do h[k] = v end
  return h
end

function init(args)
  local token = {{["X-aws-ec2-metadata-token"] = os.getenv("BENCH_TOKEN")}}
  requests[1] = wrk.format("PUT", "{TOKEN_PATH}", with({{["{TOKEN_TTL_HEADER[0]}"] = "{TOKEN_TTL_HEADER[1]}"}}), "")
  requests[2] = wrk.format("GET", list, with(token))
  requests[3] = wrk.format("GET", creds, with(token))
end

function request()
  i = i % 3 + 1
  return requests[i]
end
""" + WRK_DONE_LUA)

NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    server_tokens off;
    default_type text/plain;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    etag off;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
    open_file_cache max=16 inactive=60s;
    open_file_cache_valid 60s;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    server {{
        listen {host}:{port};
        root {prefix}/www;
{answers}    }}
}}
"""


def tools_missing() -> list[str]:
    return [tool for tool in ("wrk", "nginx") if shutil.which(tool) is None]


async def versions() -> dict[str, str]:
    found: dict[str, str] = {}
    if shutil.which("wrk"):
        r = await run(["wrk", "-v"], timeout=10)
        found["wrk"] = (r.stdout + r.stderr).splitlines()[0].split(" [")[0].removeprefix("wrk ").strip()
    if shutil.which("nginx"):
        r = await run(["nginx", "-v"], timeout=10)
        found["nginx"] = (r.stdout + r.stderr).strip().removeprefix("nginx version: nginx/")
    return found


@dataclass
class Nginx:
    pid: int
    host: str
    port: int
    conf: str


def _nginx_string(body: bytes) -> str:
    """``body`` as an nginx quoted string; only what nginx can say byte for byte."""
    text = body.decode("ascii")
    if "$" in text or any(not (c.isprintable() or c in "\n\t") for c in text):
        raise ValueError(f"nginx cannot return these bytes literally: {body[:80]!r}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t") + '"'


@contextlib.asynccontextmanager
async def nginx_serving(body: bytes, url_path: str, *, host: str, port: int, workdir: Path,
                        result: ScenarioResult, answers: Mapping[str, bytes] | None = None) -> AsyncIterator[Nginx]:
    """nginx with one worker serving ``body`` as the static file at ``url_path``, and each of
    ``answers`` (exact path -> body) with ``return 200``, whatever the method (the token PUT)."""
    prefix = workdir / "nginx"
    for sub in ("www", "body", "proxy", "fastcgi"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    target = prefix / "www" / url_path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(body)
    for path in [workdir, *prefix.rglob("*"), prefix]:  # the worker runs as an unprivileged user
        path.chmod(0o755 if path.is_dir() else 0o644)
    locations = "".join(f"        location = {path} {{ return 200 {_nginx_string(text)}; }}\n"
                        for path, text in (answers or {}).items())
    conf = NGINX_CONF.format(prefix=prefix, host=host, port=port, answers=locations)
    conf_path = prefix / "nginx.conf"
    conf_path.write_text(conf)
    argv = ["nginx", "-p", str(prefix), "-c", str(conf_path), "-e", str(prefix / "error.log")]
    result.command(argv)
    result.command(f"# {conf_path}:\n{conf.rstrip()}")
    async with spawned(argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
                       stop_signal=15) as process:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while True:  # nginx has no readiness signal but its listening socket
            if process.returncode is not None:
                err = await process.stderr.read() if process.stderr else b""
                raise RuntimeError(f"nginx exited {process.returncode}: {err.decode(errors='replace')}")
            with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
                break
            if loop.time() > deadline:
                raise RuntimeError("nginx did not listen within 10 s")
            await asyncio.sleep(0.02)
        yield Nginx(process.pid, host, port, conf)


@contextlib.asynccontextmanager
async def dnat_rule(bridge: str, metadata_port: int, *, host: str, port: int,
                    result: ScenarioResult) -> AsyncIterator[None]:
    """169.254.169.254:metadata_port -> host:port for pod traffic, like the agent's own rule.

    The comment starts with ``podiam:`` and the rule names the world's bridge, so the
    sandbox's cleanup_stale removes it even after a crash.
    """
    spec = ["-p", "tcp", "-d", "169.254.169.254", "--dport", str(metadata_port), "-i", bridge,
            "-m", "comment", "--comment", "podiam: benchmark reference peer",
            "-j", "DNAT", "--to-destination", f"{host}:{port}"]
    add = ["iptables", "-w", "5", "-t", "nat", "-I", "PREROUTING", "1", *spec]
    result.command(add)
    (await run(add, timeout=15)).check()
    try:
        yield
    finally:
        (await run(["iptables", "-w", "5", "-t", "nat", "-D", "PREROUTING", *spec], timeout=15)).check()


async def wrk(netns: str, url: str, token: str, *, threads: int, connections: int, seconds: float,
              workdir: Path, result: ScenarioResult, headers: tuple[str, ...] = (),
              script: WrkScript = SDK_GET) -> dict[str, Any]:
    """wrk inside the pod's network namespace; its JSON summary (latencies in microseconds).

    ``headers`` are added with -H (``Connection: close`` makes wrk open a connection per request);
    ``script`` says what each request is (the credential GET, or the SDK's three in turn).
    """
    script_path = workdir / script.name
    script_path.write_text(script.lua)
    if script != SDK_GET:  # the default one is described in each scenario's simplifications
        result.command(f"# {script.name}:\n{script.lua.rstrip()}")
    argv = ["ip", "netns", "exec", netns, "wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
            "--latency", *(arg for h in headers for arg in ("-H", h)), "-s", str(script_path), url]
    result.command(["ip", "netns", "exec", "<pod-netns>", *argv[4:]])
    env = {"PATH": os.environ.get("PATH", os.defpath), "BENCH_TOKEN": token}
    done = (await run(argv, timeout=seconds + 60, env=env)).check()
    for line in done.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            summary: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
            return summary
    raise RuntimeError(f"wrk printed no summary: {done.stdout[-1500:]}")


async def pod_time_wait(netns: str, port: int) -> int:
    """The pod's TCP sockets in TIME_WAIT towards 169.254.169.254:``port`` (the pod's view, before DNAT)."""
    done = (await run(["ip", "netns", "exec", netns, "ss", "-Htan", "state", "time-wait",
                       f"( dport = :{port} )"], timeout=30)).check()
    return len([line for line in done.stdout.splitlines() if line.strip()])


async def pod_tcp_active_opens(netns: str) -> int:
    """The TCP connections the pod's network namespace has opened so far (Tcp ActiveOpens of its
    /proc/net/snmp: every connect(), answered or not): counts wrk's connections independently of
    the server."""
    done = (await run(["ip", "netns", "exec", netns, "cat", "/proc/net/snmp"], timeout=30)).check()
    names, values = (line.split() for line in done.stdout.splitlines() if line.startswith("Tcp:"))
    return int(values[names.index("ActiveOpens")])


def add_wrk_figures(result: ScenarioResult, name: str, runs: list[dict[str, Any]], *, p999: bool = True,
                    cpu_of: str = "the server's process tree") -> None:
    """The figures every wrk load reports, from its runs' summaries (and ``cpu_s`` measured
    beside): requests/s, p50, p99 (and p99.9), CPU per request, errors."""
    result.add(f"{name}.requests_per_s", "req/s", [r["requests"] / (r["duration_us"] / 1e6) for r in runs])
    result.add(f"{name}.p50_ms", "ms", [r["p50_us"] / 1000 for r in runs])
    result.add(f"{name}.p99_ms", "ms", [r["p99_us"] / 1000 for r in runs])
    if p999:
        result.add(f"{name}.p99.9_ms", "ms", [r["p999_us"] / 1000 for r in runs])
    result.add(f"{name}.cpu_us_per_request", "us", [r["cpu_s"] * 1e6 / max(r["requests"], 1) for r in runs],
               f"user+system of {cpu_of} over the run, / requests")
    result.add(f"{name}.errors", "count", [r["connect_errors"] + r["read_errors"] + r["write_errors"]
                                           + r["status_errors"] + r["timeouts"] for r in runs],
               "socket errors + non-2xx + timeouts")
