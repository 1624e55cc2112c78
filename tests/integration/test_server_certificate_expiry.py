"""
The server's podiam_tls_certificate_expiration_timestamp_seconds follows its certificate file:
set when it starts, and again when a renewed certificate is loaded at a new handshake.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import grpc
import trustme

from podiam.observability.metrics import Metrics
from podiam.policy import RolePolicy
from podiam.remote.feed import ClusterFeed, FeedLimits
from podiam.remote.server import GrpcServer, ServiceSettings
from podiam.remote.tls import TlsFiles, channel_credentials
from podiam.settings import RoleSettings

NAME = "podiam_tls_certificate_expiration_timestamp_seconds"
FIRST = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
RENEWED = dt.datetime(2031, 6, 7, 8, 9, 10, tzinfo=dt.UTC)


def files(directory: Path, ca: trustme.CA, leaf: trustme.LeafCert) -> TlsFiles:
    directory.mkdir(exist_ok=True)
    tls = TlsFiles(str(directory / "tls.crt"), str(directory / "tls.key"), str(directory / "ca.crt"))
    leaf.cert_chain_pems[0].write_to_path(tls.cert)
    leaf.private_key_pem.write_to_path(tls.key)
    ca.cert_pem.write_to_path(tls.ca)
    return tls


async def handshake(port: int, agent: TlsFiles) -> None:
    async with grpc.aio.secure_channel(f"localhost:{port}", channel_credentials(agent)) as channel:
        await asyncio.wait_for(channel.channel_ready(), 5)


async def test_the_server_exports_its_certificates_expiry_and_follows_a_renewal(tmp_path: Path) -> None:
    ca = trustme.CA()
    server_files = files(tmp_path / "server", ca, ca.issue_cert("localhost", not_after=FIRST))
    agent_files = files(tmp_path / "agent", ca, ca.issue_cert("agent"))
    feed = ClusterFeed(FeedLimits(change_log=10, send_queue=10),
                       RolePolicy.from_settings(RoleSettings(), "arn:aws:iam::123456789012:role/").host_identity,
                       prefetch=lambda identity: None)
    metrics = Metrics()
    async with GrpcServer(feed, server_files, ServiceSettings(bind="127.0.0.1:0"), metrics) as server:
        assert metrics.registry.get_sample_value(NAME) == FIRST.timestamp()
        files(tmp_path / "server", ca, ca.issue_cert("localhost", not_after=RENEWED))
        await handshake(server.port, agent_files)
        assert metrics.registry.get_sample_value(NAME) == RENEWED.timestamp()
