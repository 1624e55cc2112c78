"""
Through the real DNAT path, with real SDKs inside pods: each pod gets its own role and only
that; the node's credentials and user-data stay out of reach; IMDSv2 works; IP reuse and
early requests are handled; STS is called once per identity.

Every test runs in both modes (conftest.py): agent mode, and split mode, where a
``podiam server`` holds the API and STS access and the agent, holding neither, streams from it.
The split-mode-only tests at the end check that last part on the running processes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from podiam_sandbox.node_imds import NODE_ACCESS_KEY_ID, NODE_INSTANCE_PROFILE_ID, NODE_ROLE_NAME, NODE_USER_DATA
from podiam_sandbox.world import (
    ACCOUNT,
    BASE_ARN,
    AgentProcess,
    PodiamProcess,
    World,
    WorldPod,
    established_from,
    wait_until,
)
from sdk_probes import PROBES, probe_caller_arn

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module"), pytest.mark.modes("agent", "split")]
SPLIT_ONLY = pytest.mark.modes("split", why="the split agent's and server's separation is split mode's own subject")

CREDS = "/latest/meta-data/iam/security-credentials/"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def agent(world: World) -> AsyncIterator[AgentProcess]:
    # -X importtime: the split agent logs every module it loads, for the botocore check below.
    agent = await world.start_agent("--pod-wait", "5s",
                                    interpreter_flags=("-X", "importtime") if world.mode == "split" else ())
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


async def samples(process: PodiamProcess) -> dict[str, float]:
    """Every sample on the process's /metrics, by name and labels."""
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in (await process.metrics()).splitlines() if line and not line.startswith("#")}


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


async def test_a_request_before_the_pods_watch_event_is_answered_within_the_wait(
    world: World, agent: AgentProcess
) -> None:
    port = int(agent.option("--app-port"))
    pod = await world.add_pod("early-bird", "team-c", register=False)
    request = asyncio.create_task(pod.http("GET", CREDS))
    await wait_until(lambda: established_from(pod.ip, port), what="the pod's request to reach the agent")
    assert not request.done()
    await world.register(pod, role="role-early")
    async with asyncio.timeout(10):  # within the agent's --pod-wait of 5s
        resp = await request
    assert (resp.status, resp.body) == (200, b"role-early")


async def test_metrics_on_their_own_port_count_what_happened(pods: dict[str, WorldPod], agent: AgentProcess) -> None:
    assert (await pods["a"].http("GET", CREDS + "role-a")).status == 200
    served = await samples(agent)
    assert served['podiam_imds_request_duration_seconds_count{route="credentials",status="200"}'] >= 1
    assert served['podiam_imds_refusals_total{reason="role_mismatch"}'] >= 1
    # The pod watch and STS: the agent's own in agent mode, the server's in split mode.
    decided = await samples(agent.policy_process)
    assert decided["podiam_pod_index_synced"] == 1
    assert decided["podiam_pods_indexed"] >= 3
    assert decided[f'podiam_sts_assume_role_calls_total{{role="{BASE_ARN}role-a"}}'] >= 1
    # Never on the port pods are sent to.
    assert (await pods["a"].http("GET", "/metrics")).status == 404


@pytest.mark.modes("agent", why="a split agent has no credential cache: it serves from the server's stream")
async def test_requests_are_answered_from_the_credential_cache(pods: dict[str, WorldPod], agent: AgentProcess) -> None:
    before = (await samples(agent))["podiam_credential_cache_hits_total"]
    assert (await pods["a"].http("GET", CREDS + "role-a")).status == 200
    assert (await samples(agent))["podiam_credential_cache_hits_total"] == before + 1


