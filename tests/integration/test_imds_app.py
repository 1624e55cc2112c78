"""
The metadata endpoint over real HTTP, with the real pod index and token issuer, an
in-memory credential source (a fake of podiam's own CredentialSource interface), and the
stand-in for the node's IMDS as the upstream of allow-listed paths. Every test runs
against both servers, the fast path and aiohttp: they must behave the same.

The caller's IP is the loopback address, so pods here live at 127.0.0.1.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestServer

from pod_doubles import CredentialDouble, LoopbackPods
from podiam.credentials import Credentials, Identity
from podiam.errors import StsCallFailed, StsUnavailable
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
from podiam.settings import ImdsSettings, RoleSettings
from podiam_sandbox.node_imds import NODE_ACCESS_KEY_ID, NODE_USER_DATA, FakeNodeImds

BASE = "arn:aws:iam::123456789012:role/"
CREDS = "/latest/meta-data/iam/security-credentials/"
IP = "127.0.0.1"


class FakeCredentials(CredentialDouble):
    """podiam's CredentialSource interface, in memory: counts calls, fails on demand."""

    def __init__(self) -> None:
        self.calls: list[Identity] = []
        self.error: Exception | None = None

    def fresh(self, identity: Identity) -> Credentials | None:
        return None  # always the waiting path here; the cache's own hit path has its own tests

    async def get(self, identity: Identity) -> Credentials:
        self.calls.append(identity)
        if self.error is not None:
            raise self.error
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        return Credentials(f"ASIA{identity.role_name.upper()[:12]}", "secret-" + identity.role_name,
                           "token-" + identity.role_name, now + dt.timedelta(hours=1), now)


def pod(name: str = "web", role: str | None = "reader", ip: str = IP, **extra: object) -> PodInfo:
    base = PodInfo(namespace="shop", name=name, uid=f"uid-{name}", ip=ip, phase="Running",
                   annotations={"iam.amazonaws.com/role": role} if role else {})
    return dataclasses.replace(base, **extra)  # type: ignore[arg-type]


@dataclasses.dataclass
class Endpoint:
    client: Client
    index: PodIndex
    creds: FakeCredentials
    metrics: Metrics


