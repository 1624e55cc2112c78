"""
Split mode's agent: its node as the server streams it, held in memory so that every metadata
request is answered from here, never with an RPC.

The pods go into the agent's own pod index (built by the composition root and handed in, so
lookups, the bounded wait for a pod not known yet, IP reuse and the node's addresses follow
exactly agent mode's rules), with the decisions the server made. The credentials of each
identity are a dict: ``fresh`` is a lookup and one comparison, like the cache's hit path.

While no server is reachable the mirror keeps serving what it holds (credentials stay valid
for their lifetime); a pod it does not know is then refused, after the wait, with
NoServerReachable (503) rather than PodNotFound: it may well exist.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from podiam.credentials import Credentials, Identity
from podiam.errors import CredentialsError, IdentityError, NoServerReachable, PodNotFound, StsUnavailable
from podiam.pods import PodEntry, PodInfo
from podiam.remote import podiam_pb2 as pb
from podiam.remote.wire import identity_from_wire, outcome_from_wire, pod_from_wire
from podiam.waiters import Waiters


class MirroredIndex(Protocol):
    """The agent's PodIndex, as the mirror fills and reads it."""

    def __len__(self) -> int: ...

    def replace(self, pods: Iterable[PodInfo]) -> None: ...

    def upsert(self, pod: PodInfo, *, decide_again: bool = False) -> None: ...

    def delete(self, pod: PodInfo) -> None: ...

    def lookup(self, ip: str) -> PodEntry: ...

    async def wait_for(self, ip: str, timeout: float) -> PodEntry: ...

    def is_host_ip(self, ip: str) -> bool: ...

    @property
    def pod_changes(self) -> int: ...


