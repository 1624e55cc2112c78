"""
`podiam explain` against the Kubernetes API emulator, and the endpoint core on an index fed
the same pods: for every case both give the same status and message, because both ask
decision.caller / decision.decide (explain adds only its reasons as check details).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from pod_doubles import CredentialDouble
from podiam.credentials import Credentials, Identity
from podiam.explain import explain
from podiam.imds.core import ImdsDeps, MetadataCore, Reply, Request
from podiam.imds.rate_limit import RateLimiter
from podiam.imds.tokens import TokenIssuer
from podiam.kube.pod_index import PodIndex
from podiam.observability.audit import IssuanceLog
from podiam.observability.metrics import Metrics
from podiam.pods import PodInfo
from podiam.policy import RolePolicy
from podiam.settings import ExplainSettings, ImdsSettings, KubeSettings, RoleSettings
from podiam_sandbox.kubeapi import run_kubeapi
from podiam_sandbox.kubeapi_emulator import KubeApiEmulator

NODE = "node-1"
BASE = "arn:aws:iam::123456789012:role/"
LATER = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
CREDS = Credentials("ASIAEXAMPLE", "secret", "token", LATER, LATER)


class Fresh(CredentialDouble):
    def fresh(self, identity: Identity) -> Credentials | None:
        return CREDS

    async def get(self, identity: Identity) -> Credentials:
        return CREDS


async def _add(api: KubeApiEmulator, name: str, ip: str, *, role: str | None = "reader",
               phase: str = "Running", host_network: bool = False) -> None:
    spec: dict[str, Any] = {"nodeName": NODE, "containers": [{"name": "c", "image": "i"}]}
    if host_network:
        spec["hostNetwork"] = True
    notes = {"iam.amazonaws.com/role": role} if role else {}
    await api.create_object("pods", {"metadata": {"name": name, "namespace": "ns", "annotations": notes},
                                     "spec": spec})
    await api.patch_object("pods", name, {"status": {"phase": phase, "podIP": ip}}, namespace="ns",
                           subresource="status")


@pytest_asyncio.fixture
async def kube(tmp_path: Path) -> AsyncIterator[tuple[KubeApiEmulator, KubeSettings]]:
    async with run_kubeapi() as api:
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        await _add(api.emulator, "served", "10.0.0.1")
        await _add(api.emulator, "no-role", "10.0.0.2", role=None)
        await _add(api.emulator, "bad-role", "10.0.0.3", role="not a role!")
        await _add(api.emulator, "twin-a", "10.0.0.4")
        await _add(api.emulator, "twin-b", "10.0.0.4")
        await _add(api.emulator, "done", "10.0.0.5", phase="Succeeded")
        await _add(api.emulator, "daemon", "10.0.0.254", host_network=True)
        yield api.emulator, KubeSettings(node_name=NODE, kubeconfig=str(kubeconfig))


async def _endpoint(emulator: KubeApiEmulator, roles: RoleSettings, ip: str) -> Reply:
    """What the agent's endpoint answers ``ip``, its index fed the pods the emulator holds."""
    policy = RolePolicy.from_settings(roles, BASE)
    index = PodIndex(policy.identity, host_identity=policy.host_identity(NODE))
    pods = [PodInfo("ns", o["metadata"]["name"], o["metadata"]["uid"], o["status"]["podIP"], o["status"]["phase"],
                    host_network=bool(o["spec"].get("hostNetwork")), annotations=o["metadata"]["annotations"],
                    node=NODE)
            for o in await emulator.list_objects("pods")]
    index.replace(pods)
    deps = ImdsDeps(pods=index, credentials=Fresh(), tokens=TokenIssuer(), issuance=IssuanceLog(NODE),
                    metrics=Metrics(), settings=ImdsSettings(pod_wait=0), upstream=None, ready=lambda: True,
                    limiter=RateLimiter(0))
    answer = MetadataCore(deps).answer(Request("GET", "/latest/meta-data/iam/security-credentials/", {}, ip))
    return answer if isinstance(answer, Reply) else await answer  # an unknown IP is waited for (0 s)


@pytest.mark.parametrize(("ip", "status", "host_role"), [
    ("10.0.0.1", 200, None), ("10.0.0.2", 404, None), ("10.0.0.3", 403, None), ("10.0.0.4", 409, None),
    ("10.0.0.5", 404, None), ("10.0.0.254", 403, None), ("10.0.0.254", 200, "node-tools"), ("10.0.0.9", 404, None),
    ("127.0.0.1", 403, None), ("127.0.0.1", 200, "node-tools"),  # the node itself: no pod object at all
])
async def test_explain_answers_each_ip_as_the_endpoint_does(
    kube: tuple[KubeApiEmulator, KubeSettings], ip: str, status: int, host_role: str | None
) -> None:
    emulator, kube_settings = kube
    roles = RoleSettings(base_role_arn=BASE, host_network_role=host_role)
    result = await explain(ExplainSettings(kube=kube_settings, roles=roles), namespace="ns", name=None, ip=ip,
                           assume=False)
    reply = await _endpoint(emulator, roles, ip)
    assert result.status == reply.status == status
    if status != 200:
        assert reply.body == result.answer.encode() + b"\n"  # the endpoint's message, word for word


async def test_explain_by_name_gives_the_endpoints_hostnetwork_message(
    kube: tuple[KubeApiEmulator, KubeSettings],
) -> None:
    emulator, kube_settings = kube
    result = await explain(ExplainSettings(kube=kube_settings, roles=RoleSettings(base_role_arn=BASE)),
                           namespace="ns", name="daemon", ip=None, assume=False)
    reply = await _endpoint(emulator, RoleSettings(base_role_arn=BASE), "10.0.0.254")
    assert (result.status, result.answer.encode() + b"\n") == (reply.status, reply.body)
    assert result.pod is not None and result.pod["name"] == "daemon"
