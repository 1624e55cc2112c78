"""
Split mode's server view of the cluster's pods: one PodIndex per node (the agent's own index
and its rules: active pods by IP, IP reuse refused as ambiguous, hostNetwork pods as the
node's addresses), fed by one watch of every pod, and decided by the same policy.

Beyond the agent's index it knows pods that are bound to a node but have no IP yet: they
are decided at once and their identity is announced (``BoundListener.pod_bound``), so the
server fetches credentials while the pod's sandbox is still being created, and the agent
of that node has them before the pod's first request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Protocol

from podiam.credentials import Identity
from podiam.errors import IdentityError
from podiam.kube.pod_index import IdentityUses, IndexListener, PodIndex
from podiam.pods import INACTIVE_PHASES, PodInfo


class ClusterListener(IndexListener, Protocol):
    """Told what every node's index tells its listeners, and more."""

    def pod_bound(self, pod: PodInfo, identity: Identity) -> None:
        """A pod bound to a node, without an IP yet, will have ``identity``."""

    def pod_unbound(self, pod: PodInfo, identity: Identity) -> None:
        """A pod announced by ``pod_bound`` got its IP (it is indexed now) or went."""

    def host_addresses(self, node: str, ips: frozenset[str]) -> None:
        """The IPs of ``node``'s hostNetwork pods changed."""


def _waiting_for_ip(pod: PodInfo) -> bool:
    return (pod.node is not None and pod.ip is None and not pod.host_network and not pod.deleting
            and pod.phase not in INACTIVE_PHASES)


class ClusterIndex:
    def __init__(self, decide: Callable[[PodInfo], Identity]) -> None:
        self._decide = decide
        self._nodes: dict[str, PodIndex] = {}
        self._node_of: dict[str, str] = {}
        """pod uid -> the node it is bound to (a pod never moves)."""
        self._bound: dict[str, tuple[PodInfo, Identity]] = {}
        """Pods bound to a node without an IP yet, and the identity they will get."""
        self._bound_uses = IdentityUses()
        """The identities of the bound pods, so identity_in_use is a lookup, not a scan."""
        self._listeners: list[ClusterListener] = []
        self.synced = asyncio.Event()
        """Set once the first full list has been applied."""

    def subscribe(self, listener: ClusterListener) -> None:
        self._listeners.append(listener)
        for index in self._nodes.values():
            index.subscribe(listener)

    def __len__(self) -> int:
        return sum(len(index) for index in self._nodes.values())

    def node(self, name: str) -> PodIndex | None:
        return self._nodes.get(name)

    def nodes(self) -> list[str]:
        return list(self._nodes)

    def identity_in_use(self, identity: Identity) -> bool:
        return identity in self._bound_uses or any(index.identity_in_use(identity) for index in self._nodes.values())

    # -- updates, from the watcher (the pod index's sink interface) --------------------------

    def replace(self, pods: Iterable[PodInfo]) -> None:
        listed: dict[str, list[PodInfo]] = {}
        uids = set()
        for pod in pods:
            uids.add(pod.uid)
            if pod.node is not None:
                listed.setdefault(pod.node, []).append(pod)
        for uid in [uid for uid in self._bound if uid not in uids]:
            self._unbind(uid)
        for name in set(self._nodes) | set(listed):
            self._replace_node(name, listed.get(name, []))
        self._node_of = {pod.uid: name for name, node_pods in listed.items() for pod in node_pods}
        for node_pods in listed.values():
            for pod in node_pods:
                self._note_bound(pod)
        self.synced.set()

    def upsert(self, pod: PodInfo, *, decide_again: bool = False) -> None:
        if pod.node is None:
            return  # not scheduled yet: nobody can ask for it
        self._node_of[pod.uid] = pod.node
        index = self._index(pod.node)
        before = index.host_network_ips
        index.upsert(pod, decide_again=decide_again)
        self._host_changed(pod.node, index, before)
        self._note_bound(pod)

    def delete(self, pod: PodInfo) -> None:
        node = pod.node or self._node_of.get(pod.uid)
        self._node_of.pop(pod.uid, None)
        self._unbind(pod.uid)
        if node is None or (index := self._nodes.get(node)) is None:
            return
        before = index.host_network_ips
        index.delete(pod)
        self._host_changed(node, index, before)

    def decide_again(self, namespace: str) -> None:
        for index in self._nodes.values():
            index.decide_again(namespace)
        for uid, (pod, _) in list(self._bound.items()):
            if pod.namespace == namespace:
                self._unbind(uid)
                self._note_bound(pod)

    # -- internals --------------------------------------------------------------------------

    def _index(self, node: str) -> PodIndex:
        index = self._nodes.get(node)
        if index is None:
            index = self._nodes[node] = PodIndex(self._decide)
            for listener in self._listeners:
                index.subscribe(listener)
        return index

    def _replace_node(self, node: str, pods: list[PodInfo]) -> None:
        index = self._index(node)
        before = index.host_network_ips
        index.replace(pods)
        self._host_changed(node, index, before)

    def _host_changed(self, node: str, index: PodIndex, before: frozenset[str]) -> None:
        after = index.host_network_ips
        if after != before:
            for listener in self._listeners:
                listener.host_addresses(node, after)

    def _note_bound(self, pod: PodInfo) -> None:
        """Announce (or retract) a pod that is bound but has no IP yet."""
        if not _waiting_for_ip(pod):
            self._unbind(pod.uid)
            return
        if pod.uid in self._bound:
            if self._bound[pod.uid][0] == pod:
                return
            self._unbind(pod.uid)
        try:
            identity = self._decide(pod)
        except IdentityError:
            return  # refused: told when it is indexed, with its IP
        self._bound[pod.uid] = (pod, identity)
        self._bound_uses.add(identity)
        for listener in self._listeners:
            listener.pod_bound(pod, identity)

    def _unbind(self, uid: str) -> None:
        gone = self._bound.pop(uid, None)
        if gone is not None:
            self._bound_uses.remove(gone[1])
            for listener in self._listeners:
                listener.pod_unbound(*gone)
