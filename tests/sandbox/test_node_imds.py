"""The node IMDS stand-in speaks IMDS's wire protocol: tokens, the SSRF guard, paths, headers."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
from collections.abc import AsyncIterator

import aiohttp
import pytest

from podiam_sandbox.node_imds import (
    NODE_ACCESS_KEY_ID,
    NODE_INSTANCE_ID,
    NODE_INSTANCE_PROFILE_ID,
    NODE_ROLE_NAME,
    NODE_USER_DATA,
    TOKEN_HEADER,
    TOKEN_TTL_HEADER,
    FakeNodeImds,
)

IMDS_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
CREDS = "/latest/meta-data/iam/security-credentials/"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def imds(clock: FakeClock) -> AsyncIterator[FakeNodeImds]:
    async with FakeNodeImds(clock=clock) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


async def get(
    http: aiohttp.ClientSession, imds: FakeNodeImds, path: str, headers: dict[str, str] | None = None
) -> tuple[int, str, aiohttp.ClientResponse]:
    async with http.get(imds.url + path, headers=headers or {}) as resp:
        return resp.status, await resp.text(), resp


async def put_token(
    http: aiohttp.ClientSession, imds: FakeNodeImds, headers: dict[str, str]
) -> tuple[int, str]:
    async with http.put(imds.url + "/latest/api/token", headers=headers) as resp:
        assert resp.headers["Server"] == "EC2ws"
        return resp.status, await resp.text()


async def test_token_then_credentials_as_an_sdk_does(imds: FakeNodeImds, http: aiohttp.ClientSession) -> None:
    async with http.put(imds.url + "/latest/api/token", headers={TOKEN_TTL_HEADER: "21600"}) as resp:
        assert resp.status == 200
        assert resp.headers[TOKEN_TTL_HEADER] == "21600"
        assert resp.content_type == "text/plain"
        token = await resp.text()
    assert len(token) >= 40
    status, body, resp = await get(http, imds, CREDS, {TOKEN_HEADER: token})
    assert (status, body) == (200, NODE_ROLE_NAME)
    assert resp.headers["Server"] == "EC2ws"
    status, body, resp = await get(http, imds, CREDS + NODE_ROLE_NAME, {TOKEN_HEADER: token})
    assert status == 200
    assert resp.content_type == "text/plain"  # real IMDS labels its JSON text/plain too
    creds = json.loads(body)
    assert list(creds) == [
        "Code", "LastUpdated", "Type", "AccessKeyId", "SecretAccessKey", "Token", "Expiration",
    ]  # fmt: skip
    assert creds["Code"] == "Success"
    assert creds["Type"] == "AWS-HMAC"
    assert creds["AccessKeyId"] == NODE_ACCESS_KEY_ID
    assert IMDS_TIME.match(creds["LastUpdated"])
    assert IMDS_TIME.match(creds["Expiration"])
    assert creds["Expiration"] > creds["LastUpdated"]


@pytest.mark.parametrize("ttl", [None, "0", "21601", "-1", "abc", "1.5", ""])
async def test_token_ttl_must_be_1_to_21600(
    imds: FakeNodeImds, http: aiohttp.ClientSession, ttl: str | None
) -> None:
    headers = {} if ttl is None else {TOKEN_TTL_HEADER: ttl}
    status, _ = await put_token(http, imds, headers)
    assert status == 400


@pytest.mark.parametrize("ttl", ["1", "21600"])
async def test_token_ttl_bounds_accepted(imds: FakeNodeImds, http: aiohttp.ClientSession, ttl: str) -> None:
    status, _ = await put_token(http, imds, {TOKEN_TTL_HEADER: ttl})
    assert status == 200


async def test_token_put_through_a_proxy_is_forbidden(
    imds: FakeNodeImds, http: aiohttp.ClientSession
) -> None:
    status, _ = await put_token(http, imds, {TOKEN_TTL_HEADER: "60", "X-Forwarded-For": "10.1.2.3"})
    assert status == 403


async def test_token_path_needs_put(imds: FakeNodeImds, http: aiohttp.ClientSession) -> None:
    status, _, _ = await get(http, imds, "/latest/api/token")
    assert status == 405


async def test_invalid_token_is_401(imds: FakeNodeImds, http: aiohttp.ClientSession) -> None:
    status, _, resp = await get(http, imds, CREDS, {TOKEN_HEADER: "not-a-token"})
    assert status == 401
    assert resp.headers["Server"] == "EC2ws"


async def test_expired_token_is_401(
    imds: FakeNodeImds, http: aiohttp.ClientSession, clock: FakeClock
) -> None:
    _, token = await put_token(http, imds, {TOKEN_TTL_HEADER: "60"})
    clock.now += 59.5
    assert (await get(http, imds, CREDS, {TOKEN_HEADER: token}))[0] == 200
    clock.now += 0.5
    assert (await get(http, imds, CREDS, {TOKEN_HEADER: token}))[0] == 401


async def test_tokenless_allowed_by_default(imds: FakeNodeImds, http: aiohttp.ClientSession) -> None:
    assert (await get(http, imds, CREDS))[:2] == (200, NODE_ROLE_NAME)


async def test_tokenless_refused_when_v2_required(http: aiohttp.ClientSession) -> None:
    async with FakeNodeImds(require_token=True) as imds:
        assert (await get(http, imds, CREDS))[0] == 401
        _, token = await put_token(http, imds, {TOKEN_TTL_HEADER: "60"})
        assert (await get(http, imds, CREDS, {TOKEN_HEADER: token}))[0] == 200


@pytest.mark.parametrize("version", ["latest", "2009-04-04", "2021-07-15"])
async def test_paths(imds: FakeNodeImds, http: aiohttp.ClientSession, version: str) -> None:
    async def body(path: str) -> str:
        status, text, resp = await get(http, imds, f"/{version}/{path}")
        assert status == 200, path
        assert resp.content_type == "text/plain"
        return text

    assert await body("user-data") == NODE_USER_DATA
    assert await body("meta-data/placement/region") == "us-east-1"
    assert await body("meta-data/placement/availability-zone") == "us-east-1a"
    assert await body("meta-data/iam/security-credentials/") == NODE_ROLE_NAME
    info = json.loads(await body("meta-data/iam/info"))
    assert list(info) == ["Code", "LastUpdated", "InstanceProfileArn", "InstanceProfileId"]
    assert info["InstanceProfileArn"] == "arn:aws:iam::123456789012:instance-profile/node-profile"
    assert info["InstanceProfileId"] == NODE_INSTANCE_PROFILE_ID
    assert IMDS_TIME.match(info["LastUpdated"])
    document = json.loads(await body("dynamic/instance-identity/document"))
    assert document["region"] == "us-east-1"
    assert document["accountId"] == "123456789012"
    assert document["instanceId"] == NODE_INSTANCE_ID


async def test_region_account_and_partition_configurable(http: aiohttp.ClientSession) -> None:
    async with FakeNodeImds(region="cn-north-1", account_id="210987654321", partition="aws-cn") as imds:
        assert (await get(http, imds, "/latest/meta-data/placement/region"))[1] == "cn-north-1"
        assert (await get(http, imds, "/latest/meta-data/placement/availability-zone"))[1] == "cn-north-1a"
        info = json.loads((await get(http, imds, "/latest/meta-data/iam/info"))[1])
        assert info["InstanceProfileArn"] == "arn:aws-cn:iam::210987654321:instance-profile/node-profile"
        document = json.loads((await get(http, imds, "/latest/dynamic/instance-identity/document"))[1])
        assert (document["region"], document["accountId"]) == ("cn-north-1", "210987654321")


@pytest.mark.parametrize(
    "path",
    [
        "/latest/meta-data/iam/security-credentials/other-role",
        "/latest/meta-data/nothing",
        "/nonsense/meta-data/placement/region",
        "/latest/meta-data/placement/region/extra",
        "/favicon.ico",
    ],
)
async def test_unknown_paths_are_404(imds: FakeNodeImds, http: aiohttp.ClientSession, path: str) -> None:
    status, _, resp = await get(http, imds, path)
    assert status == 404
    assert resp.headers["Server"] == "EC2ws"


async def test_requests_are_recorded(imds: FakeNodeImds, http: aiohttp.ClientSession) -> None:
    await put_token(http, imds, {TOKEN_TTL_HEADER: "60"})
    await get(http, imds, "/latest/meta-data/placement/region?x=1", {"X-Custom": "yes"})
    assert [(r.method, r.path) for r in imds.requests] == [
        ("PUT", "/latest/api/token"),
        ("GET", "/latest/meta-data/placement/region?x=1"),
    ]
    assert imds.requests[0].headers["x-aws-ec2-metadata-token-ttl-seconds"] == "60"  # case-insensitive
    assert imds.requests[1].headers["X-Custom"] == "yes"
    assert imds.paths() == ["/latest/api/token", "/latest/meta-data/placement/region?x=1"]


async def test_standalone_process_reports_ready_and_stops_on_sigterm(http: aiohttp.ClientSession) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "podiam_sandbox.node_imds", "--host", "127.0.0.1", "--port", "0",
        "--region", "eu-west-1",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(10):
            line = (await proc.stdout.readline()).decode()
        assert line.startswith("ready http://127.0.0.1:")
        url = line.split()[1]
        async with http.get(url + "/latest/meta-data/placement/region") as resp:
            assert resp.status == 200
            assert resp.headers["Server"] == "EC2ws"
            assert await resp.text() == "eu-west-1"
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
