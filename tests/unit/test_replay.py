"""
A repeat of the same request bytes on a connection is answered from the last reply (core's
Replay) only while that is exactly what the whole path would answer: checked against a
second core that sees the same pods, credentials, tokens and clock but never replays, through
any sequence of requests, pod changes, credential changes and time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pod_doubles import CredentialDouble, RecordingTransport
from podiam.credentials import Credentials, Identity
from podiam.imds.core import ImdsDeps, MetadataCore, Reply, Request
from podiam.imds.fast_server import FastServer, MetadataProtocol
from podiam.imds.rate_limit import RateLimiter
from podiam.imds.tokens import TokenIssuer
from podiam.kube.pod_index import PodIndex
from podiam.observability.audit import IssuanceLog
from podiam.observability.metrics import Metrics
from podiam.pods import PodInfo
from podiam.policy import RolePolicy
from podiam.settings import ImdsSettings, RoleSettings

IP = "10.0.0.5"
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
ROLE_ANNOTATION = "iam.amazonaws.com/role"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Source(CredentialDouble):
    """Credentials that the test renews (a refresh) or lets go stale (fresh() says None)."""

    def __init__(self) -> None:
        self.serial = 0
        self.stale = False
        self.creds = self._make()
        self.fresh_calls = 0

    def _make(self) -> Credentials:
        return Credentials(f"ASIAREPLAY{self.serial}", "secret", "token", NOW + dt.timedelta(hours=1), NOW)

    def renew(self) -> None:
        self.serial += 1
        self.creds = self._make()
        self.credential_changes += 1

    def fresh(self, identity: Identity) -> Credentials | None:
        self.fresh_calls += 1
        return None if self.stale else self.creds

    async def get(self, identity: Identity) -> Credentials:
        return self.creds


def pod(uid: str = "u1", role: str = "r") -> PodInfo:
    return PodInfo("ns", "web", uid, IP, "Running", annotations={ROLE_ANNOTATION: role})


def request(token: str, role: str = "r") -> bytes:
    return (f"GET /latest/meta-data/iam/security-credentials/{role} HTTP/1.1\r\nHost: 169.254.169.254\r\n"
            f"X-aws-ec2-metadata-token: {token}\r\n\r\n").encode()


class Node:
    """One connection of the real protocol, and an oracle core on the same state that never replays."""

    def __init__(self, *, rate: float = 0.0, window: float = 1.0) -> None:
        self.clock = Clock()
        self.index = PodIndex(RolePolicy.from_settings(RoleSettings(), "arn:aws:iam::123456789012:role/").identity)
        self.index.replace([pod()])
        self.source = Source()
        self.tokens = TokenIssuer(clock=self.clock)
        self.metrics = Metrics()
        deps = ImdsDeps(pods=self.index, credentials=self.source, tokens=self.tokens, issuance=IssuanceLog("n"),
                        metrics=self.metrics, settings=ImdsSettings(pod_wait=0.0, replay_window=window),
                        upstream=None, ready=lambda: True, limiter=RateLimiter(rate, clock=self.clock),
                        clock=self.clock)
        self.core = MetadataCore(deps)
        self.oracle = MetadataCore(dataclasses.replace(deps, metrics=Metrics(), limiter=RateLimiter(0)))
        self.server = FastServer(self.core, "127.0.0.1", 0, 1.0)
        self.protocol = MetadataProtocol(self.core, self.server)
        self.transport = RecordingTransport(IP)
        self.protocol.connection_made(self.transport)  # type: ignore[arg-type]

    async def send(self, data: bytes) -> bytes:
        """The reply to ``data``, one request, as the protocol wrote it."""
        start = len(self.transport.out)
        self.protocol.data_received(data)
        # A reply that waited (stale credentials, a pod gone) is a task with nothing to wait on
        # but the loop: a few turns of it, never a timer.
        for _ in range(100):
            if len(self.transport.out) > start:
                return bytes(self.transport.out[start:])
            await asyncio.sleep(0)
        raise AssertionError(f"no reply to {data[:60]!r} after 100 turns of the loop")

    async def expected(self, data: bytes) -> bytes:
        """What the whole path answers ``data`` now."""
        head, _, _ = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ")
        headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
        answer = self.oracle.answer(Request(method, target, headers, IP))
        reply = answer if isinstance(answer, Reply) else await answer
        return reply.wire

    def requests_counted(self) -> float:
        """Credential requests the endpoint's histogram counted, whatever their status."""
        return sum(sample.value for family in self.metrics.registry.collect() for sample in family.samples
                   if sample.name == "podiam_imds_request_duration_seconds_count"
                   and sample.labels["route"] == "credentials")


operations = st.lists(st.one_of(
    st.just(("send",)),
    st.just(("send",)),
    st.just(("send",)),
    st.just(("send_in_two",)),
    st.tuples(st.just("advance"), st.sampled_from([0.2, 0.9, 1.0, 3.0])),
    st.tuples(st.just("annotate"), st.sampled_from(["r", "s"])),
    st.just(("delete",)),
    st.just(("same_ip_new_pod",)),
    st.just(("renew",)),
    st.tuples(st.just("stale"), st.booleans()),
    st.just(("new_token",)),
), max_size=25)