def environ(pid: int) -> dict[str, str]:
    """A running process's environment, as the kernel holds it."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(entry.split("=", 1) for entry in raw.decode(errors="replace").split("\0") if "=" in entry)


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


@SPLIT_ONLY
async def test_the_split_agent_holds_no_aws_or_kubernetes_access(agent: AgentProcess) -> None:
    assert agent.server is not None
    agent_env, server_env = environ(agent.pid), environ(agent.server.pid)
    assert sorted(k for k in agent_env if k.startswith("AWS_") or k == "KUBECONFIG") == []
    assert not set(cmdline(agent.pid)) & {"--kubeconfig", "--base-role-arn"}
    # The same readings see the server's access: the check can fail.
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_STS"} <= set(server_env)
    assert "--kubeconfig" in cmdline(agent.server.pid)


@SPLIT_ONLY
async def test_only_the_server_calls_sts_once_per_identity(world: World, pods: dict[str, WorldPod],
                                                           agent: AgentProcess) -> None:
    assert agent.server is not None
    assert await pods["a"].boto3_caller_arn() == assumed("role-a", pods["a"])
    calls = await world.sts.assume_role_calls()
    identities = [(c.role_arn, c.session_name) for c in calls]
    assert (BASE_ARN + "role-a", "team-a.reader-app") in identities
    assert len(identities) == len(set(identities))  # prefetched once per identity, never per request
    # Every AssumeRole moto answered was the server's: its count is moto's, the agent's is none.
    server_calls = {k: v for k, v in (await samples(agent.server)).items()
                    if k.startswith("podiam_sts_assume_role_calls_total")}
    assert sum(server_calls.values()) == len(calls)
    assert not [k for k in await samples(agent) if k.startswith("podiam_sts_")]


@SPLIT_ONLY
async def test_each_process_exports_the_series_of_what_it_runs(pods: dict[str, WorldPod],
                                                              agent: AgentProcess) -> None:
    """A split agent has no credential cache, STS client or watch; a server has no metadata
    endpoint or rule. A series stuck at 0 there would read as 'no cache hits' or 'no STS
    errors' on a dashboard: each process leaves out what it does not run."""
    assert agent.server is not None
    assert (await pods["a"].http("GET", CREDS + "role-a")).status == 200

    def families(found: dict[str, float]) -> set[str]:
        return {"_".join(k.split("{")[0].split("_")[:2]) for k in found}

    agent_families, server_families = families(await samples(agent)), families(await samples(agent.server))
    assert {"podiam_imds", "podiam_remote"} <= agent_families
    assert agent_families & {"podiam_credential", "podiam_sts", "podiam_pods", "podiam_pod", "podiam_watch",
                             "podiam_kube", "podiam_namespace"} == set()
    assert {"podiam_credential", "podiam_sts", "podiam_watch", "podiam_server"} <= server_families
    assert server_families & {"podiam_imds", "podiam_iptables", "podiam_remote"} == set()


@SPLIT_ONLY
async def test_the_request_path_makes_no_rpc(pods: dict[str, WorldPod], agent: AgentProcess) -> None:
    before = await samples(agent)
    results = await asyncio.gather(*(pods["b"].http("GET", CREDS + "role-b") for _ in range(10)))
    assert {r.status for r in results} == {200}
    after = await samples(agent)
    served = 'podiam_imds_request_duration_seconds_count{route="credentials",status="200"}'
    assert after[served] - before[served] == 10
    assert after["podiam_remote_rpcs_total"] == before["podiam_remote_rpcs_total"] == 1  # the one WatchNode
    assert after["podiam_remote_connected"] == 1


@SPLIT_ONLY
async def test_the_split_agent_never_imports_botocore_or_the_kubernetes_client(
    pods: dict[str, WorldPod], agent: AgentProcess
) -> None:
    assert await pods["b"].boto3_caller_arn() == assumed("role-b", pods["b"])  # the request path has run
    # Python's -X importtime: one line per module the agent process imported, from its start until now.
    imported = {line.split("|")[-1].strip() for line in agent.logs().splitlines() if line.startswith("import time:")}
    assert {"grpc", "podiam.remote.mirror", "podiam.imds.fast_server"} <= imported  # the record is there
    roots = {name.split(".")[0] for name in imported}
    assert roots & {"botocore", "aiobotocore", "boto3", "lightkube", "httpx2"} == set()