class Client:
    """The few client calls the tests make, against either server."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self._session, self._base = session, base

    def get(self, path: str, **kwargs: Any) -> Any:
        return self._session.get(self._base + path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> Any:
        return self._session.put(self._base + path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self._session.post(self._base + path, **kwargs)


@pytest_asyncio.fixture
async def node_imds() -> AsyncIterator[FakeNodeImds]:
    async with FakeNodeImds() as imds:
        yield imds


async def endpoint(node_imds: FakeNodeImds, server: str, **settings: object) -> AsyncIterator[Endpoint]:
    # Loopback stands in for a pod's address here; in the agent it is the node's own.
    index = PodIndex(RolePolicy.from_settings(RoleSettings(), BASE).identity)
    index.replace([])
    creds, metrics = FakeCredentials(), Metrics()
    async with NodeMetadataClient(f"{node_imds.host}:{node_imds.port}", 1.0) as upstream:
        deps = ImdsDeps(pods=LoopbackPods(index), credentials=creds,
                        tokens=TokenIssuer(), issuance=IssuanceLog("n1"),
                        metrics=metrics, settings=ImdsSettings(pod_wait=0.05, **settings),  # type: ignore[arg-type]
                        upstream=upstream, ready=index.synced.is_set, limiter=RateLimiter(0))
        async with aiohttp.ClientSession() as session:
            if server == "fast":
                async with FastServer(MetadataCore(deps), IP, 0, 1.0) as fast:
                    yield Endpoint(Client(session, f"http://{IP}:{fast.port}"), index, creds, metrics)
            else:
                async with TestServer(make_app(deps), host=IP) as test_server:
                    yield Endpoint(Client(session, str(test_server.make_url(""))), index, creds, metrics)


SERVERS = ["fast", "aiohttp"]


@pytest_asyncio.fixture(params=SERVERS)
async def ep(node_imds: FakeNodeImds, request: pytest.FixtureRequest) -> AsyncIterator[Endpoint]:
    async for e in endpoint(node_imds, request.param):
        yield e


@pytest_asyncio.fixture(params=SERVERS)
async def ep_v2(node_imds: FakeNodeImds, request: pytest.FixtureRequest) -> AsyncIterator[Endpoint]:
    async for e in endpoint(node_imds, request.param, require_imdsv2=True):
        yield e


async def get(ep: Endpoint, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    async with ep.client.get(path, headers=headers) as resp:
        return resp.status, await resp.text()


async def test_role_listing_and_credentials(ep: Endpoint) -> None:
    ep.index.upsert(pod())
    assert await get(ep, CREDS) == (200, "reader")
    assert await get(ep, "/latest/meta-data/iam/security-credentials") == (200, "reader")
    async with ep.client.get(CREDS + "reader") as resp:
        assert resp.status == 200
        assert resp.headers["Server"] == "EC2ws"
        doc = await resp.json(content_type=None)
    assert doc["AccessKeyId"] == "ASIAREADER"
    assert ep.creds.calls == [Identity(BASE + "reader", "shop.web")]


async def test_dated_versions_are_served_like_latest(ep: Endpoint) -> None:
    ep.index.upsert(pod())
    assert await get(ep, "/2009-04-04/meta-data/iam/security-credentials/") == (200, "reader")


async def test_another_roles_path_is_403_and_sts_is_not_called(ep: Endpoint) -> None:
    ep.index.upsert(pod())
    status, body = await get(ep, CREDS + "admin")
    assert status == 403
    assert "'admin'" in body and "'reader'" in body
    assert ep.creds.calls == []


async def test_unknown_ip_is_404_naming_it(ep: Endpoint) -> None:
    status, body = await get(ep, CREDS)
    assert status == 404
    assert "127.0.0.1" in body


async def test_two_pods_on_one_ip_is_409_naming_both(ep: Endpoint) -> None:
    ep.index.upsert(pod("a"))
    ep.index.upsert(pod("b"))
    status, body = await get(ep, CREDS)
    assert status == 409
    assert "shop/a" in body and "shop/b" in body


async def test_malformed_annotation_is_403_saying_what_is_wrong(ep: Endpoint) -> None:
    ep.index.upsert(pod(role="no spaces allowed"))
    status, body = await get(ep, CREDS)
    assert status == 403
    assert "'no spaces allowed' is not a valid IAM role name" in body
    assert ep.metrics.registry.get_sample_value("podiam_imds_refusals_total", {"reason": "invalid_role"}) == 1


async def test_no_annotation_is_404(ep: Endpoint) -> None:
    ep.index.upsert(pod(role=None))
    status, body = await get(ep, CREDS)
    assert status == 404
    assert "no iam.amazonaws.com/role annotation" in body


@pytest.mark.parametrize(("error", "status"), [
    (StsCallFailed("AccessDenied for role reader", code="AccessDenied"), 502),
    (StsUnavailable("STS did not answer within 5s"), 504),
])
async def test_sts_failures_map_to_gateway_errors(ep: Endpoint, error: Exception, status: int) -> None:
    ep.index.upsert(pod())
    ep.creds.error = error
    got, body = await get(ep, CREDS + "reader")
    assert got == status
    assert str(error) in body


async def test_iam_info_is_the_pods_never_the_nodes(ep: Endpoint, node_imds: FakeNodeImds) -> None:
    ep.index.upsert(pod())
    status, body = await get(ep, "/latest/meta-data/iam/info")
    assert status == 200
    assert '"InstanceProfileArn": "arn:aws:iam::123456789012:instance-profile/reader"' in body
    assert node_imds.requests == []


async def test_only_allow_listed_paths_reach_the_node(ep: Endpoint, node_imds: FakeNodeImds) -> None:
    ep.index.upsert(pod())
    assert await get(ep, "/latest/meta-data/placement/region") == (200, "us-east-1")
    for path in ("/latest/user-data", "/latest/meta-data/instance-id", "/latest/meta-data/",
                 "/latest/dynamic/instance-identity/signature"):
        status, body = await get(ep, path)
        assert status == 404, path
        assert NODE_USER_DATA not in body and NODE_ACCESS_KEY_ID not in body
    assert [r.path for r in node_imds.requests if r.method == "GET"] == ["/latest/meta-data/placement/region"]


async def test_callers_that_are_not_pods_of_this_node_reach_nothing(ep: Endpoint, node_imds: FakeNodeImds) -> None:
    status, body = await get(ep, "/latest/meta-data/placement/region")
    assert status == 404
    assert "no pod with IP 127.0.0.1" in body
    assert node_imds.requests == []


async def test_the_proxy_never_forwards_a_pods_headers(ep: Endpoint, node_imds: FakeNodeImds) -> None:
    ep.index.upsert(pod())
    await get(ep, "/latest/meta-data/placement/region", {"X-Forwarded-For": "1.2.3.4", "X-Evil": "1"})
    forwarded = next(r for r in node_imds.requests if r.method == "GET")
    assert "X-Evil" not in forwarded.headers and "X-Forwarded-For" not in forwarded.headers


async def test_token_rules(ep: Endpoint) -> None:
    ep.index.upsert(pod())
    async with ep.client.put("/latest/api/token", headers={"X-aws-ec2-metadata-token-ttl-seconds": "30"}) as r:
        assert r.status == 200
        assert r.headers["X-aws-ec2-metadata-token-ttl-seconds"] == "30"
        token = await r.text()
    assert (await get(ep, CREDS, {"X-aws-ec2-metadata-token": token}))[0] == 200
    assert (await get(ep, CREDS, {"X-aws-ec2-metadata-token": token + "x"}))[0] == 401
    async with ep.client.put("/latest/api/token") as r:
        assert r.status == 400
    async with ep.client.put("/latest/api/token", headers={"X-aws-ec2-metadata-token-ttl-seconds": "9",
                                                           "X-Forwarded-For": "10.0.0.1"}) as r:
        assert r.status == 403
    assert (await get(ep, "/latest/api/token"))[0] == 405
    async with ep.client.post(CREDS) as r:
        assert r.status == 405


async def test_required_v2_refuses_tokenless_requests(ep_v2: Endpoint) -> None:
    ep_v2.index.upsert(pod())
    status, body = await get(ep_v2, CREDS)
    assert status == 401
    assert "IMDSv2 is required" in body
    async with ep_v2.client.put("/latest/api/token", headers={"X-aws-ec2-metadata-token-ttl-seconds": "5"}) as r:
        token = await r.text()
    assert await get(ep_v2, CREDS, {"X-aws-ec2-metadata-token": token}) == (200, "reader")


async def test_health_and_readiness(ep: Endpoint) -> None:
    assert await get(ep, "/healthz") == (200, "ok\n")
    assert await get(ep, "/readyz") == (200, "ready\n")


async def test_hostile_requests_get_clear_errors_and_the_server_keeps_serving(
    ep: Endpoint, request: pytest.FixtureRequest
) -> None:
    ep.index.upsert(pod())
    expected = {
        # aiohttp's client resolves the dots: the server sees /latest/meta-data/user-data.
        "/latest/meta-data/iam/security-credentials/../../user-data": 404,
        "/%00": 400,  # not a canonical target
        "/" + "a" * 4000: 404,  # long, but within the URL bound: an unknown path
        "/latest/meta-data/iam/security-credentials/reader%2F..%2F": 400,  # an encoded slash
    }
    for path, status in expected.items():
        assert (await get(ep, path))[0] == status, path
    # A GET with a body: the fast server bounds what it reads (413); aiohttp never reads a
    # body the handler does not ask for and answers the request (200). Neither holds it.
    body_status = {"fast": 413, "aiohttp": 200}[request.node.callspec.params["ep"]]
    async with ep.client.get(CREDS, data=b"x" * 100_000) as r:
        assert r.status == body_status
    assert await get(ep, CREDS) == (200, "reader")