class Mirror:
    """PodLookup and CredentialSource of the agent's metadata endpoint, fed by ``apply``."""

    def __init__(self, make_index: Callable[[Callable[[PodInfo], Identity]], MirroredIndex], node: str, *,
                 credentials_wait: float = 0.7, expiry_margin: float = 60.0,
                 clock: Callable[[], dt.datetime] | None = None) -> None:
        """
        make_index: builds the pod index, given the function that decides a pod (from the stream).
        credentials_wait: seconds a request waits for the credentials of a pod the server just
            announced (its first STS call may still run), below the SDKs' 1 s timeout.
        expiry_margin: credentials with this little validity left are never served (as the cache).
        """
        self.node = node
        self._index = make_index(self._decision)
        self._decisions: dict[str, Identity | IdentityError] = {}
        self._pods: dict[str, PodInfo] = {}
        self._host_pods: dict[str, PodInfo] = {}
        self._creds: dict[Identity, Credentials] = {}
        self._valid_until: dict[Identity, dt.datetime] = {}
        self._failures: dict[Identity, CredentialsError] = {}
        self.credential_changes = 0
        """Counts every change to the credentials fresh() answers with (CredentialSource)."""
        self._waiters: Waiters[Identity] = Waiters()
        self._margin = dt.timedelta(seconds=expiry_margin)
        self._credentials_wait = credentials_wait
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self.host_identity: Identity | None = None
        self.resume: pb.ResumePoint | None = None
        """The last change applied: what a reconnecting stream asks to resume from."""
        self.connected = False
        self.synced = asyncio.Event()
        """Set by the first snapshot; never cleared (the mirror serves through outages)."""
        self.last_update = 0.0
        """Monotonic seconds of the last message from a server."""

    def __len__(self) -> int:
        return len(self._index)

    # -- PodLookup ------------------------------------------------------------------------------

    def lookup(self, ip: str) -> PodEntry:
        return self._index.lookup(ip)

    def is_host_ip(self, ip: str) -> bool:
        return self._index.is_host_ip(ip)

    @property
    def pod_changes(self) -> int:
        return self._index.pod_changes

    async def wait_for(self, ip: str, timeout: float) -> PodEntry:
        try:
            return await self._index.wait_for(ip, timeout)
        except PodNotFound as e:
            if self.connected:
                raise
            raise NoServerReachable(
                f"no pod with IP {ip} is known to this node's agent and no podiam server is reachable to "
                "learn of it (it keeps trying); retry shortly"
            ) from e

    # -- CredentialSource ---------------------------------------------------------------------

    def fresh(self, identity: Identity) -> Credentials | None:
        creds = self._creds.get(identity)
        if creds is not None and self._clock() < self._valid_until[identity]:
            return creds
        return None

    def replayed(self) -> None:
        """Nothing to count: a split agent has no cache metrics (the server has)."""

    async def get(self, identity: Identity) -> Credentials:
        """The streamed credentials; waits ``credentials_wait`` for ones the server has not sent yet."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._credentials_wait
        while True:
            creds = self.fresh(identity)
            if creds is not None:
                return creds
            failure = self._failures.get(identity)
            if failure is not None:
                raise type(failure)(str(failure))
            try:
                await self._waiters.wait(identity, deadline)
            except TimeoutError:
                where = "from the podiam server" if self.connected else "(no podiam server is reachable)"
                raise StsUnavailable(f"no credentials for role {identity.role_arn} yet {where}") from None

    # -- the stream -------------------------------------------------------------------------------

    def apply(self, update: pb.NodeUpdate) -> None:
        """Apply one message of the stream, in order. A change older than the last one applied
        (already in a snapshot) is skipped."""
        self.last_update = time.monotonic()
        kind = update.WhichOneof("change")
        if kind == "snapshot":
            self._snapshot(update.snapshot)
        elif (self.resume is not None and update.resume.epoch == self.resume.epoch
              and update.resume.sequence <= self.resume.sequence):
            return
        elif kind == "pod":
            pod, decision = pod_from_wire(update.pod, self.node)
            self._decisions[pod.uid] = decision
            self._pods[pod.uid] = pod
            self._index.upsert(pod, decide_again=True)
        elif kind == "pod_removed":
            gone = self._pods.pop(update.pod_removed.uid, None)
            self._decisions.pop(update.pod_removed.uid, None)
            if gone is not None:
                self._index.delete(gone)
        elif kind == "host":
            self._set_host(update.host.ips)
            self._index.replace([*self._pods.values(), *self._host_pods.values()])
        elif kind == "credentials":
            self._set_outcome(update.credentials)
        elif kind == "credentials_dropped":
            identity = identity_from_wire(update.credentials_dropped)
            self._creds.pop(identity, None)
            self._valid_until.pop(identity, None)
            self._failures.pop(identity, None)
        self.credential_changes += 1  # whatever the kind: messages are rare beside requests
        self.resume = update.resume

    def _snapshot(self, snap: pb.Snapshot) -> None:
        self._decisions.clear()
        self._pods.clear()
        for message in snap.pods:
            pod, decision = pod_from_wire(message, self.node)
            self._decisions[pod.uid], self._pods[pod.uid] = decision, pod
        self._set_host(snap.host.ips)
        self.host_identity = identity_from_wire(snap.host_identity) if snap.HasField("host_identity") else None
        # A snapshot from a new server (restarted, or another replica) lacks what it has not fetched
        # yet. Credentials still valid here are the identity's all the same: kept for the identities
        # the snapshot's pods use until the server's own arrive, or requests fail for nothing.
        in_use = {d for d in self._decisions.values() if isinstance(d, Identity)} | {self.host_identity}
        kept = {i: c for i in in_use if i is not None and (c := self.fresh(i)) is not None}
        self._creds.clear()
        self._valid_until.clear()
        self._failures.clear()
        for identity, creds in kept.items():
            self._creds[identity] = creds
            self._valid_until[identity] = creds.expiration - self._margin
        for outcome in snap.credentials:
            self._set_outcome(outcome)
        self._index.replace([*self._pods.values(), *self._host_pods.values()])
        self.synced.set()

    def _set_host(self, ips: Iterable[str]) -> None:
        # As the watch shows them to agent mode's index: hostNetwork pods, whose IPs are the node's.
        self._host_pods = {ip: PodInfo(namespace="", name="hostNetwork", uid=f"host:{ip}", ip=ip, host_network=True)
                           for ip in ips}

    def _set_outcome(self, message: pb.IdentityCredentials) -> None:
        identity, outcome = outcome_from_wire(message)
        if isinstance(outcome, Credentials):
            self._creds[identity] = outcome
            self._valid_until[identity] = outcome.expiration - self._margin
            self._failures.pop(identity, None)
        else:
            self._failures[identity] = outcome
            self._creds.pop(identity, None)
            self._valid_until.pop(identity, None)
        self._waiters.wake(identity)

    def _decision(self, pod: PodInfo) -> Identity:
        """The pod index's ``decide``: what the server decided for ``pod``."""
        decision = self._decisions.get(pod.uid)
        if decision is None:
            raise IdentityError(f"pod {pod.ref} has no decision from the podiam server")
        if isinstance(decision, IdentityError):
            raise type(decision)(str(decision))
        return decision
