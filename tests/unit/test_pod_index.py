"""The pod index: active pods only, IP reuse, ambiguity, the bounded wait, listeners."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from podiam.credentials import Identity
from podiam.errors import InvalidRoleError, PodAmbiguous, PodNotFound, RoleForbidden
from podiam.kube.pod_index import PodIndex
from podiam.pods import PodEntry, PodInfo
from podiam.policy import RolePolicy
from podiam.settings import RoleSettings

POLICY = RolePolicy.from_settings(RoleSettings(), "arn:aws:iam::123456789012:role/")


def pod(name: str, ip: str | None = "10.0.0.5", role: str | None = "reader", **changes: object) -> PodInfo:
    annotations = {"iam.amazonaws.com/role": role} if role else {}
    base = PodInfo(namespace="ns", name=name, uid=f"uid-{name}", ip=ip, phase="Running", annotations=annotations)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str | None]] = []

    def pod_active(self, entry: PodEntry) -> None:
        self.events.append(("active", entry.pod.name, entry.identity.role_name if entry.identity else None))

    def pod_gone(self, entry: PodEntry) -> None:
        self.events.append(("gone", entry.pod.name, entry.identity.role_name if entry.identity else None))


def make_index() -> tuple[PodIndex, Recorder]:
    index = PodIndex(POLICY.identity)
    recorder = Recorder()
    index.subscribe(recorder)
    return index, recorder


@pytest.mark.parametrize("changes", [
    {"ip": None}, {"phase": "Succeeded"}, {"phase": "Failed"}, {"deleting": True}, {"host_network": True},
])
def test_inactive_pods_are_not_indexed(changes: dict[str, object]) -> None:
    index, _ = make_index()
    index.upsert(pod("a", **changes))
    with pytest.raises(PodNotFound, match=r"10\.0\.0\.5"):
        index.lookup("10.0.0.5")


def test_pending_pods_with_an_ip_are_served() -> None:
    index, _ = make_index()
    index.upsert(pod("a", phase="Pending"))
    assert index.lookup("10.0.0.5").pod.name == "a"


def test_ip_reuse_serves_the_new_pod_never_the_old() -> None:
    index, _ = make_index()
    index.upsert(pod("a", role="role-a"))
    index.upsert(pod("a", role="role-a", phase="Succeeded"))  # A finishes, frees its IP
    index.upsert(pod("b", role="role-b"))
    entry = index.lookup("10.0.0.5")
    assert entry.pod.name == "b"
    assert entry.identity is not None and entry.identity.role_name == "role-b"


def test_two_active_pods_on_one_ip_are_refused_naming_both() -> None:
    index, _ = make_index()
    index.upsert(pod("a"))
    index.upsert(pod("b"))
    with pytest.raises(PodAmbiguous, match=r"\(ns/a, ns/b\)"):
        index.lookup("10.0.0.5")
    index.delete(pod("a"))
    assert index.lookup("10.0.0.5").pod.name == "b"


def test_a_pod_that_moves_ip_leaves_its_old_ip() -> None:
    index, _ = make_index()
    index.upsert(pod("a", ip="10.0.0.5"))
    index.upsert(pod("a", ip="10.0.0.6"))
    with pytest.raises(PodNotFound):
        index.lookup("10.0.0.5")
    assert index.lookup("10.0.0.6").pod.name == "a"


def test_replace_drops_pods_missing_from_the_list() -> None:
    index, recorder = make_index()
    index.upsert(pod("a", ip="10.0.0.5"))
    index.upsert(pod("b", ip="10.0.0.6"))
    assert not index.synced.is_set()
    index.replace([pod("b", ip="10.0.0.6"), pod("c", ip="10.0.0.7")])
    assert index.synced.is_set()
    assert sorted(e.pod.name for e in index.entries()) == ["b", "c"]
    assert ("gone", "a", "reader") in recorder.events
    assert ("gone", "b", "reader") not in recorder.events


def test_a_malformed_annotation_is_indexed_with_its_problem() -> None:
    index, recorder = make_index()
    index.upsert(pod("a", role="not a role"))
    entry = index.lookup("10.0.0.5")
    assert entry.identity is None
    assert isinstance(entry.problem, InvalidRoleError)
    assert recorder.events == [("active", "a", None)]


def test_listeners_hear_identity_changes_only() -> None:
    index, recorder = make_index()
    index.upsert(pod("a", role="r1"))
    index.upsert(pod("a", role="r1", phase="Pending"))  # same identity: nothing to tell
    index.upsert(pod("a", role="r2"))
    index.delete(pod("a", role="r2"))
    assert recorder.events == [("active", "a", "r1"), ("gone", "a", "r1"), ("active", "a", "r2"),
                               ("gone", "a", "r2")]


def test_identity_in_use_counts_other_pods() -> None:
    index, _ = make_index()
    index.upsert(pod("a", ip="10.0.0.5"))
    identity = index.lookup("10.0.0.5").identity
    assert identity is not None
    assert index.identity_in_use(identity)
    index.delete(pod("a"))
    assert not index.identity_in_use(identity)


async def test_a_waiting_request_gets_a_pod_indexed_during_the_wait() -> None:
    index, _ = make_index()
    asked = asyncio.Event()

    async def request() -> PodEntry:
        asked.set()  # wait_for's first step runs in this same step of the task, up to its wait
        return await index.wait_for("10.0.0.5", timeout=5.0)

    waiting = asyncio.create_task(request())
    await asked.wait()
    assert not waiting.done()  # not found yet: it waits, not fails
    index.upsert(pod("late"))
    async with asyncio.timeout(1):  # the upsert wakes it; the 5 s are not waited out
        entry = await waiting
    assert entry.pod.name == "late"


async def test_the_wait_ends_with_not_found_naming_the_ip() -> None:
    index, _ = make_index()
    with pytest.raises(PodNotFound, match=r"10\.0\.0\.9 .*waited 0\.01s"):
        await index.wait_for("10.0.0.9", timeout=0.01)


async def test_a_known_pod_is_answered_without_waiting() -> None:
    index, _ = make_index()
    index.upsert(pod("a"))
    assert (await index.wait_for("10.0.0.5", timeout=0)).pod.name == "a"
    with pytest.raises(PodNotFound):
        await index.wait_for("10.0.0.6", timeout=0)


def test_deciding_again_tells_listeners_only_what_changed() -> None:
    verdicts = {"allowed": True}

    def decide(p: PodInfo) -> Identity:
        if not verdicts["allowed"]:
            raise RoleForbidden("namespace ns does not permit it")
        return POLICY.identity(p)

    index = PodIndex(decide)
    recorder = Recorder()
    index.subscribe(recorder)
    index.upsert(pod("a"))
    index.decide_again("ns")  # same answer: nothing to tell
    verdicts["allowed"] = False
    index.decide_again("ns")
    index.decide_again("ns")
    assert recorder.events == [("active", "a", "reader"), ("gone", "a", "reader"), ("active", "a", None)]
    assert isinstance(index.lookup("10.0.0.5").problem, RoleForbidden)
    index.decide_again("other-namespace")
    assert len(recorder.events) == 3


def test_the_nodes_own_addresses_are_known() -> None:
    index = PodIndex(POLICY.identity, host_ips=["192.0.2.10"])
    assert index.is_host_ip("192.0.2.10")
    assert index.is_host_ip("127.0.0.1")
    assert not index.is_host_ip("10.0.0.5")
    index.upsert(pod("daemon", ip="192.0.2.11", host_network=True))
    assert index.is_host_ip("192.0.2.11")
    with pytest.raises(PodNotFound):
        index.lookup("192.0.2.11")  # never indexed as a pod
    index.delete(pod("daemon", ip="192.0.2.11", host_network=True))
    assert not index.is_host_ip("192.0.2.11")
