"""
What each kind of agent process loads: a library imported is resident for the process's life
(docs/benchmarks.md, scenario 5), so an agent must not import what its mode never calls.

Each test runs a real `podiam agent` that builds every component of its mode (agent mode:
the STS client, the Kubernetes client and its watch against the API emulator; split mode: the
stream to a server, its TLS files read) and then stops at the last step, a port that is taken,
and writes the names of the modules it loaded as it exits.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from podiam_sandbox.kubeapi import run_kubeapi
from tls_files import leaf_files

_RECORD = (
    "import atexit, json, sys\n"
    "record = sys.argv.pop(1)\n"
    "atexit.register(lambda: open(record, 'w').write(json.dumps(sorted(sys.modules))))\n"
    "from podiam.cli import main\n"
    "main()\n"
)
"""`podiam agent ...`, writing sys.modules to its first argument at exit (after main's SystemExit)."""

NEVER_IN_AN_AGENT = ("cryptography", "grpc", "google.protobuf")
"""Split mode's certificates are made by `podiam certs init` and checked by the server; the wire is split mode's."""

NEVER_IN_A_SPLIT_AGENT = ("cryptography", "botocore", "aiobotocore", "lightkube", "httpx2", "yaml")
"""It holds no AWS or Kubernetes access; its own certificate's expiry is read without cryptography."""


@pytest.fixture
def taken_port() -> Iterator[str]:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        yield str(taken.getsockname()[1])


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


async def _modules_of_agent(tmp_path: Path, *args: str) -> tuple[set[str], str]:
    """The modules a `podiam agent` with ``args`` had loaded when it exited, and its output."""
    record = tmp_path / "modules.json"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _RECORD, str(record), "agent", "--node", "node-1", "--metadata-addr", "127.0.0.1:9",
        *args,
        env={"PATH": "/usr/bin:/bin", "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "testing",
             "AWS_SECRET_ACCESS_KEY": "testing", "AWS_ENDPOINT_URL_STS": "http://127.0.0.1:9"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(60):
        out, _ = await process.communicate()
    return set(json.loads(record.read_text())), f"exit {process.returncode}: {out.decode()[-2000:]}"


def _loaded(modules: set[str], packages: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in packages))


async def test_an_agent_loads_no_certificate_library_and_no_grpc(tmp_path: Path, taken_port: str) -> None:
    async with run_kubeapi() as api:
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        modules, out = await _modules_of_agent(tmp_path, "--kubeconfig", str(kubeconfig),
                                               "--app-port", taken_port, "--metrics-port", _free_port())
    assert f"cannot listen on 0.0.0.0:{taken_port}" in out, out  # every component was built before
    assert {"aiobotocore.session", "lightkube"} <= modules, out
    assert _loaded(modules, NEVER_IN_AN_AGENT) == []


async def test_a_split_agent_loads_no_aws_kubernetes_or_certificate_library(tmp_path: Path, taken_port: str) -> None:
    ca = trustme.CA()
    files = leaf_files(tmp_path, "agent", ca.issue_cert("podiam-agent"), ca)
    modules, out = await _modules_of_agent(
        tmp_path, "--server-address", f"127.0.0.1:{_free_port()}", "--cert", files.cert, "--key", files.key,
        "--ca", files.ca, "--app-port", taken_port, "--metrics-port", _free_port())
    # It waited for a server that never answered (settings.RemoteSettings.first_snapshot_wait), then
    # reached the last step of start-up: the stream, its TLS files and the mirror were all built.
    assert f"cannot listen on 0.0.0.0:{taken_port}" in out, out
    assert {"grpc.aio", "podiam.remote.client", "podiam.remote.tls"} <= modules, out
    assert _loaded(modules, NEVER_IN_A_SPLIT_AGENT) == []
