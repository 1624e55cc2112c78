"""The endpoint core's contract: cache hits are answered synchronously, waits are coroutines,
every request is measured exactly once, and replies render to IMDS's wire format."""

from __future__ import annotations

import asyncio
import datetime as dt

from pod_doubles import CredentialDouble
from podiam.credentials import Credentials, Identity
from podiam.imds.core import ImdsDeps, MetadataCore, Reply, Request
from podiam.imds.rate_limit import RateLimiter
from podiam.imds.tokens import TokenIssuer
from podiam.imds.upstream import UpstreamResponse
from podiam.kube.pod_index import PodIndex
from podiam.observability.audit import IssuanceLog
from podiam.observability.metrics import Metrics
from podiam.pods import PodInfo
from podiam.policy import RolePolicy
from podiam.settings import ImdsSettings, RoleSettings

BASE = "arn:aws:iam::123456789012:role/"
NOW = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
CREDS = Credentials("ASIAEXAMPLE", "wJalrXUtnFEMI-SECRET-KEY", "FwoGZXIvYXdz-SESSION-TOKEN",
                    NOW + dt.timedelta(hours=1), NOW)


class Source(CredentialDouble):
    """podiam's CredentialSource interface in memory: fresh credentials for 'reader' only."""

    def __init__(self) -> None:
        self.waited: list[Identity] = []

    def fresh(self, identity: Identity) -> Credentials | None:
        return CREDS if identity.role_name == "reader" else None

    async def get(self, identity: Identity) -> Credentials:
        self.waited.append(identity)
        return CREDS


def core(metrics: Metrics, source: Source, limiter: RateLimiter | None = None) -> MetadataCore:
    index = PodIndex(RolePolicy.from_settings(RoleSettings(), BASE).identity)
    index.replace([PodInfo("ns", "web", "u1", "10.0.0.5", "Running", annotations={"iam.amazonaws.com/role": "reader"}),
                   PodInfo("ns", "job", "u2", "10.0.0.6", "Running", annotations={"iam.amazonaws.com/role": "writer"})])
    deps = ImdsDeps(pods=index, credentials=source, tokens=TokenIssuer(), issuance=IssuanceLog("n1"),
                    metrics=metrics, settings=ImdsSettings(pod_wait=0.01), upstream=None, ready=lambda: True,
                    limiter=limiter if limiter is not None else RateLimiter(0))
    return MetadataCore(deps)


def req(path: str, ip: str = "10.0.0.5") -> Request:
    return Request("GET", path, {}, ip)


def count(metrics: Metrics, status: str) -> float:
    """Credential requests measured with ``status``."""
    value = metrics.registry.get_sample_value("podiam_imds_request_duration_seconds_count",
                                              {"route": "credentials", "status": status})
    return value or 0.0


def test_a_cache_hit_is_answered_synchronously_with_pre_rendered_bytes() -> None:
    metrics, source = Metrics(), Source()
    c = core(metrics, source)
    first = c.answer(req("/latest/meta-data/iam/security-credentials/reader"))
    second = c.answer(req("/latest/meta-data/iam/security-credentials/reader"))
    assert isinstance(first, Reply)
    assert second is first  # rendered once per set of credentials
    assert first.wire.startswith(b"HTTP/1.1 200 OK\r\nServer: EC2ws\r\nContent-Type: text/plain\r\n")
    assert first.wire.endswith(b"\r\n\r\n" + CREDS.imds_json)
    assert f"Content-Length: {len(CREDS.imds_json)}".encode() in first.head
    assert count(metrics, "200") == 2
    assert source.waited == []


async def test_credentials_that_are_not_fresh_are_waited_for_and_measured_once() -> None:
    metrics, source = Metrics(), Source()
    answer = core(metrics, source).answer(req("/latest/meta-data/iam/security-credentials/writer", "10.0.0.6"))
    assert not isinstance(answer, Reply)
    assert count(metrics, "200") == 0
    reply = await answer
    assert reply.status == 200
    assert count(metrics, "200") == 1
    assert [i.role_name for i in source.waited] == ["writer"]


async def test_an_unknown_ip_is_waited_for_then_refused() -> None:
    metrics = Metrics()
    answer = core(metrics, Source()).answer(req("/latest/meta-data/iam/security-credentials/", "10.0.0.9"))
    assert asyncio.iscoroutine(answer)
    reply = await answer
    assert reply.status == 404
    assert b"10.0.0.9" in reply.body


def test_refusals_decided_from_memory_are_synchronous() -> None:
    c = core(Metrics(), Source())
    mismatch = c.answer(req("/latest/meta-data/iam/security-credentials/admin"))
    assert isinstance(mismatch, Reply)
    assert mismatch.status == 403
    token = c.answer(Request("PUT", "/latest/api/token", {"x-forwarded-for": "1.2.3.4",
                                                          "x-aws-ec2-metadata-token-ttl-seconds": "5"}, "10.0.0.5"))
    assert isinstance(token, Reply)
    assert token.status == 403


def test_extra_headers_are_rendered() -> None:
    reply = Reply(429, b"slow down\n", extra_headers=(("Retry-After", "1"),))
    assert reply.head.startswith(b"HTTP/1.1 429 Too Many Requests\r\n")
    assert b"Retry-After: 1\r\n" in reply.head


def test_health_paths_are_on_the_pods_request_budget() -> None:
    now = [0.0]
    c = core(Metrics(), Source(), RateLimiter(1.0, clock=lambda: now[0]))
    answers = [c.answer(req(path)) for path in ("/healthz", "/readyz", "/healthz", "/readyz")]
    statuses = [a.status for a in answers if isinstance(a, Reply)]
    assert statuses == [200, 200, 429, 429]  # a burst of twice the rate, then refused like any request
    assert c.answer(req("/healthz", "10.0.0.6")).status == 200  # type: ignore[union-attr] - another pod's own budget


def test_objects_that_hold_secrets_print_without_them() -> None:
    c = core(Metrics(), Source())
    reply = c.answer(req("/latest/meta-data/iam/security-credentials/reader"))
    assert isinstance(reply, Reply)
    assert CREDS.secret_access_key.encode() in reply.wire  # it does hold them
    upstream = UpstreamResponse(200, b"#!/bin/sh\nexport SECRET=node-user-data\n", "text/plain")
    for printed in (repr(reply), str(reply), f"{reply}", repr(CREDS), repr(upstream)):
        assert "SECRET" not in printed and "SESSION-TOKEN" not in printed, printed
        assert "node-user-data" not in printed, printed
