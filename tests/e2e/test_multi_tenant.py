"""
Multi-tenant policy through the real DNAT path: namespace restrictions in both anchors'
formats, run-time namespace changes, malformed annotations, the node's own network,
Warning events on refused pods, the per-pod rate limit, kiam's session-name annotation and
the audit trail; and `podiam explain` on each case, in text and JSON. Each test runs its
own agent, in both modes (conftest.py): in split mode the policy and STS flags go to the
agent's own `podiam server`, which also calls STS and writes the events.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from podiam_sandbox.world import ACCOUNT, BASE_ARN, AgentProcess, World, WorldPod, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module"), pytest.mark.modes("agent", "split")]
EXPLAIN_ONLY = pytest.mark.modes("agent", why="podiam explain reads the API itself: no agent, so no mode")

CREDS = "/latest/meta-data/iam/security-credentials/"
RESTRICTED = ("--namespace-restrictions",)
Start = Callable[..., Awaitable[AgentProcess]]


@pytest_asyncio.fixture(loop_scope="module")
async def start(world: World) -> AsyncIterator[Start]:
    started: list[AgentProcess] = []

    async def go(*flags: str) -> AgentProcess:
        started.append(await world.start_agent(*flags))
        return started[-1]

    yield go
    for agent in started:
        assert await agent.stop() == 0, agent.logs()[-2000:]


async def status(pod: WorldPod, path: str = CREDS) -> int:
    return (await pod.http("GET", path)).status


async def explain(world: World, *args: str) -> tuple[int, str, dict[str, Any]]:
    """`podiam explain` in text and in JSON; the two must agree on the answer."""
    (code, text), (json_code, out) = await asyncio.gather(world.explain(*args),
                                                          world.explain("--output", "json", *args))
    doc = json.loads(out)
    assert code == json_code, (text, doc)
    assert f"answer      {doc['status']}: " in text, (text, doc)
    assert doc["gets_credentials"] is (code == 0)
    return code, text, doc


async def has_event(world: World, pod: WorldPod, reason: str) -> bool:
    return any(e.reason == reason and e.type == "Warning" for e in await world.pod_events(pod))


async def test_kube2iam_globs_permit_and_refuse_with_an_event(world: World, start: Start) -> None:
    await world.set_namespace("glob-ns", {"iam.amazonaws.com/allowed-roles": '["app-*"]'})
    await start(*RESTRICTED)
    good = await world.add_pod("good", "glob-ns", role="app-1")
    bad = await world.add_pod("bad", "glob-ns", role="admin")
    assert await good.boto3_caller_arn() == f"arn:aws:sts::{ACCOUNT}:assumed-role/app-1/glob-ns.good"
    resp = await bad.http("GET", CREDS)
    assert resp.status == 403
    assert b"namespace glob-ns does not permit role" in resp.body
    await wait_until(lambda: has_event(world, bad, "IAMRoleForbidden"), what="the IAMRoleForbidden event")
    [event] = [e for e in await world.pod_events(bad) if e.reason == "IAMRoleForbidden"]
    assert event.involvedObject.kind == "Pod"
    assert "admin" in (event.message or "")
    assert not await world.pod_events(good)

    code, text, _ = await explain(world, *RESTRICTED, "-n", "glob-ns", "good")
    assert code == 0, text
    assert "ok    policy: namespace glob-ns allows 'app-*'" in text
    assert "answer      200: credentials for" in text
    code, _, doc = await explain(world, *RESTRICTED, "-n", "glob-ns", "bad")
    assert code == 1
    assert doc["status"] == 403
    assert doc["gets_credentials"] is False
    assert doc["role_arn"] == BASE_ARN + "admin"
    checks = doc["checks"]
    assert isinstance(checks, list)
    assert checks[-1]["ok"] is False
    assert "does not permit" in checks[-1]["detail"]


async def test_kube2iam_regexp_format(world: World, start: Start) -> None:
    await world.set_namespace("regexp-ns", {"iam.amazonaws.com/allowed-roles": '["svc-(a|b)$"]'})
    await start(*RESTRICTED, "--namespace-restriction-format", "regexp")
    a = await world.add_pod("a", "regexp-ns", role="svc-a")
    c = await world.add_pod("c", "regexp-ns", role="svc-c")
    assert await status(a) == 200
    assert await status(c) == 403
    flags = (*RESTRICTED, "--namespace-restriction-format", "regexp", "-n", "regexp-ns")
    assert (await explain(world, *flags, "a"))[0] == 0
    code, _, doc = await explain(world, *flags, "c")
    assert (code, doc["status"]) == (1, 403)


async def test_kiam_permitted_regexp(world: World, start: Start) -> None:
    await world.set_namespace("kiam-ns", {"iam.amazonaws.com/permitted": ".*:role/kiam-.*"})
    await start(*RESTRICTED)
    ok = await world.add_pod("ok", "kiam-ns", role="kiam-reader")
    no = await world.add_pod("no", "kiam-ns", role="reader")
    assert await ok.cli_caller_arn() == f"arn:aws:sts::{ACCOUNT}:assumed-role/kiam-reader/kiam-ns.ok"
    assert await status(no) == 403
    code, text, _ = await explain(world, *RESTRICTED, "--ip", ok.ip)
    assert code == 0
    assert "permits /.*:role/kiam-.*/" in text


async def test_namespace_changes_take_effect_without_restart(world: World, start: Start) -> None:
    await world.set_namespace("live-ns", {})
    await start(*RESTRICTED)
    pod = await world.add_pod("app", "live-ns", role="live-role")
    assert await status(pod) == 403

    async def served() -> bool:
        return await status(pod, CREDS + "live-role") == 200

    async def refused() -> bool:
        return await status(pod, CREDS + "live-role") == 403

    await world.set_namespace("live-ns", {"iam.amazonaws.com/allowed-roles": '["live-*"]'})
    await wait_until(served, what="the new annotation to permit the role")
    # Taking the permission away stops serving the credentials already cached.
    await world.set_namespace("live-ns", {"iam.amazonaws.com/allowed-roles": None})
    await wait_until(refused, what="the removed annotation to refuse the role")


async def test_a_malformed_namespace_annotation_permits_nothing_and_says_so(world: World, start: Start) -> None:
    await world.set_namespace("broken-ns", {"iam.amazonaws.com/allowed-roles": "[not json",
                                            "iam.amazonaws.com/permitted": ".*"})
    agent = await start(*RESTRICTED)
    pod = await world.add_pod("app", "broken-ns", role="anything")
    resp = await pod.http("GET", CREDS)
    assert resp.status == 403
    assert b"permits no role" in resp.body
    assert b"malformed" in resp.body
    await wait_until(lambda: has_event(world, pod, "IAMRoleForbidden"), what="the event on the pod")
    assert "podiam_namespace_annotation_errors 1.0" in await agent.policy_process.metrics()
    code, text, _ = await explain(world, *RESTRICTED, "-n", "broken-ns", "app")
    assert code == 1
    assert "FAIL  policy:" in text
    assert "malformed" in text


async def test_the_nodes_own_network_is_refused_or_gets_the_host_network_role(world: World, start: Start) -> None:
    agent = await start()
    port = agent.argv[agent.argv.index("--app-port") + 1]
    url = f"http://{world.net.gateway_ip}:{port}{CREDS}"
    async with aiohttp.ClientSession() as session, session.get(url) as resp:  # from the node itself
        assert resp.status == 403
        assert "hostNetwork" in await resp.text()
    await agent.stop()
    agent = await start("--host-network-role", "node-tools")
    port = agent.argv[agent.argv.index("--app-port") + 1]
    url = f"http://{world.net.gateway_ip}:{port}{CREDS}"
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as resp:
            assert (resp.status, await resp.text()) == (200, "node-tools")
        async with session.get(url + "node-tools") as resp:
            assert json.loads(await resp.text())["Code"] == "Success"
    # A hostNetwork pod object is never served through its (the node's) IP.
    host_pod = await world.add_pod("daemon", "kube-system", role="whatever", host_network=True)
    code, text, _ = await explain(world, "-n", "kube-system", host_pod.name)
    assert code == 1
    assert "hostNetwork" in text


async def test_a_pod_beyond_its_rate_limit_gets_429(world: World, start: Start) -> None:
    agent = await start("--pod-rate-limit", "2")
    pod = await world.add_pod("chatty", "team-r", role="chatty")
    script = (
        "import http.client, json\n"
        "out = []\n"
        "for _ in range(15):\n"
        "    c = http.client.HTTPConnection('169.254.169.254', 80, timeout=5)\n"
        "    c.request('GET', '/latest/meta-data/iam/security-credentials/')\n"
        "    r = c.getresponse(); r.read()\n"
        "    out.append([r.status, r.getheader('Retry-After')])\n"
        "print(json.dumps(out))\n"
    )
    result = await pod.run([sys.executable, "-c", script])
    assert result.returncode == 0, result.stderr
    answers = json.loads(result.stdout)
    assert [200, None] in answers
    limited = [a for a in answers if a[0] == 429]
    assert limited
    assert all(int(retry) >= 1 for _, retry in limited)
    # One log line for the burst, however many 429s: a flood does not flood the log.
    assert agent.logs().count("reason=rate_limited") == 1


async def test_the_audit_log_has_one_record_per_issuance_and_no_secret(
    world: World, start: Start, tmp_path: Path
) -> None:
    audit = tmp_path / "audit.jsonl"
    agent = await start("--audit-log", str(audit), "--session-tags")
    pod = await world.add_pod("audited", "team-audit", role="auditor")
    doc = (await pod.http("GET", CREDS + "auditor")).json()
    for _ in range(3):
        assert await status(pod, CREDS + "auditor") == 200
    await agent.stop()
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    mine = [r for r in records if r["pod"] == "audited"]
    assert len(mine) == 1
    record = mine[0]
    assert {k: record[k] for k in ("node", "namespace", "pod", "service_account", "role_arn", "session_name",
                                   "access_key_id")} == {
        "node": world.node_name, "namespace": "team-audit", "pod": "audited", "service_account": "default",
        "role_arn": BASE_ARN + "auditor", "session_name": "team-audit.audited", "access_key_id": doc["AccessKeyId"]}
    assert record["pod_uid"]
    assert record["time"].endswith("Z")
    assert record["expiration"] == doc["Expiration"]
    text = audit.read_text() + agent.logs()
    assert doc["SecretAccessKey"] not in text
    assert doc["Token"] not in text


async def test_the_session_name_annotation_names_the_sts_session(world: World, start: Start, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    agent = await start("--audit-log", str(audit))
    notes = {"iam.amazonaws.com/session-name": "orders consumer@kafka\n"}  # a space, a YAML newline
    session = "orders-consumer@kafka"
    pods = [await world.add_pod(f"msk-{i}", "team-msk", role="msk-role", annotations=notes) for i in (1, 2)]
    for pod in pods:
        assert await pod.boto3_caller_arn() == f"arn:aws:sts::{ACCOUNT}:assumed-role/msk-role/{session}"
    # The session name is part of the cache key: two pods naming one session share it.
    assert [c.role_arn for c in await world.sts.assume_role_calls(session_name=session)] == [BASE_ARN + "msk-role"]
    code, text, doc = await explain(world, "-n", "team-msk", "msk-1")
    assert (code, doc["session_name"]) == (0, session)
    assert f"role        {BASE_ARN}msk-role (session {session})" in text
    assert (f"session name {session} from annotation iam.amazonaws.com/session-name "
            "(fitted to STS from 'orders consumer@kafka')") in text
    await agent.stop()
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert {(r["pod"], r["session_name"]) for r in records if r["namespace"] == "team-msk"} == {
        ("msk-1", session), ("msk-2", session)}


@EXPLAIN_ONLY
async def test_explain_with_assume_makes_the_sts_call(world: World) -> None:
    pod = await world.add_pod("assumer", "team-x", role="x-role", register=True)
    code, _, doc = await explain(world, "-n", "team-x", pod.name, "--assume")
    assert code == 0, doc
    checks = doc["checks"]
    assert isinstance(checks, list)
    assert checks[-1]["check"] == "AssumeRole"
    assert checks[-1]["ok"] is True
    assert "access key" in checks[-1]["detail"]


@EXPLAIN_ONLY
async def test_explain_reports_missing_and_unannotated_pods(world: World) -> None:
    code, _, doc = await explain(world, "-n", "nowhere", "ghost")
    assert (code, doc["status"]) == (1, 404)
    plain = await world.add_pod("plain", "team-x")
    code, text, _ = await explain(world, "-n", "team-x", plain.name)
    assert code == 1
    assert "no iam.amazonaws.com/role annotation" in text
    code, _, _ = await explain(world, "--default-role", "fallback", "-n", "team-x", plain.name)
    assert code == 0
    code, text, _ = await explain(world, "--default-role", "fallback", "--node", "node-2", "-n", "team-x",
                                  plain.name)
    assert code == 1
    assert f"runs on node {world.node_name}, not node-2" in text


async def test_an_sts_outage_is_a_gateway_error_and_an_event_on_the_pod(world: World, start: Start) -> None:
    await start("--sts-timeout", "2s")
    await world.sts.stop()
    try:
        pod = await world.add_pod("stranded", "team-o", role="o-role")
        resp = await pod.http("GET", CREDS + "o-role")
        assert resp.status == 504  # STS unreachable; 502 is for an error STS answered with

        async def told_sts_failed() -> bool:
            resp = await pod.http("GET", CREDS + "o-role")
            return resp.status == 504 and b"STS" in resp.body

        # In agent mode the first answer already says so. A split agent waits less than an SDK's
        # 1 s timeout for credentials, then 504s saying none came yet, until the server's failed
        # STS call (up to --sts-timeout) reaches it.
        await wait_until(told_sts_failed, what="the pod to be told of the STS error")
        await wait_until(lambda: has_event(world, pod, "IAMCredentialsFailed"), what="the IAMCredentialsFailed event")
    finally:
        await world.sts.start()
    # After the outage the pod is served (the error is only remembered for --iam-role-error-ttl).

    async def served() -> bool:
        return await status(pod, CREDS + "o-role") == 200

    await wait_until(served, timeout=30, what="credentials once STS is back")
