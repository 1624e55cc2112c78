"""
What split mode's server streams to each node's agent: per node, its current state (pods and
their decisions, hostNetwork addresses, the outcome for each identity in use) and a bounded
log of the changes, each numbered; and per connected agent, a bounded queue.

Resume: an agent reconnecting with (epoch, sequence) gets the changes after ``sequence``
from the log when the epoch is this server's and the log still reaches back that far;
otherwise a fresh snapshot. A slow agent whose queue fills gets a fresh snapshot instead of
the queued changes, so no agent can make the server hold unbounded memory.

The feed is told by the server's composition root: pods indexed or gone (the ClusterIndex's
listener interface), hostNetwork addresses, and every credential outcome of the cache.
Credentials are secret: neither a message nor the state is ever logged.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from podiam.credentials import Credentials, Identity
from podiam.errors import CredentialsError
from podiam.pods import PodEntry, PodInfo
from podiam.remote import podiam_pb2 as pb
from podiam.remote.wire import entry_to_wire, identity_to_wire, outcome_to_wire

Outcome = Credentials | CredentialsError


@dataclass(frozen=True)
class FeedLimits:
    change_log: int = 2000
    """Changes kept per node for resuming agents; older ones mean a snapshot."""
    send_queue: int = 2000
    """Changes queued for one agent; past it, the queue is dropped for a snapshot."""
    expiry_margin: float = 60.0
    """Seconds: credentials with this little left are not kept over a newer failure."""


class Subscription:
    """One connected agent's queue. Iterate ``updates()`` to stream it."""

    def __init__(self, node: NodeFeed, limit: int) -> None:
        self._node, self._limit = node, limit
        self._pending: collections.deque[pb.NodeUpdate] = collections.deque()
        self._wake = asyncio.Event()
        self.resync = False
        self.snapshots = 0
        """Snapshots sent to this agent (the first one included)."""

    def push(self, update: pb.NodeUpdate) -> None:
        if self.resync:
            return  # the snapshot to come holds it
        if len(self._pending) >= self._limit:
            self._pending.clear()
            self.resync = True
        else:
            self._pending.append(update)
        self._wake.set()

    def start(self, resume: pb.ResumePoint | None) -> None:
        """Queue what a new stream starts with: the changes since ``resume``, or a snapshot."""
        missed = self._node.since(resume)
        if missed is None:
            self.resync = True
        else:
            self._pending.extend(missed)
        self._wake.set()

    async def updates(self) -> AsyncIterator[pb.NodeUpdate]:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self.resync:
                self.resync = False
                self._pending.clear()
                self.snapshots += 1
                yield self._node.snapshot()
            while self._pending and not self.resync:
                yield self._pending.popleft()


class NodeFeed:
    def __init__(self, name: str, epoch: str, limits: FeedLimits, outcomes: dict[Identity, Outcome],
                 host_identity: Identity | None) -> None:
        self.name = name
        self._epoch, self._limits, self._outcomes = epoch, limits, outcomes
        self.host_identity = host_identity
        self.sequence = 0
        self._log: collections.deque[pb.NodeUpdate] = collections.deque(maxlen=limits.change_log)
        self.pods: dict[str, PodEntry] = {}
        self.host: frozenset[str] = frozenset()
        self.users: collections.Counter[Identity] = collections.Counter()
        """Identity -> pods of this node using it (the host identity counts once, always)."""
        if host_identity is not None:
            self.users[host_identity] += 1
        self.subscribers: set[Subscription] = set()

    def subscribe(self, limit: int) -> Subscription:
        sub = Subscription(self, limit)
        self.subscribers.add(sub)
        return sub

    def since(self, resume: pb.ResumePoint | None) -> list[pb.NodeUpdate] | None:
        """The changes after ``resume``, or None when only a snapshot will do."""
        if resume is None or resume.epoch != self._epoch or resume.sequence > self.sequence:
            return None
        if resume.sequence == self.sequence:
            return []
        if not self._log or self._log[0].resume.sequence > resume.sequence + 1:
            return None  # the log no longer reaches back that far
        return [u for u in self._log if u.resume.sequence > resume.sequence]

    def snapshot(self) -> pb.NodeUpdate:
        snap = pb.Snapshot(pods=[entry_to_wire(e) for e in self.pods.values()],
                           host=pb.HostAddresses(ips=sorted(self.host)),
                           credentials=[outcome_to_wire(i, o) for i in self.users
                                        if (o := self._outcomes.get(i)) is not None])
        if self.host_identity is not None:
            snap.host_identity.CopyFrom(identity_to_wire(self.host_identity))
        return pb.NodeUpdate(resume=self.resume_point(), snapshot=snap)

    def resume_point(self) -> pb.ResumePoint:
        return pb.ResumePoint(epoch=self._epoch, sequence=self.sequence)

    def record(self, update: pb.NodeUpdate) -> None:
        """Number a change, log it and queue it for every connected agent."""
        self.sequence += 1
        update.resume.CopyFrom(self.resume_point())
        self._log.append(update)
        for sub in self.subscribers:
            sub.push(update)


