"""
Instructions per cached credential request through the fast server's protocol and the core,
counted by callgrind: deterministic where wall-clock figures on a shared 2-core machine are not.

    python -m benchmarks.instructions [--baseline OTHER/src] [--requests 20000] [--patterns ...]
    python -m benchmarks.instructions --split [--requests 20000]

Each side runs twice under ``valgrind --tool=callgrind`` (no requests, then N), so start-up
cancels out; the figure is (count(N) - count(0)) / N. With ``--baseline`` (a source tree of
another commit, e.g. from ``git archive``), the same is counted for it and the ratio printed.
The workload: the real MetadataProtocol and MetadataCore on uvloop (the agent's loop), agent
mode's PodIndex and CredentialCache, a transport that discards what it is given, and the SDK's
credential GET with an IMDSv2 token header fed one per ``data_received``, in each of PATTERNS:
on one keep-alive connection, the same with the rate limit on, and a connection per request.
The kernel's part (the socket calls) is not counted. Needs valgrind (Debian package).

``--split`` counts the same request with each mode's real lookups instead of the stand-in
credential source: agent mode's PodIndex and CredentialCache (filled through a stand-in
assumer), and split mode's Mirror (filled by a snapshot message, as the stream fills it), and
prints the ratio split/agent.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import re
import subprocess
import sys
from typing import Any

import uvloop

_COLLECTED = re.compile(r"Collected : (\d+)")


class Transport:
    """A transport that keeps only the last reply."""

    last = b""

    def write(self, data: bytes) -> None:
        self.last = data  # checked once, after the loop: every variant must answer 200

    def close(self) -> None: ...
    def set_write_buffer_limits(self, high: int, low: int) -> None: ...
    def get_write_buffer_size(self) -> int:
        return 0
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("10.0.0.5", 40000) if name == "peername" else default


def _mirror(pod: Any, identity: Any, creds: Any) -> Any:
    """Split mode's Mirror holding ``pod`` and its credentials, fed one snapshot as the stream feeds it."""
    from podiam.kube.pod_index import PodIndex  # noqa: PLC0415 - only in the counted process
    from podiam.remote import podiam_pb2 as pb  # noqa: PLC0415
    from podiam.remote.mirror import Mirror  # noqa: PLC0415
    from podiam.remote.wire import outcome_to_wire  # noqa: PLC0415

    mirror = Mirror(PodIndex, "n1")
    mirror.apply(pb.NodeUpdate(resume=pb.ResumePoint(epoch="e", sequence=1), snapshot=pb.Snapshot(
        pods=[pb.Pod(uid=pod.uid, namespace=pod.namespace, name=pod.name, ip=pod.ip,
                     identity=pb.Identity(role_arn=identity.role_arn, session_name=identity.session_name))],
        credentials=[outcome_to_wire(identity, creds)])))
    return mirror


def _drive(core: Any, request: bytes, requests: int, *, close: bool) -> Transport:
    """Feed ``request`` ``requests`` times to the real protocol over ``core``; the transport."""
    from podiam.imds.fast_server import FastServer, MetadataProtocol  # noqa: PLC0415 - only in the counted process

    server = FastServer(core, "127.0.0.1", 0, 1.0)
    transport = Transport()
    protocol = MetadataProtocol(core, server)
    protocol.connection_made(transport)  # type: ignore[arg-type]
    for _ in range(requests):
        if close:  # the SDKs' pattern: a connection per request (the socket calls are the kernel's)
            protocol = MetadataProtocol(core, server)
            protocol.connection_made(transport)  # type: ignore[arg-type]
            protocol.data_received(request)
            protocol.connection_lost(None)
        else:
            protocol.data_received(request)
    return transport


