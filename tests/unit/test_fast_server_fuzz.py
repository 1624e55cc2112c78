"""
Fuzzing the fast server's protocol (hypothesis): whatever bytes a pod sends, in whatever
chunks, nothing raises, and everything written back is a sequence of well-formed HTTP/1.1
responses whose Content-Length matches. The transport is a recording stand-in for
asyncio's; the protocol and the core under it are the real ones.
"""

from __future__ import annotations

import asyncio
import datetime as dt

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pod_doubles import CredentialDouble, RecordingTransport
from podiam.credentials import Credentials, Identity
from podiam.imds.core import ImdsDeps, MetadataCore
from podiam.imds.fast_server import FastServer, MetadataProtocol
from podiam.imds.rate_limit import RateLimiter
from podiam.imds.tokens import TokenIssuer
from podiam.kube.pod_index import PodIndex
from podiam.observability.audit import IssuanceLog
from podiam.observability.metrics import Metrics
from podiam.pods import PodInfo
from podiam.policy import RolePolicy
from podiam.settings import ImdsSettings, RoleSettings

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
CREDS = Credentials("ASIAFUZZ", "secret", "token", NOW + dt.timedelta(hours=1), NOW)


class Source(CredentialDouble):
    def fresh(self, identity: Identity) -> Credentials | None:
        return CREDS

    async def get(self, identity: Identity) -> Credentials:
        return CREDS


def make_core() -> MetadataCore:
    index = PodIndex(RolePolicy.from_settings(RoleSettings(), "arn:aws:iam::123456789012:role/").identity)
    index.replace([PodInfo("ns", "p", "u", "10.0.0.5", "Running", annotations={"iam.amazonaws.com/role": "r"})])
    deps = ImdsDeps(pods=index, credentials=Source(), tokens=TokenIssuer(), issuance=IssuanceLog("n"),
                    metrics=Metrics(), settings=ImdsSettings(pod_wait=0.0), upstream=None, ready=lambda: True,
                    limiter=RateLimiter(0))
    return MetadataCore(deps)


def responses(data: bytes) -> list[int]:
    """Statuses of the responses in ``data``; fails unless it is exactly a sequence of them."""
    statuses = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, data[:200]
        lines = head.split(b"\r\n")
        assert lines[0].startswith(b"HTTP/1.1 "), lines[0]
        headers = dict(line.split(b": ", 1) for line in lines[1:])
        length = int(headers[b"Content-Length"])
        # A HEAD reply announces a body it does not send. A client knows which requests were
        # HEAD; here, none of this server's bodies begins with a status line, so that tells.
        head_reply = not rest or (length > 0 and rest.startswith(b"HTTP/1.1 "))
        assert head_reply or len(rest) >= length, "a body shorter than its Content-Length"
        statuses.append(int(lines[0][9:12]))
        data = rest if head_reply else rest[length:]
    return statuses


async def feed(chunks: list[bytes]) -> tuple[bytes, bool]:
    core = make_core()
    server = FastServer(core, "127.0.0.1", 0, 1.0)
    protocol = MetadataProtocol(core, server)
    transport = RecordingTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    for chunk in chunks:
        if transport.closed:
            break
        protocol.data_received(chunk)
    await server.close()  # lets any request that had to wait finish
    protocol.connection_lost(None)
    return bytes(transport.out), transport.closed


ANSWERABLE = {200, 400, 401, 403, 404, 405, 413, 414}
"""Every status a known pod can get here: credentials, token and route answers, refusals of
the request (core) and of its framing (the server). No upstream (404), no rate limit (no 429),
no connection cap (no 503), one pod per IP (no 409)."""

methods = st.sampled_from([b"GET", b"PUT", b"HEAD", b"POST", b"DELETE", b"OPTIONS", b"G\x00T", b""])
paths = st.one_of(
    st.sampled_from([b"/latest/meta-data/iam/security-credentials/r", b"/latest/api/token", b"/healthz",
                     b"/latest/meta-data/iam/info", b"/latest/user-data", b"/%", b"/..%2f", b"*"]),
    st.binary(max_size=60).map(lambda b: b"/" + b),
)
headers = st.lists(st.tuples(st.sampled_from([b"X-aws-ec2-metadata-token", b"X-aws-ec2-metadata-token-ttl-seconds",
                                              b"X-Forwarded-For", b"Content-Length", b"Transfer-Encoding",
                                              b"Connection", b"Host"]), st.binary(max_size=20)), max_size=5)
versions = st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1x", b""])


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    lines = [draw(methods) + b" " + draw(paths) + b" " + draw(versions)]
    lines += [name + b": " + value for name, value in draw(headers)]
    return b"\r\n".join(lines) + b"\r\n\r\n" + draw(st.binary(max_size=30))


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True) if data[a:b]]


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(requests(), st.binary(max_size=200)), min_size=1, max_size=4), st.lists(st.integers()))
def test_anything_gets_well_formed_responses_and_nothing_raises(parts: list[bytes], cuts: list[int]) -> None:
    data = b"".join(parts)
    out, closed = asyncio.run(feed(split(data, cuts)))
    statuses = responses(out)
    # What this pod can be answered, and nothing else: a 500 would be a bug the input found.
    assert set(statuses) <= ANSWERABLE, statuses
    # Never a silent hang-up: a connection the server closes was told why first.
    assert statuses or not closed
    # How the bytes were cut changes nothing: the same answers, the same connection state.
    whole_out, whole_closed = asyncio.run(feed([data] if data else []))
    assert (responses(whole_out), whole_closed) == (statuses, closed)


@given(st.lists(st.integers(), max_size=5))
def test_a_valid_request_in_any_chunks_gets_the_credentials(cuts: list[int]) -> None:
    request = b"GET /latest/meta-data/iam/security-credentials/r HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n"
    out, closed = asyncio.run(feed(split(request * 2, cuts)))
    assert responses(out) == [200, 200]
    assert out.count(CREDS.imds_json) == 2
    assert not closed