class ClusterFeed:
    """Every node's feed. The ClusterIndex listener of the server, and the cache's subscriber."""

    def __init__(self, limits: FeedLimits, host_identity: Callable[[str], Identity | None],
                 prefetch: Callable[[Identity], None], clock: Callable[[], dt.datetime] | None = None) -> None:
        self.epoch = secrets.token_hex(8)
        self._limits = limits
        self._host_identity, self._prefetch = host_identity, prefetch
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self._nodes: dict[str, NodeFeed] = {}
        self._outcomes: dict[Identity, Outcome] = {}
        """The latest outcome of every identity in use anywhere: what snapshots carry."""

    def node(self, name: str) -> NodeFeed:
        feed = self._nodes.get(name)
        if feed is None:
            host = self._host_identity(name)
            feed = self._nodes[name] = NodeFeed(name, self.epoch, self._limits, self._outcomes, host)
            if host is not None:
                self._prefetch(host)
        return feed

    def subscribe(self, node: str, resume: pb.ResumePoint | None) -> Subscription:
        sub = self.node(node).subscribe(self._limits.send_queue)
        sub.start(resume)
        return sub

    def unsubscribe(self, node: str, sub: Subscription) -> None:
        self.node(node).subscribers.discard(sub)

    # -- ClusterListener ----------------------------------------------------------------------

    def pod_active(self, entry: PodEntry) -> None:
        assert entry.pod.node is not None
        feed = self.node(entry.pod.node)
        old = feed.pods.get(entry.pod.uid)
        feed.pods[entry.pod.uid] = entry
        feed.record(pb.NodeUpdate(pod=entry_to_wire(entry)))
        if entry.identity is not None:  # before the old one goes: the same identity is never dropped
            self._start_using(feed, entry.identity)
        if old is not None:
            self._stop_using(feed, old.identity)

    def pod_gone(self, entry: PodEntry) -> None:
        assert entry.pod.node is not None
        feed = self.node(entry.pod.node)
        old = feed.pods.pop(entry.pod.uid, None)
        if old is None:
            return
        feed.record(pb.NodeUpdate(pod_removed=pb.PodRemoved(uid=entry.pod.uid)))
        self._stop_using(feed, old.identity)

    def pod_bound(self, pod: PodInfo, identity: Identity) -> None:
        pass  # prefetched by the composition root; the agent hears of the pod with its IP

    def pod_unbound(self, pod: PodInfo, identity: Identity) -> None:
        pass

    def host_addresses(self, node: str, ips: frozenset[str]) -> None:
        feed = self.node(node)
        feed.host = ips
        feed.record(pb.NodeUpdate(host=pb.HostAddresses(ips=sorted(ips))))

    # -- the cache's outcomes -----------------------------------------------------------------

    def outcome(self, identity: Identity, outcome: Outcome) -> None:
        """An STS call for ``identity`` ended: tell every node that uses it."""
        old = self._outcomes.get(identity)
        if (isinstance(outcome, CredentialsError) and isinstance(old, Credentials)
                and old.remaining(self._clock()) > self._limits.expiry_margin):
            return  # still-valid credentials are served through a failed refresh, as the cache does
        self._outcomes[identity] = outcome
        message = outcome_to_wire(identity, outcome)
        for feed in self._nodes.values():
            if feed.users[identity] > 0:
                feed.record(pb.NodeUpdate(credentials=message))

    # -- internals -----------------------------------------------------------------------------

    def _start_using(self, feed: NodeFeed, identity: Identity) -> None:
        feed.users[identity] += 1
        if feed.users[identity] == 1 and (outcome := self._outcomes.get(identity)) is not None:
            feed.record(pb.NodeUpdate(credentials=outcome_to_wire(identity, outcome)))

    def _stop_using(self, feed: NodeFeed, identity: Identity | None) -> None:
        if identity is None:
            return
        feed.users[identity] -= 1
        if feed.users[identity] > 0:
            return
        del feed.users[identity]
        feed.record(pb.NodeUpdate(credentials_dropped=identity_to_wire(identity)))
        if not any(f.users[identity] > 0 for f in self._nodes.values()):
            self._outcomes.pop(identity, None)
