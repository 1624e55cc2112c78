"""The Kubernetes API emulator behaves as the API server does, for lightkube and on the wire.

Every test talks real HTTP to a real server. lightkube is used where podiam's agent would
use it; raw aiohttp (and httpx, lightkube's transport) where the wire details matter.
No sleeps: every wait is for a condition, under a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx2
import kmock
import lightkube
import pytest
from lightkube import operators
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, Node, Pod
from lightkube.types import PatchType, on_error_retry

from podiam_sandbox.kubeapi import KubeApi, KubeApiEmulator, run_kubeapi
from podiam_sandbox.world import wait_until

DEADLINE = 5.0
"""Seconds any single wait may take before the test fails (they normally take milliseconds)."""

TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
PODS = "/api/v1/pods"

Event = tuple[str, str, int]
"""(type, name, resourceVersion) of a watch event: what the assertions compare."""


@pytest.fixture
async def api() -> AsyncIterator[KubeApi]:
    async with run_kubeapi(emulator=KubeApiEmulator(bookmark_interval=0.05)) as running:
        yield running


@pytest.fixture
def emulator(api: KubeApi) -> KubeApiEmulator:
    return api.emulator


@pytest.fixture
async def kube(api: KubeApi, tmp_path: Path) -> AsyncIterator[lightkube.AsyncClient]:
    config = lightkube.KubeConfig.from_file(api.write_kubeconfig(tmp_path / "kubeconfig"))
    client = lightkube.AsyncClient(config, trust_env=False)
    yield client
    await client.close()


@pytest.fixture
async def http(api: KubeApi) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=api.url) as session:
        yield session


def pod(
    name: str, namespace: str = "default", *, node: str | None = None, phase: str | None = None,
    labels: dict[str, str] | None = None, **metadata: Any,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "app", "image": "app"}]}
    if node is not None:
        spec["nodeName"] = node
    obj: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Pod", "spec": spec,
        "metadata": {"name": name, "namespace": namespace, "labels": labels or {}, **metadata},
    }
    if phase is not None:
        obj["status"] = {"phase": phase}
    return obj


def rv(obj: dict[str, Any]) -> int:
    return int(obj["metadata"]["resourceVersion"])


async def lines(response: aiohttp.ClientResponse, count: int) -> list[dict[str, Any]]:
    """The next ``count`` JSON lines of a watch stream."""
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(DEADLINE):
        while len(events) < count:
            line = await response.content.readline()
            assert line, f"the stream ended after {events}"
            if line.strip():
                events.append(json.loads(line))
    return events


async def all_lines(response: aiohttp.ClientResponse) -> list[dict[str, Any]]:
    """Every JSON line until the server ends the stream."""
    async with asyncio.timeout(DEADLINE):
        body = await response.read()
    return [json.loads(line) for line in body.splitlines() if line.strip()]


def summary(event: dict[str, Any]) -> Event:
    obj = event["object"]
    return event["type"], obj["metadata"].get("name", ""), int(obj["metadata"]["resourceVersion"])


async def take(events: AsyncIterator[tuple[str, Any]], count: int) -> list[Event]:
    """The next ``count`` events of a lightkube watch."""
    taken: list[Event] = []
    async with asyncio.timeout(DEADLINE):
        while len(taken) < count:
            kind, obj = await anext(events)
            taken.append((kind, obj.metadata.name, int(obj.metadata.resourceVersion)))
    return taken


# --- Objects: server-set fields and the one resourceVersion counter ----------------------------


async def test_create_sets_uid_timestamp_and_version(kube: lightkube.AsyncClient) -> None:
    first = await kube.create(Pod.from_dict(pod("a")))
    second = await kube.create(Pod.from_dict(pod("b")))
    for created in (first, second):
        assert uuid.UUID(created.metadata.uid).version == 4
        assert created.metadata.creationTimestamp is not None
        assert created.metadata.resourceVersion.isdigit()
    assert first.metadata.uid != second.metadata.uid
    assert int(second.metadata.resourceVersion) == int(first.metadata.resourceVersion) + 1


async def test_wire_format_of_a_created_object(http: aiohttp.ClientSession) -> None:
    async with http.post("/api/v1/namespaces/default/pods", json=pod("a")) as resp:
        assert resp.status == 201
        assert resp.headers["Content-Type"] == "application/json"
        body = await resp.json()
    assert TIMESTAMP.match(body["metadata"]["creationTimestamp"])
    assert body["metadata"]["resourceVersion"] == "1"
    assert body["metadata"]["namespace"] == "default"


async def test_every_write_bumps_one_cluster_wide_counter(
    emulator: KubeApiEmulator, kube: lightkube.AsyncClient,
) -> None:
    versions = [
        rv(await emulator.create_object("namespaces", {"metadata": {"name": "ns1"}})),
        int((await kube.create(Pod.from_dict(pod("a", "ns1")))).metadata.resourceVersion),
        rv(await emulator.patch_object("pods", "a", {"metadata": {"labels": {"x": "y"}}}, namespace="ns1")),
        int((await kube.patch(Pod, "a", {"metadata": {"labels": {"x": "z"}}}, namespace="ns1"))
            .metadata.resourceVersion),
        rv(await emulator.delete_object("pods", "a", namespace="ns1")),
    ]
    assert versions == [1, 2, 3, 4, 5]
    assert emulator.resource_version == 5


async def test_a_write_that_changes_nothing_is_not_a_write(emulator: KubeApiEmulator) -> None:
    created = await emulator.create_object("pods", pod("a", labels={"x": "y"}))
    unchanged = await emulator.patch_object("pods", "a", {"metadata": {"labels": {"x": "y"}}})
    assert rv(unchanged) == rv(created) == emulator.resource_version


async def test_helpers_return_copies(emulator: KubeApiEmulator) -> None:
    created = await emulator.create_object("pods", pod("a"))
    created["metadata"]["name"] = "mutated"
    fetched = await emulator.get_object("pods", "a")
    assert fetched["metadata"]["name"] == "a"
    fetched["spec"]["nodeName"] = "mutated"
    assert "nodeName" not in (await emulator.get_object("v1/pods", "a", namespace="default"))["spec"]


async def test_create_of_an_existing_name_is_409_already_exists(kube: lightkube.AsyncClient) -> None:
    await kube.create(Pod.from_dict(pod("a")))
    with pytest.raises(ApiError) as error:
        await kube.create(Pod.from_dict(pod("a")))
    assert (error.value.status.code, error.value.status.reason) == (409, "AlreadyExists")


async def test_missing_object_is_404_not_found(kube: lightkube.AsyncClient) -> None:
    with pytest.raises(ApiError) as error:
        await kube.get(Pod, "nope", namespace="default")
    assert (error.value.status.code, error.value.status.reason) == (404, "NotFound")
    assert error.value.status.message == 'pods "nope" not found'


# --- Lists ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "kind"), [
    ("/api/v1/pods", "PodList"),
    ("/api/v1/namespaces/default/pods", "PodList"),
    ("/api/v1/namespaces", "NamespaceList"),
    ("/api/v1/events", "EventList"),
])
async def test_list_carries_kind_and_the_current_version(
    emulator: KubeApiEmulator, http: aiohttp.ClientSession, path: str, kind: str,
) -> None:
    await emulator.create_object("pods", pod("a"))
    await emulator.create_object("namespaces", {"metadata": {"name": "default"}})
    async with http.get(path) as resp:
        body = await resp.json()
    assert body["apiVersion"] == "v1"
    assert body["kind"] == kind
    assert body["metadata"]["resourceVersion"] == "2"


async def test_lightkube_list_exposes_the_list_version(
    emulator: KubeApiEmulator, kube: lightkube.AsyncClient,
) -> None:
    await emulator.create_object("pods", pod("a"))
    await emulator.create_object("pods", pod("b", "other"))
    listing = kube.list(Pod, namespace="*")
    names = [item.metadata.name async for item in listing]
    assert names == ["a", "b"]
    assert listing.resourceVersion == str(emulator.resource_version) == "2"


# --- Selectors -----------------------------------------------------------------------------------


@pytest.fixture
async def scheduled_pods(emulator: KubeApiEmulator) -> None:
    await emulator.create_object("pods", pod("a", "ns1", node="node1", phase="Running",
                                             labels={"app": "web", "tier": "front"}))
    await emulator.create_object("pods", pod("b", "ns1", node="node2", phase="Pending", labels={"app": "db"}))
    await emulator.create_object("pods", pod("c", "ns2", phase="Pending"))


@pytest.mark.usefixtures("scheduled_pods")
@pytest.mark.parametrize(("selector", "names"), [
    ("spec.nodeName=node1", ["a"]),
    ("spec.nodeName==node2", ["b"]),
    ("spec.nodeName=", ["c"]),
    ("spec.nodeName!=node1", ["b", "c"]),
    ("status.phase=Pending,metadata.namespace=ns1", ["b"]),
    ("metadata.name=c", ["c"]),
    ("metadata.namespace!=ns1", ["c"]),
    ("status.phase!=Running,status.phase!=Pending", []),
])
async def test_field_selectors(http: aiohttp.ClientSession, selector: str, names: list[str]) -> None:
    async with http.get(PODS, params={"fieldSelector": selector}) as resp:
        assert resp.status == 200
        items = (await resp.json())["items"]
    assert [item["metadata"]["name"] for item in items] == names


@pytest.mark.usefixtures("scheduled_pods")
@pytest.mark.parametrize(("selector", "names"), [
    ("app=web", ["a"]),
    ("app==db", ["b"]),
    ("app!=web", ["b", "c"]),
    ("app in (web,db)", ["a", "b"]),
    ("app notin (web)", ["b", "c"]),
    ("tier", ["a"]),
    ("!tier", ["b", "c"]),
    ("app,!tier", ["b"]),
    ("app in (web, db),tier=front", ["a"]),
])
async def test_label_selectors(http: aiohttp.ClientSession, selector: str, names: list[str]) -> None:
    async with http.get(PODS, params={"labelSelector": selector}) as resp:
        assert resp.status == 200
        items = (await resp.json())["items"]
    assert [item["metadata"]["name"] for item in items] == names


@pytest.mark.usefixtures("scheduled_pods")
async def test_lightkube_selectors_reach_the_server(kube: lightkube.AsyncClient) -> None:
    listing = kube.list(Pod, namespace="*", labels={"app": operators.in_(["web", "db"])},
                        fields={"spec.nodeName": operators.not_equal("node1")})
    assert [item.metadata.name async for item in listing] == ["b"]


@pytest.mark.parametrize("params", [
    {"labelSelector": "app in (web"},
    {"labelSelector": "app=web=db"},
    {"fieldSelector": "spec.nodeName"},
    {"fieldSelector": "spec.nodeName=node1", "watch": "true", "labelSelector": "a b"},
])
async def test_invalid_selectors_are_400_bad_request(http: aiohttp.ClientSession, params: dict[str, str]) -> None:
    async with http.get(PODS, params=params) as resp:
        assert resp.status == 400
        assert resp.headers["Content-Type"] == "application/json"
        status = await resp.json()
    assert (status["kind"], status["reason"], status["code"]) == ("Status", "BadRequest", 400)


# --- Watches -------------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["true", "True", "1"])
async def test_watch_flag_spellings(
    emulator: KubeApiEmulator, http: aiohttp.ClientSession, flag: str,
) -> None:
    await emulator.create_object("pods", pod("a"))
    async with http.get(PODS, params={"watch": flag}) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/json"
        assert [summary(event) for event in await lines(resp, 1)] == [("ADDED", "a", 1)]


async def test_watch_false_is_a_list(emulator: KubeApiEmulator, http: aiohttp.ClientSession) -> None:
    await emulator.create_object("pods", pod("a"))
    async with http.get(PODS, params={"watch": "false"}) as resp:
        assert (await resp.json())["kind"] == "PodList"


async def test_watch_without_version_sends_current_state_then_live_changes(
    emulator: KubeApiEmulator, kube: lightkube.AsyncClient,
) -> None:
    await emulator.create_object("pods", pod("a"))
    await emulator.create_object("pods", pod("b"))
    async with contextlib.aclosing(kube.watch(Pod, namespace="*")) as events:
        assert await take(events, 2) == [("ADDED", "a", 1), ("ADDED", "b", 2)]
        await emulator.create_object("pods", pod("c"))
        await emulator.patch_object("pods", "a", {"status": {"phase": "Running"}})
        await emulator.delete_object("pods", "b")
        assert await take(events, 3) == [("ADDED", "c", 3), ("MODIFIED", "a", 4), ("DELETED", "b", 5)]


async def test_watch_from_version_zero_is_a_watch_without_version(
    emulator: KubeApiEmulator, http: aiohttp.ClientSession,
) -> None:
    await emulator.create_object("pods", pod("a"))
    await emulator.patch_object("pods", "a", {"metadata": {"labels": {"x": "y"}}})
    async with http.get(PODS, params={"watch": "true", "resourceVersion": "0"}) as resp:
        assert [summary(event) for event in await lines(resp, 1)] == [("ADDED", "a", 2)]


async def test_watch_from_version_replays_exactly_the_missed_events_then_live_ones(
    emulator: KubeApiEmulator, kube: lightkube.AsyncClient,
) -> None:
    await emulator.create_object("pods", pod("a"))
    listing = kube.list(Pod, namespace="*")
    assert [item.metadata.name async for item in listing] == ["a"]
    await emulator.create_object("pods", pod("b"))
    await emulator.create_object("namespaces", {"metadata": {"name": "elsewhere"}})  # not a pod: not seen
    await emulator.patch_object("pods", "a", {"status": {"phase": "Running"}})
    await emulator.delete_object("pods", "b")
    watch = kube.watch(Pod, namespace="*", resource_version=listing.resourceVersion)
    async with contextlib.aclosing(watch) as events:
        assert await take(events, 3) == [("ADDED", "b", 2), ("MODIFIED", "a", 4), ("DELETED", "b", 5)]
        await emulator.create_object("pods", pod("c"))
        await emulator.patch_object("pods", "c", {"status": {"phase": "Running"}})
        assert await take(events, 2) == [("ADDED", "c", 6), ("MODIFIED", "c", 7)]


async def test_watch_from_a_compacted_version_gets_410_expired_on_the_stream(
    emulator: KubeApiEmulator, http: aiohttp.ClientSession,
) -> None:
    for name in ("a", "b", "c"):
        await emulator.create_object("pods", pod(name))
    emulator.compact(keep=1)
    async with http.get(PODS, params={"watch": "true", "resourceVersion": "1"}) as resp:
        assert resp.status == 200  # as a real server: the error comes inside the stream
        assert await all_lines(resp) == [{
            "type": "ERROR",
            "object": {
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "too old resource version: 1 (2)", "reason": "Expired", "code": 410,
            },
        }]
    async with http.get(PODS, params={"watch": "true", "resourceVersion": "2"}) as resp:
        assert [summary(event) for event in await lines(resp, 1)] == [("ADDED", "c", 3)]


async def test_lightkube_sees_410_as_an_api_error(emulator: KubeApiEmulator, kube: lightkube.AsyncClient) -> None:
    await emulator.create_object("pods", pod("a"))
    await emulator.create_object("pods", pod("b"))
    emulator.compact()
    async with contextlib.aclosing(kube.watch(Pod, namespace="*", resource_version="1")) as events:
        with pytest.raises(ApiError) as error:
            await take(events, 1)
    assert (error.value.status.code, error.value.status.reason) == (410, "Expired")


async def test_history_limit_bounds_how_far_back_a_watch_can_resume() -> None:
    async with run_kubeapi(emulator=KubeApiEmulator(history_limit=2)) as api, aiohttp.ClientSession() as http:
        for name in ("a", "b", "c", "d"):
            await api.emulator.create_object("pods", pod(name))
        async with http.get(api.url + PODS, params={"watch": "true", "resourceVersion": "1"}) as resp:
            [event] = await all_lines(resp)
            assert event["object"]["message"] == "too old resource version: 1 (2)"
        async with http.get(api.url + PODS, params={"watch": "true", "resourceVersion": "2"}) as resp:
            assert [summary(event) for event in await lines(resp, 2)] == [("ADDED", "c", 3), ("ADDED", "d", 4)]


async def test_bookmarks_carry_the_version_the_watch_has_reached(
    emulator: KubeApiEmulator, http: aiohttp.ClientSession,
) -> None:
    await emulator.create_object("pods", pod("a"))
    params = {"watch": "true", "resourceVersion": "1", "allowWatchBookmarks": "true"}
    async with http.get(PODS, params=params) as resp:
        assert await lines(resp, 1) == [
            {"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}}},
        ]
        await emulator.create_object("namespaces", {"metadata": {"name": "ns1"}})  # seen by the watch as a version
        async with asyncio.timeout(DEADLINE):
            while (event := (await lines(resp, 1))[0])["object"]["metadata"]["resourceVersion"] != "2":
                assert event["type"] == "BOOKMARK"
        assert event == {
            "type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": "2"}},
        }


async def test_timeout_seconds_ends_the_stream_and_no_bookmarks_unless_asked(
    emulator: KubeApiEmulator, http: aiohttp.ClientSession,
) -> None:
    await emulator.create_object("pods", pod("a"))
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with http.get(PODS, params={"watch": "true", "timeoutSeconds": "0.3"}) as resp:
        events = await all_lines(resp)  # returns only if the server ends the stream
    assert loop.time() - started >= 0.3
    assert [summary(event) for event in events] == [("ADDED", "a", 1)]  # 0.05 s bookmarks were not asked for
    assert emulator.watch_count == 0


async def test_a_pod_bound_later_enters_a_node_watch_as_added(
    emulator: KubeApiEmulator, kube: lightkube.AsyncClient,
) -> None:
    async with contextlib.aclosing(kube.watch(Pod, namespace="*", fields={"spec.nodeName": "node1"})) as events:
        await emulator.create_object("pods", pod("late"))  # unbound: not in the node's watch
        await emulator.create_object("pods", pod("elsewhere", node="node2"))
        await emulator.create_object("pods", pod("here", node="node1"))
        assert await take(events, 1) == [("ADDED", "here", 3)]  # events are ordered: nothing came before
        await emulator.bind_pod("late", "node1")
        assert await take(events, 1) == [("ADDED", "late", 4)]


async def test_a_pod_that_stops_matching_leaves_as_deleted_and_comes_back_as_added(
    emulator: KubeApiEmulator, kube: lightkube.AsyncClient,
) -> None:
    await emulator.create_object("pods", pod("a", labels={"app": "web"}))
    async with contextlib.aclosing(kube.watch(Pod, namespace="*", labels={"app": "web"})) as events:
        assert await take(events, 1) == [("ADDED", "a", 1)]
        await emulator.patch_object("pods", "a", {"metadata": {"labels": {"app": "db"}}})
        await emulator.patch_object("pods", "a", {"metadata": {"labels": {"app": "web"}}})
        await emulator.patch_object("pods", "a", {"status": {"phase": "Running"}})
        assert await take(events, 3) == [("DELETED", "a", 2), ("ADDED", "a", 3), ("MODIFIED", "a", 4)]


async def test_selector_transitions_are_replayed_too(
    emulator: KubeApiEmulator, http: aiohttp.ClientSession,
) -> None:
    await emulator.create_object("pods", pod("a"))
    await emulator.bind_pod("a", "node1")
    await emulator.patch_object("pods", "a", {"status": {"phase": "Running"}})
    params = {"watch": "true", "resourceVersion": "1", "fieldSelector": "spec.nodeName=node1"}
    async with http.get(PODS, params=params) as resp:
        assert [summary(event) for event in await lines(resp, 2)] == [("ADDED", "a", 2), ("MODIFIED", "a", 3)]


async def test_watch_of_one_namespace(emulator: KubeApiEmulator, http: aiohttp.ClientSession) -> None:
    async with http.get("/api/v1/namespaces/ns1/pods", params={"watch": "true"}) as resp:
        await emulator.create_object("pods", pod("other", "ns2"))
        await emulator.create_object("pods", pod("mine", "ns1"))
        assert [summary(event) for event in await lines(resp, 1)] == [("ADDED", "mine", 2)]


# --- Breaking watches on demand ------------------------------------------------------------------


async def test_disconnect_watches_breaks_the_connection_mid_stream(
    emulator: KubeApiEmulator, http: aiohttp.ClientSession,
) -> None:
    await emulator.create_object("pods", pod("a"))
    async with http.get(PODS, params={"watch": "true"}) as resp:
        await lines(resp, 1)
        await emulator.disconnect_watches()
        assert emulator.watch_count == 0
        with pytest.raises(aiohttp.ClientPayloadError):
            await all_lines(resp)


async def test_disconnect_watches_as_httpx_sees_it(emulator: KubeApiEmulator, api: KubeApi) -> None:
    await emulator.create_object("pods", pod("a"))
    async with (
        httpx2.AsyncClient(base_url=api.url, trust_env=False) as client,
        client.stream("GET", PODS, params={"watch": "true"}) as resp,
        asyncio.timeout(DEADLINE),
    ):
        lines_seen = aiter(resp.aiter_lines())
        assert json.loads(await anext(lines_seen))["type"] == "ADDED"
        await emulator.disconnect_watches()
        with pytest.raises(httpx2.RemoteProtocolError):
            await anext(lines_seen)


async def test_lightkube_resumes_after_a_disconnect_without_loss_or_duplicates(
    emulator: KubeApiEmulator, kube: lightkube.AsyncClient,
) -> None:
    await emulator.create_object("pods", pod("a"))
    async with contextlib.aclosing(kube.watch(Pod, namespace="*", on_error=on_error_retry)) as events:
        assert await take(events, 1) == [("ADDED", "a", 1)]
        await emulator.create_object("pods", pod("b"))
        await emulator.disconnect_watches()
        await emulator.create_object("pods", pod("c"))  # while the client reconnects
        await emulator.delete_object("pods", "a")
        assert await take(events, 3) == [("ADDED", "b", 2), ("ADDED", "c", 3), ("DELETED", "a", 4)]
        assert emulator.watch_count == 1  # c and the deletion came after the old stream was gone
        await emulator.disconnect_watches()
        await emulator.create_object("pods", pod("d"))
        assert await take(events, 1) == [("ADDED", "d", 5)]


# --- Namespaces, generateName, PUT, PATCH, DELETE, subresources ---------------------------------


async def test_namespaces_are_served(kube: lightkube.AsyncClient) -> None:
    created = await kube.create(Namespace(metadata=ObjectMeta(name="ns1", labels={"team": "a"})))
    assert created.metadata.namespace is None
    assert (await kube.get(Namespace, "ns1")).metadata.uid == created.metadata.uid
    assert [ns.metadata.name async for ns in kube.list(Namespace, labels={"team": "a"})] == ["ns1"]
    async with contextlib.aclosing(kube.watch(Namespace)) as events:
        assert await take(events, 1) == [("ADDED", "ns1", 1)]
        await kube.create(Namespace(metadata=ObjectMeta(name="ns2")))
        await kube.delete(Namespace, "ns1")
        assert await take(events, 2) == [("ADDED", "ns2", 2), ("DELETED", "ns1", 3)]
    with pytest.raises(ApiError) as error:
        await kube.get(Namespace, "ns1")
    assert error.value.status.code == 404


async def test_generate_name(kube: lightkube.AsyncClient) -> None:
    first = await kube.create(Pod.from_dict(pod("", generateName="web-")))
    second = await kube.create(Pod.from_dict(pod("", generateName="web-")))
    for created in (first, second):
        assert re.fullmatch(r"web-[a-z0-9]{5}", created.metadata.name)
        assert created.metadata.generateName == "web-"
    assert first.metadata.name != second.metadata.name


async def test_a_name_or_generate_name_is_required(http: aiohttp.ClientSession) -> None:
    async with http.post("/api/v1/namespaces/default/pods", json={"metadata": {}}) as resp:
        assert (resp.status, (await resp.json())["reason"]) == (422, "Invalid")


async def test_put_replaces_the_whole_object(emulator: KubeApiEmulator, kube: lightkube.AsyncClient) -> None:
    created = await kube.create(Pod.from_dict(pod("a", labels={"old": "1"})))
    replacement = Pod.from_dict(pod("a", labels={"new": "1"}))
    replacement.metadata.resourceVersion = created.metadata.resourceVersion
    replaced = await kube.replace(replacement)
    assert replaced.metadata.labels == {"new": "1"}
    assert replaced.metadata.uid == created.metadata.uid
    assert int(replaced.metadata.resourceVersion) == emulator.resource_version == 2


async def test_put_with_a_stale_version_is_409_conflict(kube: lightkube.AsyncClient) -> None:
    created = await kube.create(Pod.from_dict(pod("a")))
    await kube.patch(Pod, "a", {"metadata": {"labels": {"x": "y"}}}, namespace="default")
    stale = Pod.from_dict(pod("a", labels={"new": "1"}))
    stale.metadata.resourceVersion = created.metadata.resourceVersion
    with pytest.raises(ApiError) as error:
        await kube.replace(stale)
    assert (error.value.status.code, error.value.status.reason) == (409, "Conflict")
    assert (await kube.get(Pod, "a", namespace="default")).metadata.labels == {"x": "y"}


async def test_put_of_a_missing_object_is_404(kube: lightkube.AsyncClient) -> None:
    with pytest.raises(ApiError) as error:
        await kube.replace(Pod.from_dict(pod("nope")))
    assert error.value.status.code == 404


@pytest.mark.parametrize("patch_type", [PatchType.MERGE, PatchType.STRATEGIC])
async def test_patch_is_a_merge_patch(
    emulator: KubeApiEmulator, kube: lightkube.AsyncClient, patch_type: PatchType,
) -> None:
    await emulator.create_object("pods", pod("a", labels={"keep": "1", "drop": "1"}, annotations={"n": "1"}))
    patched = await kube.patch(Pod, "a", {"metadata": {"labels": {"drop": None, "add": "1"}}},
                               namespace="default", patch_type=patch_type)
    assert patched.metadata.labels == {"keep": "1", "add": "1"}
    assert patched.metadata.annotations == {"n": "1"}


async def test_json_patch_is_415(emulator: KubeApiEmulator, http: aiohttp.ClientSession) -> None:
    await emulator.create_object("pods", pod("a"))
    headers = {"Content-Type": "application/json-patch+json"}
    async with http.patch("/api/v1/namespaces/default/pods/a", data=b"[]", headers=headers) as resp:
        assert resp.status == 415


async def test_finalizers_make_a_delete_a_termination(
    emulator: KubeApiEmulator, kube: lightkube.AsyncClient,
) -> None:
    await emulator.create_object("pods", pod("a", finalizers=["example.com/hold"]))
    async with contextlib.aclosing(kube.watch(Pod, namespace="*")) as events:
        assert await take(events, 1) == [("ADDED", "a", 1)]
        await kube.delete(Pod, "a", namespace="default")
        terminating = await kube.get(Pod, "a", namespace="default")
        assert terminating.metadata.deletionTimestamp is not None
        await kube.patch(Pod, "a", {"metadata": {"finalizers": None}}, namespace="default")
        assert await take(events, 2) == [("MODIFIED", "a", 2), ("DELETED", "a", 3)]
    with pytest.raises(ApiError):
        await kube.get(Pod, "a", namespace="default")


async def test_binding_subresource(emulator: KubeApiEmulator, http: aiohttp.ClientSession) -> None:
    await emulator.create_object("pods", pod("a"))
    binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "a"},
               "target": {"apiVersion": "v1", "kind": "Node", "name": "node1"}}
    url = "/api/v1/namespaces/default/pods/a/binding"
    async with http.post(url, json=binding) as resp:
        assert resp.status == 201
    assert (await emulator.get_object("pods", "a"))["spec"]["nodeName"] == "node1"
    async with http.post(url, json=binding) as resp:
        assert (resp.status, (await resp.json())["reason"]) == (409, "Conflict")


async def test_status_subresource_changes_only_the_status(
    emulator: KubeApiEmulator, http: aiohttp.ClientSession,
) -> None:
    await emulator.create_object("pods", pod("a"))
    patch = {"status": {"phase": "Running", "podIP": "10.0.0.5"}, "spec": {"nodeName": "sneaky"}}
    headers = {"Content-Type": "application/merge-patch+json"}
    async with http.patch("/api/v1/namespaces/default/pods/a/status", json=patch, headers=headers) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["status"] == {"phase": "Running", "podIP": "10.0.0.5"}
    assert "nodeName" not in body["spec"]


async def test_a_request_a_test_intercepts_changes_nothing(
    emulator: KubeApiEmulator, kube: lightkube.AsyncClient,
) -> None:
    injected = kmock.KubernetesError(status=503, reason="ServiceUnavailable", message="injected")
    emulator["post /api/v1/namespaces/default/pods"] << injected
    with pytest.raises(ApiError) as error:
        await kube.create(Pod.from_dict(pod("a")))
    assert (error.value.status.code, error.value.status.message) == (503, "injected")
    assert await emulator.list_objects("pods") == []
    assert emulator.resource_version == 0


async def test_discovery_declares_the_core_resources(http: aiohttp.ClientSession) -> None:
    async with http.get("/api/v1") as resp:
        body = await resp.json()
    assert body["groupVersion"] == "v1"
    resources = {item["name"]: item for item in body["resources"]}
    assert (resources["pods"]["kind"], resources["pods"]["namespaced"]) == ("Pod", True)
    assert (resources["namespaces"]["kind"], resources["namespaces"]["namespaced"]) == ("Namespace", False)
    assert (resources["events"]["kind"], resources["events"]["namespaced"]) == ("Event", True)
    assert "watch" in resources["pods"]["verbs"]


async def test_events_are_a_namespaced_resource(emulator: KubeApiEmulator, http: aiohttp.ClientSession) -> None:
    event = {"metadata": {"name": "a.1"}, "involvedObject": {"kind": "Pod", "name": "a"}, "reason": "Denied"}
    async with http.post("/api/v1/namespaces/ns1/events", json=event) as resp:
        assert resp.status == 201
    [stored] = await emulator.list_objects("events", field_selector="reason=Denied")
    assert (stored["kind"], stored["metadata"]["namespace"]) == ("Event", "ns1")


async def test_nodes_are_a_cluster_scoped_resource(emulator: KubeApiEmulator, http: aiohttp.ClientSession) -> None:
    node = {"metadata": {"name": "node-1"}, "spec": {"taints": [{"key": "a", "effect": "NoSchedule"}]}}
    async with http.post("/api/v1/nodes", json=node) as resp:
        assert resp.status == 201
        body = await resp.json()
    assert (body["kind"], body["apiVersion"], "namespace" in body["metadata"]) == ("Node", "v1", False)
    async with http.get("/api/v1/nodes/node-1") as resp:
        assert (await resp.json())["spec"]["taints"] == [{"key": "a", "effect": "NoSchedule"}]
    async with http.get("/api/v1") as resp:
        resources = {item["name"]: item for item in (await resp.json())["resources"]}
    assert (resources["nodes"]["kind"], resources["nodes"]["namespaced"]) == ("Node", False)


async def test_a_node_patch_with_its_current_version_replaces_the_taints(
    emulator: KubeApiEmulator, kube: lightkube.AsyncClient,
) -> None:
    taints = [{"key": "a", "effect": "NoSchedule"}, {"key": "b", "value": "x", "effect": "NoExecute"}]
    created = await emulator.create_object("nodes", {"metadata": {"name": "node-1"}, "spec": {"taints": taints}})
    version = created["metadata"]["resourceVersion"]
    patched = await kube.patch(Node, "node-1", {"metadata": {"resourceVersion": version},
                                                "spec": {"taints": [taints[1]]}}, patch_type=PatchType.MERGE)
    assert [t.key for t in patched.spec.taints] == ["b"]  # a list is replaced whole, not merged
    assert int(patched.metadata.resourceVersion) == int(version) + 1
    cleared = await kube.patch(Node, "node-1", {"metadata": {"resourceVersion": patched.metadata.resourceVersion},
                                                "spec": {"taints": None}}, patch_type=PatchType.MERGE)
    assert cleared.spec.taints is None
    assert "taints" not in (await emulator.get_object("nodes", "node-1"))["spec"]


async def test_a_node_patch_with_a_stale_version_is_409_and_changes_nothing(
    emulator: KubeApiEmulator, kube: lightkube.AsyncClient,
) -> None:
    created = await emulator.create_object("nodes", {"metadata": {"name": "node-1"},
                                                     "spec": {"taints": [{"key": "a", "effect": "NoSchedule"}]}})
    # Someone else (the kubelet, `kubectl taint`) writes the Node after our read.
    await emulator.patch_object("nodes", "node-1", {"spec": {"taints": [{"key": "a", "effect": "NoSchedule"},
                                                                        {"key": "c", "effect": "NoSchedule"}]}})
    stale = {"metadata": {"resourceVersion": created["metadata"]["resourceVersion"]}, "spec": {"taints": None}}
    with pytest.raises(ApiError) as error:
        await kube.patch(Node, "node-1", stale, patch_type=PatchType.MERGE)
    assert (error.value.status.code, error.value.status.reason) == (409, "Conflict")
    assert [t["key"] for t in (await emulator.get_object("nodes", "node-1"))["spec"]["taints"]] == ["a", "c"]


# --- Resources and the request history ----------------------------------------------------------


async def test_an_undeclared_resource_is_served_once_it_has_objects(http: aiohttp.ClientSession) -> None:
    async with http.get("/apis/example.com/v1/widgets") as resp:
        assert resp.status == 404
    async with http.post("/apis/example.com/v1/namespaces/default/widgets", json={"metadata": {"name": "w"}}) as resp:
        assert resp.status == 201
    async with http.get("/apis/example.com/v1/widgets") as resp:
        assert resp.status == 200
        assert [item["metadata"]["name"] for item in (await resp.json())["items"]] == ["w"]
    async with http.get("/apis/example.com/v1/gadgets") as resp:
        assert resp.status == 404


@pytest.mark.parametrize(("keep_requests", "kept"), [(True, 1), (False, 0)])
async def test_reactions_intercept_whether_or_not_requests_are_kept(
    tmp_path: Path, keep_requests: bool, kept: int,
) -> None:
    async with run_kubeapi(emulator=KubeApiEmulator(keep_requests=keep_requests)) as api:
        injected = kmock.KubernetesError(status=503, reason="ServiceUnavailable", message="injected")
        reaction = api.emulator["post /api/v1/namespaces/default/pods"] << injected
        client = lightkube.AsyncClient(lightkube.KubeConfig.from_file(api.write_kubeconfig(tmp_path / "kc")),
                                       trust_env=False)
        try:
            with pytest.raises(ApiError) as error:
                await client.create(Pod.from_dict(pod("a")))
            assert (error.value.status.code, error.value.status.message) == (503, "injected")
            await client.create(Pod.from_dict(pod("b", "other")))  # not intercepted: the emulator's own
        finally:
            await client.close()
        assert (len(reaction), len(api.emulator)) == (kept, 2 * kept)
        assert [p["metadata"]["name"] for p in await api.emulator.list_objects("pods")] == ["b"]


async def test_an_emulator_that_keeps_no_requests_holds_only_those_in_flight() -> None:
    async with (
        run_kubeapi(emulator=KubeApiEmulator(keep_requests=False)) as api,
        aiohttp.ClientSession(base_url=api.url) as http,
    ):
        emulator = api.emulator
        for name in ("a", "b"):
            async with http.post("/api/v1/namespaces/default/pods", json=pod(name)) as resp:
                assert resp.status == 201
        async with http.patch("/api/v1/namespaces/default/pods/a", json={"metadata": {"labels": {"x": "y"}}},
                              headers={"Content-Type": "application/merge-patch+json"}) as resp:
            assert resp.status == 200
        assert len(emulator) == 0
        async with http.get(PODS, params={"watch": "true"}) as resp:
            assert [summary(event) for event in await lines(resp, 2)] == [("ADDED", "a", 3), ("ADDED", "b", 2)]
            assert len(emulator) == 1  # the watch, while it streams
        await wait_until(lambda: _none_in_flight(emulator), DEADLINE, "the watch to be forgotten")
        assert [(p["metadata"]["name"], p["metadata"]["labels"]) for p in await emulator.list_objects("pods")] == [
            ("a", {"x": "y"}), ("b", {})]


async def _none_in_flight(emulator: KubeApiEmulator) -> bool:
    return len(emulator) == 0


# --- The standalone server ------------------------------------------------------------------------


async def test_standalone_server(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "podiam_sandbox.kubeapi", "--host", "127.0.0.1", "--port", "0",
        "--kubeconfig", str(kubeconfig), "--namespace", "default",
        stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(DEADLINE * 2):
            line = (await process.stdout.readline()).decode()
        assert re.fullmatch(r"ready http://127\.0\.0\.1:\d+\n", line)
        assert oct(os.stat(kubeconfig).st_mode & 0o777) == oct(0o600)
        client = lightkube.AsyncClient(lightkube.KubeConfig.from_file(kubeconfig), trust_env=False)
        try:
            await client.create(Pod.from_dict(pod("a")))  # the kubeconfig's namespace: default
            assert [ns.metadata.name async for ns in client.list(Namespace)] == ["default"]
            assert [p.metadata.name async for p in client.list(Pod)] == ["a"]
        finally:
            await client.close()
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(DEADLINE):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_shutdown_does_not_wait_for_open_watches(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    seen: asyncio.Queue[str] = asyncio.Queue()
    async with run_kubeapi() as api:
        config = lightkube.KubeConfig.from_file(api.write_kubeconfig(tmp_path / "kubeconfig"))
        client = lightkube.AsyncClient(config, trust_env=False)
        await api.emulator.create_object("pods", pod("a"))

        async def consume() -> None:
            watch = client.watch(Pod, namespace="*", on_error=on_error_retry)  # reconnects at once
            async with contextlib.aclosing(watch) as events:
                async for _, obj in events:
                    seen.put_nowait(obj.metadata.name)

        consumer = asyncio.create_task(consume())
        async with asyncio.timeout(DEADLINE):
            assert await seen.get() == "a"
        stopping = loop.time()
    assert loop.time() - stopping < 0.9  # else aiohttp waits (a whole second at least) for the watch
    consumer.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await consumer
    await client.close()


async def test_after_close_watches_every_new_watch_breaks_at_once(
    emulator: KubeApiEmulator, http: aiohttp.ClientSession,
) -> None:
    await emulator.create_object("pods", pod("a"))
    await emulator.close_watches()
    async with http.get(PODS, params={"watch": "true"}) as resp:
        with pytest.raises(aiohttp.ClientPayloadError):
            await all_lines(resp)
    async with http.get(PODS) as resp:
        assert len((await resp.json())["items"]) == 1