def _workload(requests: int, variant: str = "source", *, close: bool = False, rate: float = 0.0) -> None:
    """``variant``: "source" (a stand-in credential source), "agent" (PodIndex and CredentialCache)
    or "split" (the Mirror, fed a snapshot). ``close``: a new connection for each request, with
    ``Connection: close``. ``rate``: the per-pod rate limit (0: off; else high enough never to refuse)."""
    from podiam.credentials import Credentials, Identity  # noqa: PLC0415 - only in the counted process
    from podiam.imds.core import ImdsDeps, MetadataCore  # noqa: PLC0415
    from podiam.imds.rate_limit import RateLimiter  # noqa: PLC0415
    from podiam.imds.tokens import TokenIssuer  # noqa: PLC0415
    from podiam.kube.pod_index import PodIndex  # noqa: PLC0415
    from podiam.observability.audit import IssuanceLog  # noqa: PLC0415
    from podiam.observability.metrics import Metrics  # noqa: PLC0415
    from podiam.pods import PodInfo  # noqa: PLC0415
    from podiam.policy import RolePolicy  # noqa: PLC0415
    from podiam.settings import ImdsSettings, RoleSettings, StsSettings  # noqa: PLC0415

    logging.disable(logging.CRITICAL)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    creds = Credentials("ASIABENCH", "secret", "token", now + dt.timedelta(hours=1), now)
    pod = PodInfo("ns", "web", "u1", "10.0.0.5", "Running", annotations={"iam.amazonaws.com/role": "reader"},
                  node="n1")

    class Source:
        credential_changes = 0

        def fresh(self, identity: Identity) -> Credentials | None:
            return creds

        def replayed(self) -> None: ...

        async def get(self, identity: Identity) -> Credentials:
            return creds

    class Assumer:
        async def assume(self, identity: Identity) -> Credentials:
            return creds

    async def serve(pods: Any, source: Any, metrics: Metrics) -> None:
        tokens = TokenIssuer()
        deps = ImdsDeps(pods=pods, credentials=source, tokens=tokens, issuance=IssuanceLog("n1"),
                        metrics=metrics, settings=ImdsSettings(), upstream=None, ready=lambda: True,
                        limiter=RateLimiter(rate))
        request = ("GET /latest/meta-data/iam/security-credentials/reader HTTP/1.1\r\nHost: 169.254.169.254\r\n"
                   "User-Agent: Boto3/1.35 md/Botocore#1.35\r\nAccept: */*\r\n"
                   + ("Connection: close\r\n" if close else "")
                   + f"X-aws-ec2-metadata-token: {tokens.issue('10.0.0.5', 600)}\r\n\r\n").encode()
        transport = _drive(MetadataCore(deps), request, requests, close=close)
        if requests and not transport.last.startswith(b"HTTP/1.1 200 "):
            raise RuntimeError(f"{variant}: the core answered {transport.last[:200]!r}")

    async def run() -> None:
        policy = RolePolicy.from_settings(RoleSettings(), "arn:aws:iam::123456789012:role/")
        metrics = Metrics()
        if variant == "source":
            index = PodIndex(policy.identity)
            index.replace([pod])
            await serve(index, Source(), metrics)
        elif variant == "agent":
            from podiam.sts.cache import CredentialCache  # noqa: PLC0415

            index = PodIndex(policy.identity)
            index.replace([pod])
            async with CredentialCache(Assumer(), StsSettings(), metrics) as cache:
                await cache.get(policy.identity(pod))
                await serve(index, cache, metrics)
        else:
            mirror = _mirror(pod, policy.identity(pod), creds)
            await serve(mirror, mirror, metrics)

    uvloop.run(run())  # the agent's loop: its timers and handles are C, asyncio's are Python


PATTERNS = {
    "keep-alive": {},
    "rate-limited": {"rate": 1e9},
    "close": {"close": True},
}
"""What is counted: the SDK's credential GET repeated on one connection; the same with the
per-pod token bucket on (a rate never reached, so every request pays the bucket); and a new
connection per request, as SDKs do it."""


def _count(requests: int, source: str | None, variant: str, pattern: str) -> int:
    env = {**os.environ, **({"PYTHONPATH": source} if source else {})}
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
         sys.executable, "-m", "benchmarks.instructions", "--inner", str(requests), "--variant", variant,
         "--pattern", pattern],
        env=env, capture_output=True, text=True, check=True, timeout=1800,
    )
    match = _COLLECTED.search(done.stderr)
    if match is None:
        raise RuntimeError(f"no callgrind total in: {done.stderr[-500:]}")
    return int(match.group(1))


def per_request(requests: int, source: str | None, variant: str = "source", pattern: str = "keep-alive") -> float:
    return (_count(requests, source, variant, pattern) - _count(0, source, variant, pattern)) / requests


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.instructions", description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", help="src/ of another commit, counted the same way for a ratio")
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--split", action="store_true",
                        help="count agent mode's index and cache against split mode's mirror, and the ratio")
    parser.add_argument("--patterns", default=",".join(PATTERNS),
                        help=f"comma-separated, of: {', '.join(PATTERNS)} (default: all)")
    parser.add_argument("--inner", type=int, help=argparse.SUPPRESS)  # the counted process itself
    parser.add_argument("--variant", default="source", choices=["source", "agent", "split"], help=argparse.SUPPRESS)
    parser.add_argument("--pattern", default="keep-alive", choices=list(PATTERNS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner is not None:
        _workload(args.inner, args.variant, **PATTERNS[args.pattern])
        return
    if args.split:
        agent = per_request(args.requests, None, "agent")
        split = per_request(args.requests, None, "split")
        print(f"agent mode (PodIndex, CredentialCache): {agent:,.0f} instructions per cached credential request")
        print(f"split mode (Mirror):                    {split:,.0f} instructions per cached credential request")
        print(f"ratio split/agent: {split / agent:.3f}")
        return
    for pattern in args.patterns.split(","):
        if pattern not in PATTERNS:
            parser.error(f"unknown pattern {pattern!r}; the patterns are: {', '.join(PATTERNS)}")
        this = per_request(args.requests, None, "agent", pattern)
        line = f"{pattern:28} this tree: {this:9,.0f}"
        if args.baseline:
            base = per_request(args.requests, args.baseline, "agent", pattern)
            line += f"   baseline: {base:9,.0f}   ratio this/baseline: {this / base:.3f}"
        print(line + "  instructions per cached credential request", flush=True)


if __name__ == "__main__":
    main()
