"""
Path traversal through the allow-listed proxy (the 0.1.0 advisory), on the wire: request
targets are sent byte for byte over raw sockets (HTTP client libraries would normalise
them first), to both servers, with the stand-in for the node's IMDS recording the exact
target each upstream request carried. Every target is either refused before anything
reaches the node, or reaches it unchanged as an allow-listed canonical path.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import posixpath
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import unquote

import pytest
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pod_doubles import CredentialDouble, LoopbackPods
from podiam.credentials import Credentials, Identity
from podiam.imds.app import make_app
from podiam.imds.core import ImdsDeps, MetadataCore
from podiam.imds.fast_server import FastServer
from podiam.imds.rate_limit import RateLimiter
from podiam.imds.tokens import TokenIssuer
from podiam.imds.upstream import NodeMetadataClient
from podiam.kube.pod_index import PodIndex
from podiam.observability.audit import IssuanceLog
from podiam.observability.metrics import Metrics
from podiam.pods import PodInfo
from podiam.policy import RolePolicy
from podiam.settings import DEFAULT_ALLOW_ROUTE_REGEXP, ImdsSettings, RoleSettings
from podiam_sandbox.node_imds import (
    NODE_ACCESS_KEY_ID,
    NODE_INSTANCE_PROFILE_ID,
    NODE_ROLE_NAME,
    NODE_SECRET_ACCESS_KEY,
    NODE_USER_DATA,
    FakeNodeImds,
)

IP = "127.0.0.1"
NODE_SECRETS = (NODE_ACCESS_KEY_ID, NODE_SECRET_ACCESS_KEY, NODE_INSTANCE_PROFILE_ID, "DO-NOT-LEAK",
                NODE_USER_DATA.splitlines()[1])
ALLOWED = re.compile(DEFAULT_ALLOW_ROUTE_REGEXP)
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


class Source(CredentialDouble):
    def fresh(self, identity: Identity) -> Credentials | None:
        return Credentials("ASIAPOD", "pod-secret", "pod-token", NOW + dt.timedelta(hours=1), NOW)

    async def get(self, identity: Identity) -> Credentials:
        raise AssertionError("fresh credentials are always there")


@dataclass
class Node:
    imds: FakeNodeImds
    port: int
    metrics: Metrics

    def upstream_targets(self) -> list[str]:
        return [r.target for r in self.imds.requests if r.method == "GET"]


@asynccontextmanager
async def node(server: str) -> AsyncIterator[Node]:
    """One pod (at 127.0.0.1, role ``reader``) in front of the stand-in node IMDS."""
    index = PodIndex(RolePolicy.from_settings(RoleSettings(), "arn:aws:iam::123456789012:role/").identity)
    index.replace([PodInfo("shop", "web", "uid-web", IP, "Running", annotations={"iam.amazonaws.com/role": "reader"})])
    metrics = Metrics()
    async with FakeNodeImds() as imds, NodeMetadataClient(f"{imds.host}:{imds.port}", 1.0) as upstream:
        deps = ImdsDeps(pods=LoopbackPods(index), credentials=Source(),
                        tokens=TokenIssuer(), issuance=IssuanceLog("n1"),
                        metrics=metrics, settings=ImdsSettings(pod_wait=0.05), upstream=upstream,
                        ready=lambda: True, limiter=RateLimiter(0))
        if server == "fast":
            async with FastServer(MetadataCore(deps), IP, 0, 1.0) as fast:
                yield Node(imds, fast.port, metrics)
        else:
            async with TestServer(make_app(deps), host=IP) as test_server:
                assert test_server.port is not None
                yield Node(imds, test_server.port, metrics)


async def raw_get(port: int, target: str) -> tuple[int, bytes]:
    """GET ``target`` exactly as written (latin-1 bytes); status and body of the answer."""
    reader, writer = await asyncio.open_connection(IP, port)
    try:
        writer.write(b"GET " + target.encode("latin-1") + b" HTTP/1.1\r\nHost: 169.254.169.254\r\n"
                     b"Connection: close\r\n\r\n")
        async with asyncio.timeout(5):
            data = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def assert_no_node_secret(body: bytes) -> None:
    for secret in NODE_SECRETS:
        assert secret.encode() not in body


SERVERS = ["fast", "aiohttp"]
TRAVERSALS = [
    # The advisory's two examples, then the same class in other spellings.
    "/latest/meta-data/placement/../iam/security-credentials/" + NODE_ROLE_NAME,
    "/latest/meta-data/placement/../../user-data",
    "/latest/meta-data/placement/%2e%2e/%2e%2e/user-data",
    "/latest/meta-data/placement/%2E%2e/iam/info",
    "/latest/meta-data/placement/.%2e/.%2E/user-data",
    "/latest/meta-data/placement/%252e%252e/%252e%252e/user-data",
    "/latest/meta-data/placement/..%2f..%2fuser-data",
    "/latest/meta-data/placement/..%2F..%2Fuser-data",
    "/latest/meta-data/placement/..\\..\\user-data",
    "/latest/meta-data/placement/./../../user-data",
    "/latest/meta-data/placement//../../user-data",
    "/latest/meta-data/placement/;/../../user-data",
    "/latest/meta-data/placement/region/../../../user-data?x",
    "/latest/meta-data/placement/region#/../../../user-data",
    "http://169.254.169.254/latest/meta-data/placement/../../user-data",
]


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("target", TRAVERSALS)
async def test_traversal_is_refused_before_anything_reaches_the_node(server: str, target: str) -> None:
    async with node(server) as n:
        status, body = await raw_get(n.port, target)
        assert status == 400, body
        assert b"is not canonical" in body
        assert_no_node_secret(body)
        assert n.upstream_targets() == []
        assert n.metrics.registry.get_sample_value("podiam_imds_refusals_total",
                                                   {"reason": "non_canonical_target"}) == 1


@pytest.mark.parametrize("server", SERVERS)
async def test_an_allowed_path_reaches_the_node_byte_for_byte_and_is_counted(server: str) -> None:
    async with node(server) as n:
        for target in ("/latest/meta-data/placement/region", "/2009-04-04/meta-data/placement/region",
                       "/latest/meta-data/placement/nothing-here"):
            status, _ = await raw_get(n.port, target)
            assert status == (404 if target.endswith("nothing-here") else 200)
        assert n.upstream_targets() == ["/latest/meta-data/placement/region", "/2009-04-04/meta-data/placement/region",
                                        "/latest/meta-data/placement/nothing-here"]
        sample = n.metrics.registry.get_sample_value
        assert sample("podiam_imds_proxied_total", {"route": "meta-data/placement/region", "status": "200"}) == 2
        assert sample("podiam_imds_proxied_total", {"route": "other", "status": "404"}) == 1


# Pieces an attacker combines: dot segments in every encoding and case, separators,
# look-alikes, and the paths worth reaching.
PIECES = st.sampled_from([
    "latest", "2009-04-04", "meta-data", "placement", "region", "iam", "info", "security-credentials",
    NODE_ROLE_NAME, "user-data", "dynamic", "instance-identity", "document", ".", "..", "...", "%2e", "%2E",
    "%2e%2e", "%2E%2e", ".%2e", "%252e%252e", "%c0%ae", "%2f", "%2F", "%5c", "%5C", "\\", "", ";", ";x", "?",
    "#", "?a=..", "\xa0", "%00", "A", "~", ":", "@",
])
SEPARATORS = st.sampled_from(["/", "//", "\\", "/./", "/../", "%2f", "%2F", "/%2e%2e/"])


@st.composite
def targets(draw: st.DrawFn) -> str:
    prefix = draw(st.sampled_from(["/", "/latest/meta-data/placement/", "//", "http://169.254.169.254/", "",
                                   "/latest/dynamic/instance-identity/document/"]))
    parts = draw(st.lists(st.tuples(PIECES, SEPARATORS), max_size=6))
    return prefix + "".join(piece + sep for piece, sep in parts) + draw(PIECES)


_SEGMENT_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~:@+=,/")
"""The characters docs/endpoint.md promises a canonical target may hold, written out here rather
than taken from podiam's regex, so the oracle does not share podiam's mistakes."""


def _plain(target: str) -> bool:
    """The oracle, independent of podiam: nothing a reader could resolve to another path."""
    return (
        target.startswith("/")
        and unquote(target) == target
        and set(target) <= _SEGMENT_CHARACTERS
        and posixpath.normpath(target) == (target.rstrip("/") or "/")
        and "//" not in target
    )


def _plainly_allowed(target: str) -> bool:
    return _plain(target) and ALLOWED.search(target) is not None


@pytest.mark.parametrize("server", SERVERS)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(targets(), min_size=1, max_size=8))
def test_every_target_is_refused_or_reaches_the_node_exactly_as_an_allowed_canonical_path(
    server: str, batch: list[str]
) -> None:
    async def scenario() -> None:
        async with node(server) as n:
            for target in batch:
                before = len(n.upstream_targets())
                status, body = await raw_get(n.port, target)
                assert_no_node_secret(body)
                reached = n.upstream_targets()[before:]
                if reached:
                    assert reached == [target], (target, reached)
                    assert _plainly_allowed(target), target
                else:
                    # Refused: 404 for a plain path off the allow-list, 400 for anything else.
                    assert status == (404 if _plain(target) else 400), (target, status)
    asyncio.run(scenario())
