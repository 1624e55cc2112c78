"""The emulator's audit log: each request's user (its token), RBAC verb and object, as a real
API server's audit log at level Metadata records them; tests compare it with RBAC rules."""

from __future__ import annotations

import io
import json

import lightkube
import pytest
from lightkube.models.core_v1 import Container, PodSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Event, Pod
from lightkube.types import PatchType

from podiam_sandbox import kubeapi_wire as wire
from podiam_sandbox.kubeapi import kubeconfig_for, run_kubeapi


@pytest.mark.parametrize(("method", "path", "query", "verb"), [
    ("GET", "/api/v1/pods", {}, "list"),
    ("GET", "/api/v1/pods", {"watch": "1"}, "watch"),
    ("GET", "/api/v1/namespaces/ns/pods/p", {}, "get"),
    ("POST", "/api/v1/namespaces/ns/events", {}, "create"),
    ("PUT", "/api/v1/namespaces/ns/pods/p", {}, "update"),
    ("PATCH", "/api/v1/namespaces/ns/pods/p/status", {}, "patch"),
    ("DELETE", "/api/v1/namespaces/ns/pods/p", {}, "delete"),
    ("DELETE", "/api/v1/namespaces/ns/pods", {}, "deletecollection"),
    ("PATCH", "/api/v1/nodes/n1", {}, "patch"),
])
def test_rbac_verbs_as_the_authorizer_names_them(method: str, path: str, query: dict[str, str], verb: str) -> None:
    parsed = wire.parse_api_path(path)
    assert parsed is not None
    assert wire.rbac_verb(method, parsed, query) == verb


def test_an_audit_record_names_user_verb_and_object() -> None:
    record = wire.audit_record("PATCH", "/api/v1/namespaces/ns/pods/p/status", {}, "Bearer agent-1")
    assert record == {"user": "agent-1", "verb": "patch", "apiGroup": "", "resource": "pods",
                      "subresource": "status", "namespace": "ns", "name": "p"}
    assert wire.audit_record("GET", "/version", {}, "") == {"user": None, "verb": "get", "nonResourceURL": "/version"}


async def test_the_served_api_logs_each_request_of_each_user() -> None:
    log = io.StringIO()
    async with run_kubeapi(audit_log=log) as api:
        client = lightkube.AsyncClient(lightkube.KubeConfig.from_dict(kubeconfig_for(api.url, token="tester")))  # noqa: S106 - a name
        try:
            await client.create(Pod(metadata=ObjectMeta(name="p", namespace="default"),
                                    spec=PodSpec(containers=[Container(name="c", image="i")])))
            await client.patch(Pod, "p", {"metadata": {"labels": {"a": "b"}}}, namespace="default",
                               patch_type=PatchType.MERGE)
            _ = [e async for e in client.list(Event, namespace=lightkube.ALL_NS)]
        finally:
            await client.close()
    records = [json.loads(line) for line in log.getvalue().splitlines()]
    assert [(r["user"], r["verb"], r["resource"], r["namespace"]) for r in records] == [
        ("tester", "create", "pods", "default"), ("tester", "patch", "pods", "default"),
        ("tester", "list", "events", None),
    ]
