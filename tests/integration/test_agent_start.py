"""
`podiam agent` as a process: configuration errors are refused at start with a clear message
and exit code 2, including failures after background tasks have started (which must stop).
"""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from podiam_sandbox.kubeapi import run_kubeapi


async def agent(*args: str, timeout: float = 30.0) -> tuple[int | None, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "podiam", "agent", "--node", "node-1", *args,
        env={"PATH": "/usr/bin:/bin", "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "testing",
             "AWS_SECRET_ACCESS_KEY": "testing", "AWS_ENDPOINT_URL_STS": "http://127.0.0.1:9"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(timeout):
        out, _ = await process.communicate()
    return process.returncode, out.decode()  # each test asserts the exact code


@pytest_asyncio.fixture
async def kubeconfig(tmp_path: Path) -> AsyncIterator[Path]:
    async with run_kubeapi() as api:
        yield api.write_kubeconfig(tmp_path / "kubeconfig")


async def test_a_missing_kubeconfig_is_a_clear_configuration_error(tmp_path: Path) -> None:
    code, out = await agent("--kubeconfig", str(tmp_path / "absent"))
    assert code == 2
    assert "cannot load Kubernetes API access from" in out
    assert "Traceback" not in out


async def test_iptables_without_host_ip_says_what_to_set(kubeconfig: Path) -> None:
    code, out = await agent("--kubeconfig", str(kubeconfig), "--iptables")
    assert code == 2
    assert "--host-ip" in out
    assert "Traceback" not in out


@pytest.mark.parametrize("which", ["--app-port", "--metrics-port"])
async def test_a_port_in_use_stops_the_started_watcher_and_exits_2(kubeconfig: Path, which: str) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        other = "--metrics-port" if which == "--app-port" else "--app-port"
        with socket.socket() as free:
            free.bind(("127.0.0.1", 0))
            free_port = str(free.getsockname()[1])
        code, out = await agent("--kubeconfig", str(kubeconfig), which, port, other, free_port,
                                "--metadata-addr", "127.0.0.1:9")
    assert code == 2
    assert f"cannot listen on 0.0.0.0:{port}" in out
    assert "Traceback" not in out
