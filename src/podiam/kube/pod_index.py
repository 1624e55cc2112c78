"""
The pod index: this node's active pods by IP, each with the identity policy gave it.

It follows watch events exactly, so an IP belongs to whichever active pod has it now:
when pod A dies and pod B gets its IP, A's entry is gone before B's arrives, or both are
present for a moment and the IP is refused as ambiguous — never answered with A's role.
Policy runs when a pod changes, not per request: a lookup is two dict reads.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from collections.abc import Callable, Iterable
from typing import Protocol

from podiam.credentials import Identity
from podiam.errors import IdentityError, PodAmbiguous, PodNotFound
from podiam.pods import PodEntry, PodInfo
from podiam.waiters import Waiters


class IndexListener(Protocol):
    """Told when an entry appears or changes, and when it goes (e.g. to prefetch and forget)."""

    def pod_active(self, entry: PodEntry) -> None: ...

    def pod_gone(self, entry: PodEntry) -> None: ...


class PodIndex:
    def __init__(self, decide: Callable[[PodInfo], Identity], host_ips: Iterable[str] = (), *,
                 host_identity: Identity | None = None) -> None:
        """host_identity: what the node's own network gets (--host-network-role); None refuses it."""
        self._decide = decide
        self.host_identity = host_identity
        self._by_uid: dict[str, PodEntry] = {}
        self._by_ip: dict[str, dict[str, PodEntry]] = {}
        self._uses = IdentityUses()
        """The identities of the active pods: identity_in_use is asked at every pod that goes, and
        the server's cluster index asks it of every node (a scan made each change O(pods))."""
        self._static_host_ips = frozenset(host_ips)
        self._host_network: dict[str, str] = {}
        """hostNetwork pod uid -> its IP, which is one of the node's own addresses."""
        self._host_ips = self._static_host_ips
        """All of them, as one set: the request path checks every caller against it."""
        self._waiters: Waiters[str] = Waiters()
        self._listeners: list[IndexListener] = []
        self.synced = asyncio.Event()
        """Set once the first full list has been applied; cleared never (re-lists replace in place)."""
        self.pod_changes = 0
        """Counts every change that may change what lookup() or is_host_ip() answers: the metadata
        endpoint replays an answer only while it has not moved (imds/core.py's Replay)."""

    def subscribe(self, listener: IndexListener) -> None:
        self._listeners.append(listener)

    def __len__(self) -> int:
        return len(self._by_uid)

    def entries(self) -> list[PodEntry]:
        return list(self._by_uid.values())

    def identity_in_use(self, identity: Identity) -> bool:
        """Whether any active pod still uses ``identity`` (so its credentials stay cached)."""
        return identity in self._uses

    # -- updates, from the watcher ---------------------------------------------------------

    def replace(self, pods: Iterable[PodInfo]) -> None:
        """Make the index exactly ``pods`` (after a full list): entries not listed are gone."""
        listed = {pod.uid: pod for pod in pods}
        self._host_network = {uid: ip for uid, ip in self._host_network.items() if uid in listed}
        self._host_ips = self._static_host_ips | frozenset(self._host_network.values())
        self.pod_changes += 1
        for uid in [uid for uid in self._by_uid if uid not in listed]:
            self._drop(uid)
        for pod in listed.values():
            self.upsert(pod)
        self.synced.set()

    def upsert(self, pod: PodInfo, *, decide_again: bool = False) -> None:
        """Apply an ADDED or MODIFIED pod: index it if active, drop it if not."""
        self._note_host_network(pod)
        if not pod.active:
            self._drop(pod.uid)
            return
        old = self._by_uid.get(pod.uid)
        if old is not None and old.pod == pod and not decide_again:
            return  # status-only churn (conditions, container states) changes nothing here
        entry = self._decide_entry(pod)
        if old is not None:
            if old.pod == pod and old.same_decision(entry):
                return  # decided again, same answer
            self._drop(pod.uid, replaced_by=entry)
        self.pod_changes += 1
        self._by_uid[pod.uid] = entry
        if entry.identity is not None:
            self._uses.add(entry.identity)
        assert pod.ip is not None  # active pods have an IP
        self._by_ip.setdefault(pod.ip, {})[pod.uid] = entry
        self._waiters.wake(pod.ip)
        if old is None or not old.same_decision(entry):
            for listener in self._listeners:
                listener.pod_active(entry)

    def delete(self, pod: PodInfo) -> None:
        """Apply a DELETED pod."""
        self._note_host_network(dataclasses.replace(pod, host_network=False))
        self._drop(pod.uid)

    def decide_again(self, namespace: str) -> None:
        """Re-run policy for the pods of ``namespace`` (its restrictions changed)."""
        for entry in [e for e in self._by_uid.values() if e.pod.namespace == namespace]:
            self.upsert(entry.pod, decide_again=True)

    @property
    def host_network_ips(self) -> frozenset[str]:
        """The IPs of this node's hostNetwork pods (the node's own addresses besides --host-ip)."""
        return frozenset(self._host_network.values())

    def is_host_ip(self, ip: str) -> bool:
        """Whether ``ip`` is the node's own: configured, loopback, or a hostNetwork pod's IP."""
        # Pod traffic arrives through DNAT with the pod's address; loopback is only ever the node.
        return ip in self._host_ips or ip.startswith("127.") or ip == "::1"

    def _note_host_network(self, pod: PodInfo) -> None:
        before = self._host_network.get(pod.uid)
        if pod.host_network and pod.ip and not pod.deleting:
            self._host_network[pod.uid] = pod.ip
        else:
            self._host_network.pop(pod.uid, None)
        if self._host_network.get(pod.uid) != before:
            self._host_ips = self._static_host_ips | frozenset(self._host_network.values())
            self.pod_changes += 1

    # -- lookups, from the metadata endpoint ---------------------------------------------

    def by_uid(self, uid: str) -> PodEntry | None:
        """The active pod with ``uid``, if this index holds it."""
        return self._by_uid.get(uid)

    def lookup(self, ip: str) -> PodEntry:
        """The one active pod with ``ip``; PodNotFound or PodAmbiguous otherwise."""
        by_uid = self._by_ip.get(ip)
        if not by_uid:
            raise PodNotFound(f"no pod with IP {ip} is running on this node")
        if len(by_uid) > 1:
            refs = ", ".join(sorted(e.pod.ref for e in by_uid.values()))
            raise PodAmbiguous(f"IP {ip} belongs to more than one running pod ({refs}); refusing to guess")
        return next(iter(by_uid.values()))

    async def wait_for(self, ip: str, timeout: float) -> PodEntry:
        """Like lookup, but give the watch up to ``timeout`` seconds to learn a new pod.

        Pods can ask before the event that announces them arrives (Jobs, fast starts).
        """
        try:
            return self.lookup(ip)
        except PodNotFound:
            if timeout <= 0:
                raise
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                await self._waiters.wait(ip, deadline)
            except TimeoutError:
                raise PodNotFound(
                    f"no pod with IP {ip} is running on this node (waited {timeout:g}s for the pod watch)"
                ) from None
            try:
                return self.lookup(ip)
            except PodNotFound:
                continue  # woken, but the pod went again in the meantime

    # -- internals ------------------------------------------------------------------------

    def _decide_entry(self, pod: PodInfo) -> PodEntry:
        try:
            return PodEntry(pod, self._decide(pod), None)
        except IdentityError as e:
            return PodEntry(pod, None, e)

    def _drop(self, uid: str, replaced_by: PodEntry | None = None) -> None:
        entry = self._by_uid.pop(uid, None)
        if entry is None:
            return
        self.pod_changes += 1
        if entry.identity is not None:
            self._uses.remove(entry.identity)
        assert entry.pod.ip is not None
        same_ip = self._by_ip.get(entry.pod.ip)
        if same_ip is not None:
            same_ip.pop(uid, None)
            if not same_ip:
                del self._by_ip[entry.pod.ip]
        if replaced_by is None or replaced_by.identity != entry.identity:
            for listener in self._listeners:
                listener.pod_gone(entry)


class IdentityUses:
    """How many pods use each identity; only identities in use are held."""

    def __init__(self) -> None:
        self._count: collections.Counter[Identity] = collections.Counter()

    def __contains__(self, identity: Identity) -> bool:
        return identity in self._count

    def add(self, identity: Identity) -> None:
        self._count[identity] += 1

    def remove(self, identity: Identity) -> None:
        self._count[identity] -= 1
        if self._count[identity] <= 0:
            del self._count[identity]