@settings(max_examples=150, deadline=None)
@given(operations)
def test_a_replay_answers_exactly_what_the_whole_path_answers(ops: list[tuple[Any, ...]]) -> None:
    async def run() -> None:
        node = Node(window=2.5)  # longer than some steps: the token's expiry must end replays too
        token = node.tokens.issue(IP, 4)  # expires within the operations' time steps
        sent = 0
        for op in [("send",), *ops, ("send",)]:
            if op[0] in ("send", "send_in_two"):
                data = request(token)
                expected = await node.expected(data)
                if op[0] == "send":
                    got = await node.send(data)
                else:  # the same bytes in two chunks: no chunk is a whole request
                    node.protocol.data_received(data[:20])
                    got = await node.send(data[20:])
                sent += 1
                assert got == expected, op
            elif op[0] == "advance":
                node.clock.now += op[1]
            elif op[0] == "annotate":
                node.index.upsert(pod(role=op[1]))
            elif op[0] == "delete":
                node.index.delete(pod())
            elif op[0] == "same_ip_new_pod":
                node.index.delete(pod())
                node.index.upsert(pod(uid="u2", role="s"))
            elif op[0] == "renew":
                node.source.renew()
            elif op[0] == "stale":
                node.source.stale = op[1]
            elif op[0] == "new_token":
                token = node.tokens.issue(IP, 4)
        assert node.requests_counted() == sent
        await node.server.close()

    asyncio.run(run())


def test_repeats_are_replayed_and_counted_as_the_requests_and_cache_hits_they_are() -> None:
    async def run() -> None:
        node = Node()
        data = request(node.tokens.issue(IP, 600))
        replies = [await node.send(data) for _ in range(50)]
        assert len(set(replies)) == 1 and replies[0].startswith(b"HTTP/1.1 200 OK")
        # The whole path asked fresh() once; the 49 repeats were replays, each counted as a hit.
        assert (node.source.fresh_calls, node.source.replays) == (1, 49)
        assert node.requests_counted() == 50
        await node.server.close()

    asyncio.run(run())


def test_replays_end_with_the_window_and_are_decided_again() -> None:
    async def run() -> None:
        node = Node(window=1.0)
        data = request(node.tokens.issue(IP, 600))
        await node.send(data)
        await node.send(data)
        node.clock.now += 1.0
        await node.send(data)
        await node.send(data)
        assert (node.source.fresh_calls, node.source.replays) == (2, 2)
        await node.server.close()

    asyncio.run(run())


def test_every_replay_takes_from_the_pods_rate_limit() -> None:
    async def run() -> None:
        node = Node(rate=5.0)  # a burst of 10
        data = request(node.tokens.issue(IP, 600))
        statuses = [int((await node.send(data))[9:12]) for _ in range(14)]
        assert statuses == [200] * 10 + [429] * 4
        node.clock.now += 0.25  # one token back (and a quarter)
        assert [int((await node.send(data))[9:12]) for _ in range(2)] == [200, 429]
        await node.server.close()

    asyncio.run(run())


def test_two_requests_in_one_chunk_are_both_answered_and_never_replayed_as_one() -> None:
    async def run() -> None:
        node = Node()
        data = request(node.tokens.issue(IP, 600))
        first = await node.send(data)
        assert await node.send(data + data) == first + first
        assert (node.source.fresh_calls, node.source.replays) == (3, 0)
        assert await node.send(data) == first  # decided again: no ticket came of the pair
        assert (node.source.fresh_calls, node.source.replays) == (4, 0)
        await node.server.close()

    asyncio.run(run())


def test_replays_end_when_the_requests_token_expires_even_within_the_window() -> None:
    async def run() -> None:
        node = Node(window=60.0)
        data = request(node.tokens.issue(IP, 2))
        assert (await node.send(data)).startswith(b"HTTP/1.1 200 OK")
        node.clock.now += 1.5
        assert (await node.send(data)).startswith(b"HTTP/1.1 200 OK")  # a replay: the token has 0.5 s left
        node.clock.now += 0.5
        assert (await node.send(data)).startswith(b"HTTP/1.1 401 ")
        assert node.source.replays == 1
        await node.server.close()

    asyncio.run(run())


def test_a_repeat_during_the_stop_is_answered_and_counted_once() -> None:
    async def run() -> None:
        node = Node()
        data = request(node.tokens.issue(IP, 600))
        await node.send(data)
        node.server.closing = True  # what FastServer.close() sets first: replies carry Connection: close
        assert b"Connection: close" in await node.send(data)
        assert node.requests_counted() == 2
        assert (node.source.fresh_calls, node.source.replays) == (2, 0)
        await node.server.close()

    asyncio.run(run())
