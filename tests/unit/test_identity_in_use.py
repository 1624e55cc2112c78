"""identity_in_use, kept as counts by the pod index and the server's cluster index, answers what
a scan of their pods would, after any sequence of changes, and inside the listeners' calls."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from podiam.credentials import Identity
from podiam.errors import IdentityError
from podiam.kube.cluster_index import ClusterIndex
from podiam.kube.pod_index import PodIndex
from podiam.pods import INACTIVE_PHASES, PodEntry, PodInfo
from podiam.policy import RolePolicy
from podiam.settings import RoleSettings

POLICY = RolePolicy.from_settings(RoleSettings(), "arn:aws:iam::123456789012:role/")
ROLES = ["r1", "r2", None, "not a role!"]

NODE_OF = {"a": "n1", "b": "n1", "c": "n2", "d": "n2"}
"""A pod never moves: its node is fixed by its name."""
pods = st.builds(
    lambda name, ip, role, phase, deleting: PodInfo(
        "ns", name, f"uid-{name}", ip, phase, annotations={"iam.amazonaws.com/role": role} if role else {},
        node=NODE_OF[name], deleting=deleting),
    name=st.sampled_from("abcd"), ip=st.sampled_from([None, "10.0.0.5", "10.0.0.6"]), role=st.sampled_from(ROLES),
    phase=st.sampled_from(["Running", "Pending", "Succeeded"]), deleting=st.booleans(),
)
changes = st.lists(st.tuples(st.sampled_from(["upsert", "delete", "relist"]), pods), max_size=30)
IDENTITIES = [POLICY.identity(PodInfo("ns", n, f"uid-{n}", None, "Running", annotations={
    "iam.amazonaws.com/role": r})) for n in "abcd" for r in ("r1", "r2")]


def decided(pod: PodInfo) -> Identity | None:
    try:
        return POLICY.identity(pod)
    except IdentityError:
        return None


def served_or_waiting(pod: PodInfo) -> bool:
    """What the cluster index holds a pod for: active (indexed) or bound and waiting for its IP."""
    waiting = pod.ip is None and not pod.host_network and not pod.deleting and pod.phase not in INACTIVE_PHASES
    return pod.active or waiting


def apply(index: PodIndex | ClusterIndex, op: str, pod: PodInfo, latest: dict[str, PodInfo]) -> None:
    """One change to ``index``, and to ``latest`` (uid -> the pod as last told) as the model of it."""
    if op == "upsert":
        index.upsert(pod)
        latest[pod.uid] = pod
    elif op == "delete":
        index.delete(pod)
        latest.pop(pod.uid, None)
    else:
        index.replace(latest.values())


class Checker:
    """A listener that asks identity_in_use whenever it is told something, and compares with a scan."""

    def __init__(self, index: PodIndex) -> None:
        self.index, self.checked = index, 0

    def _check(self, identity: Identity | None) -> None:
        if identity is not None:
            assert self.index.identity_in_use(identity) == any(e.identity == identity for e in self.index.entries())
            self.checked += 1

    def pod_active(self, entry: PodEntry) -> None:
        self._check(entry.identity)

    def pod_gone(self, entry: PodEntry) -> None:
        self._check(entry.identity)


@given(changes)
@settings(max_examples=300)
def test_the_pod_index_counts_what_a_scan_finds(steps: list[tuple[str, PodInfo]]) -> None:
    index = PodIndex(POLICY.identity)
    checker = Checker(index)
    index.subscribe(checker)
    latest: dict[str, PodInfo] = {}
    for op, pod in steps:
        apply(index, op, pod, latest)
        for identity in IDENTITIES:
            assert index.identity_in_use(identity) == any(e.identity == identity for e in index.entries())


@given(changes)
@settings(max_examples=300)
def test_the_cluster_index_counts_indexed_and_bound_pods(steps: list[tuple[str, PodInfo]]) -> None:
    index = ClusterIndex(POLICY.identity)
    latest: dict[str, PodInfo] = {}
    for op, pod in steps:
        apply(index, op, pod, latest)
        for identity in IDENTITIES:
            expected = any(served_or_waiting(p) and decided(p) == identity for p in latest.values())
            assert index.identity_in_use(identity) == expected, (identity, list(latest.values()))
