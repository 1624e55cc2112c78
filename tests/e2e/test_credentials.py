"""
Through the real DNAT path, with real SDKs inside pods: each pod gets its own role and only
that; the node's credentials and user-data stay out of reach; IMDSv2 works; IP reuse and
early requests are handled; STS is called once per identity.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from podiam_sandbox.node_imds import NODE_ACCESS_KEY_ID, NODE_INSTANCE_PROFILE_ID, NODE_ROLE_NAME, NODE_USER_DATA
from podiam_sandbox.world import ACCOUNT, BASE_ARN, AgentProcess, World, WorldPod, wait_until
from sdk_probes import PROBES, probe_caller_arn

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

CREDS = "/latest/meta-data/iam/security-credentials/"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def agent(world: World) -> AsyncIterator[AgentProcess]:
    agent = await world.start_agent()
    yield agent
    assert await agent.stop() == 0


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pods(world: World, agent: AgentProcess) -> dict[str, WorldPod]:
    return {
        "a": await world.add_pod("reader-app", "team-a", role="role-a"),
        "b": await world.add_pod("writer-app", "team-b", role="role-b"),
        "plain": await world.add_pod("no-annotation", "team-a"),
    }


def assumed(role: str, pod: WorldPod) -> str:
    return f"arn:aws:sts::{ACCOUNT}:assumed-role/{role}/{pod.namespace}.{pod.name}"


async def request_counts(agent: AgentProcess) -> dict[str, float]:
    """Metadata requests answered so far, by route and status (the agent's own histogram)."""
    prefix = "podiam_imds_request_duration_seconds_count{"
    return {line[len(prefix):].rsplit("} ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in (await agent.metrics()).splitlines() if line.startswith(prefix)}


async def test_boto3_in_each_pod_is_its_own_role(pods: dict[str, WorldPod]) -> None:
    arn_a, arn_b = await asyncio.gather(pods["a"].boto3_caller_arn(), pods["b"].boto3_caller_arn())
    assert arn_a == assumed("role-a", pods["a"])
    assert arn_b == assumed("role-b", pods["b"])


async def test_aws_cli_in_each_pod_is_its_own_role(pods: dict[str, WorldPod]) -> None:
    assert await pods["a"].cli_caller_arn() == assumed("role-a", pods["a"])
    assert await pods["b"].cli_caller_arn() == assumed("role-b", pods["b"])


@pytest.mark.parametrize("sdk", PROBES)
async def test_sdk_program_in_each_pod_is_its_own_role(
    pods: dict[str, WorldPod], agent: AgentProcess, sdk: str
) -> None:
    for pod, role in ((pods["a"], "role-a"), (pods["b"], "role-b")):
        before = await request_counts(agent)
        assert await probe_caller_arn(pod, sdk) == assumed(role, pod)
        after = await request_counts(agent)
        # As from real IMDS: one IMDSv2 token, the role list, the document; no retry, no
        # fallback to IMDSv1, nothing refused.
        assert {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)} == {
            'route="token",status="200"': 1, 'route="role_list",status="200"': 1,
            'route="credentials",status="200"': 1,
        }


async def test_the_credentials_document_has_imds_format_and_long_validity(pods: dict[str, WorldPod]) -> None:
    listing = await pods["a"].http("GET", CREDS)
    assert (listing.status, listing.body) == (200, b"role-a")
    assert listing.headers["server"] == "EC2ws"
    resp = await pods["a"].http("GET", CREDS + "role-a")
    assert resp.status == 200
    doc = resp.json()
    assert set(doc) == {"Code", "LastUpdated", "Type", "AccessKeyId", "SecretAccessKey", "Token", "Expiration"}
    assert (doc["Code"], doc["Type"]) == ("Success", "AWS-HMAC")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", doc["Expiration"])
    # Served with more than 25 minutes left, so no SDK refreshes on every call.
    expiration = dt.datetime.strptime(doc["Expiration"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    assert expiration - dt.datetime.now(dt.UTC) > dt.timedelta(minutes=25)


async def test_asking_for_another_roles_path_is_403(pods: dict[str, WorldPod]) -> None:
    resp = await pods["a"].http("GET", CREDS + "role-b")
    assert resp.status == 403
    assert b"role-b" in resp.body
    assert b"role-a" in resp.body


async def test_an_unannotated_pod_without_default_role_is_404(pods: dict[str, WorldPod]) -> None:
    resp = await pods["plain"].http("GET", CREDS)
    assert resp.status == 404
    assert b"no iam.amazonaws.com/role annotation" in resp.body


async def test_imdsv2_token_flow(pods: dict[str, WorldPod]) -> None:
    a, b = pods["a"], pods["b"]
    token = await a.http("PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "21600"})
    assert token.status == 200
    assert token.headers["x-aws-ec2-metadata-token-ttl-seconds"] == "21600"
    good = {"X-aws-ec2-metadata-token": token.body.decode()}
    assert (await a.http("GET", CREDS + "role-a", good)).status == 200
    # Bound to the pod that asked: another pod presenting it is refused.
    assert (await b.http("GET", CREDS + "role-b", good)).status == 401
    assert (await a.http("GET", CREDS + "role-a", {"X-aws-ec2-metadata-token": "forged"})).status == 401
    for ttl in ("0", "21601", "soon"):
        bad = await a.http("PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": ttl})
        assert bad.status == 400, ttl
    assert (await a.http("PUT", "/latest/api/token")).status == 400
    proxied = await a.http("PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "60",
                                                         "X-Forwarded-For": "10.1.2.3"})
    assert proxied.status == 403


async def test_the_node_is_out_of_reach(pods: dict[str, WorldPod]) -> None:
    a = pods["a"]
    refused = {
        "/latest/user-data": 404,  # off the allow-list
        "/latest/meta-data/": 404,
        "/latest/meta-data/instance-id": 404,
        "/latest/meta-data/iam/security-credentials/" + NODE_ROLE_NAME: 403,  # not the pod's role
        "/2009-04-04/user-data": 404,
    }
    for path, status in refused.items():
        resp = await a.http("GET", path)
        assert resp.status == status, path
        assert NODE_ACCESS_KEY_ID.encode() not in resp.body
        assert NODE_USER_DATA.encode() not in resp.body
    info = await a.http("GET", "/latest/meta-data/iam/info")
    assert info.status == 200
    assert info.json()["InstanceProfileArn"] == f"arn:aws:iam::{ACCOUNT}:instance-profile/role-a"


@pytest.mark.parametrize("target", [
    "/latest/meta-data/placement/../iam/security-credentials/" + NODE_ROLE_NAME,
    "/latest/meta-data/placement/../../user-data",
    "/latest/meta-data/placement/%2e%2e/%2E%2e/user-data",
    "/latest/meta-data/placement/..%2f..%2fuser-data",
    "/latest/meta-data/placement//..//..//user-data",
    "/latest/meta-data/placement/region/../../iam/info",
])
async def test_path_traversal_through_the_proxy_is_refused(pods: dict[str, WorldPod], target: str) -> None:
    # The 0.1.0 advisory: these reached the node's credentials and user-data.
    resp = await pods["a"].http("GET", target)
    assert resp.status == 400
    assert b"is not canonical" in resp.body
    for secret in (NODE_ACCESS_KEY_ID, NODE_USER_DATA, NODE_INSTANCE_PROFILE_ID):
        assert secret.encode() not in resp.body


async def test_region_discovery_paths_reach_the_real_imds(pods: dict[str, WorldPod]) -> None:
    resp = await pods["a"].http("GET", "/latest/meta-data/placement/region")
    assert (resp.status, resp.body) == (200, b"us-east-1")


async def test_sts_is_called_once_per_identity_and_never_on_a_prefetched_pods_request(
    world: World, agent: AgentProcess
) -> None:
    pod = await world.add_pod("batch", "team-a", role="role-a")
    session = f"{pod.namespace}.{pod.name}"

    async def prefetched() -> bool:
        return len(await world.sts.assume_role_calls(session_name=session)) == 1

    await wait_until(prefetched, what="the prefetch AssumeRole call")
    # 20 requests, 10 of them concurrent: all from the cache.
    for _ in range(10):
        assert (await pod.http("GET", CREDS + "role-a")).status == 200
    results = await asyncio.gather(*(pod.http("GET", CREDS + "role-a") for _ in range(10)))
    assert {r.status for r in results} == {200}
    assert {r.json()["AccessKeyId"] for r in results} == {results[0].json()["AccessKeyId"]}
    calls = await world.sts.assume_role_calls(session_name=session)
    assert [(c.role_arn, c.session_name) for c in calls] == [(BASE_ARN + "role-a", session)]


async def test_a_pod_reusing_a_deleted_pods_ip_gets_its_own_role(world: World, agent: AgentProcess) -> None:
    old = await world.add_pod("old", "team-a", role="role-a")
    assert await old.boto3_caller_arn() == assumed("role-a", old)
    ip = old.ip
    await world.delete_pod(old)
    new = await world.add_pod("new", "team-b", role="role-b", ip=ip)
    assert new.ip == ip
    assert await new.boto3_caller_arn() == assumed("role-b", new)
    listing = await new.http("GET", CREDS)
    assert listing.body == b"role-b"


async def test_metrics_on_their_own_port_count_what_happened(pods: dict[str, WorldPod], agent: AgentProcess) -> None:
    assert (await pods["a"].http("GET", CREDS + "role-a")).status == 200
    text = await agent.metrics()
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
               for line in text.splitlines() if line and not line.startswith("#")}
    assert samples["podiam_pod_index_synced"] == 1
    assert samples["podiam_pods_indexed"] >= 3
    assert samples["podiam_credential_cache_hits_total"] >= 1
    assert samples[f'podiam_sts_assume_role_calls_total{{role="{BASE_ARN}role-a"}}'] >= 1
    assert samples['podiam_imds_request_duration_seconds_count{route="credentials",status="200"}'] >= 1
    assert samples['podiam_imds_refusals_total{reason="role_mismatch"}'] >= 1
    # Never on the port pods are sent to.
    assert (await pods["a"].http("GET", "/metrics")).status == 404
