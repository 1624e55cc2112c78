"""
`podiam certs init`'s output, used as it is by split mode's server and agent: the issue's
"works as-is, as files and as Secrets". The command runs as an operator runs it (a process);
the server and the agent are podiam's own gRPC server and stream client over real mutual TLS.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

from podiam.kube.pod_index import PodIndex
from podiam.observability.metrics import Metrics
from podiam.remote.client import ServerStream, StreamSettings
from podiam.remote.feed import ClusterFeed, FeedLimits
from podiam.remote.mirror import Mirror
from podiam.remote.server import GrpcServer, ServiceSettings
from podiam.remote.tls import TlsFiles

NODE = "node-1"


def certs_init(out: Path, *flags: str) -> None:
    subprocess.run([sys.executable, "-m", "podiam", "certs", "init", "--out", str(out),
                    "--server-dns", "localhost", *flags], check=True, capture_output=True, timeout=60)


def as_kubelet_mounts(secret_file: Path, mount: Path) -> TlsFiles:
    """A kubernetes.io/tls Secret's keys as files, as a Secret volume mounts them."""
    mount.mkdir()
    for key, value in json.loads(secret_file.read_text())["data"].items():
        (mount / key).write_bytes(base64.b64decode(value))
    return TlsFiles(str(mount / "tls.crt"), str(mount / "tls.key"), str(mount / "ca.crt"))


async def get_snapshot(server_files: TlsFiles, agent_files: TlsFiles, within: float = 10.0) -> None:
    """An agent holding ``agent_files`` gets its node's snapshot from a server holding
    ``server_files`` within ``within`` seconds; TimeoutError if the handshake never succeeds."""
    feed = ClusterFeed(FeedLimits(change_log=10, send_queue=10), host_identity=lambda node: None,
                       prefetch=lambda identity: None)
    async with GrpcServer(feed, server_files, ServiceSettings(bind="127.0.0.1:0"), Metrics()) as server:
        mirror = Mirror(PodIndex, NODE)
        stream = ServerStream(mirror, agent_files, StreamSettings((f"localhost:{server.port}",)), Metrics())
        task = asyncio.create_task(stream.run(), name="certs-test-stream")
        try:
            await asyncio.wait_for(mirror.synced.wait(), within)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_the_files_work_as_they_are(tmp_path: Path) -> None:
    certs_init(tmp_path / "pki")
    pki = tmp_path / "pki"
    server = TlsFiles(*(str(pki / "server" / name) for name in ("tls.crt", "tls.key", "ca.crt")))
    agent = TlsFiles(*(str(pki / "agent" / name) for name in ("tls.crt", "tls.key", "ca.crt")))
    await get_snapshot(server, agent)


async def test_the_secrets_work_as_a_kubelet_mounts_them(tmp_path: Path) -> None:
    certs_init(tmp_path / "manifests", "--format", "kubernetes", "--namespace", "podiam")
    manifests = tmp_path / "manifests"
    server = as_kubelet_mounts(manifests / "podiam-server-tls.json", tmp_path / "server")
    agent = as_kubelet_mounts(manifests / "podiam-agent-tls.json", tmp_path / "agent")
    await get_snapshot(server, agent)


async def test_an_agent_of_another_init_is_not_served(tmp_path: Path) -> None:
    certs_init(tmp_path / "one")
    certs_init(tmp_path / "two")
    server = TlsFiles(*(str(tmp_path / "one" / "server" / n) for n in ("tls.crt", "tls.key", "ca.crt")))
    stranger = TlsFiles(*(str(tmp_path / "two" / "agent" / n) for n in ("tls.crt", "tls.key", "ca.crt")))
    with pytest.raises(TimeoutError):  # the agent keeps retrying; the server never lets it in
        await get_snapshot(server, stranger, within=3.0)
