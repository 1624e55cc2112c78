"""
Instructions per cached credential request through the fast server's protocol and the core,
counted by callgrind: deterministic where wall-clock figures on a shared 2-core machine are not.

    python -m benchmarks.instructions [--baseline OTHER/src] [--requests 20000]

Each side runs twice under ``valgrind --tool=callgrind`` (no requests, then N), so start-up
cancels out; the figure is (count(N) - count(0)) / N. With ``--baseline`` (a source tree of
another commit, e.g. from ``git archive``), the same is counted for it and the ratio printed.
The workload: one connection of the real MetadataProtocol and MetadataCore, a transport that
discards what it is given, and the SDK's credential GET with an IMDSv2 token header fed one per
``data_received``. Needs valgrind (Debian package).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import os
import re
import subprocess
import sys
from typing import Any

_COLLECTED = re.compile(r"Collected : (\d+)")


def _workload(requests: int) -> None:
    from podiam.credentials import Credentials, Identity  # noqa: PLC0415 - only in the counted process
    from podiam.imds.core import ImdsDeps, MetadataCore  # noqa: PLC0415
    from podiam.imds.fast_server import FastServer, MetadataProtocol  # noqa: PLC0415
    from podiam.imds.rate_limit import RateLimiter  # noqa: PLC0415
    from podiam.imds.tokens import TokenIssuer  # noqa: PLC0415
    from podiam.kube.pod_index import PodIndex  # noqa: PLC0415
    from podiam.observability.audit import IssuanceLog  # noqa: PLC0415
    from podiam.observability.metrics import Metrics  # noqa: PLC0415
    from podiam.pods import PodInfo  # noqa: PLC0415
    from podiam.policy import RolePolicy  # noqa: PLC0415
    from podiam.settings import ImdsSettings, RoleSettings  # noqa: PLC0415

    logging.disable(logging.CRITICAL)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    creds = Credentials("ASIABENCH", "secret", "token", now + dt.timedelta(hours=1), now)

    class Source:
        def fresh(self, identity: Identity) -> Credentials | None:
            return creds

        async def get(self, identity: Identity) -> Credentials:
            return creds

    class Transport:
        def write(self, data: bytes) -> None: ...
        def close(self) -> None: ...
        def set_write_buffer_limits(self, high: int, low: int) -> None: ...
        def get_write_buffer_size(self) -> int:
            return 0
        def pause_reading(self) -> None: ...
        def resume_reading(self) -> None: ...
        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return ("10.0.0.5", 40000) if name == "peername" else default

    async def run() -> None:
        policy = RolePolicy.from_settings(RoleSettings(), "arn:aws:iam::123456789012:role/")
        index = PodIndex(policy.identity)
        index.replace([PodInfo("ns", "web", "u1", "10.0.0.5", "Running",
                               annotations={"iam.amazonaws.com/role": "reader"})])
        tokens = TokenIssuer()
        deps = ImdsDeps(pods=index, credentials=Source(), tokens=tokens, issuance=IssuanceLog("n1"),
                        metrics=Metrics(), settings=ImdsSettings(), upstream=None, ready=lambda: True,
                        limiter=RateLimiter(0))
        core = MetadataCore(deps)
        protocol = MetadataProtocol(core, FastServer(core, "127.0.0.1", 0, 1.0))
        protocol.connection_made(Transport())  # type: ignore[arg-type]
        request = ("GET /latest/meta-data/iam/security-credentials/reader HTTP/1.1\r\nHost: 169.254.169.254\r\n"
                   "User-Agent: Boto3/1.35 md/Botocore#1.35\r\nAccept: */*\r\n"
                   f"X-aws-ec2-metadata-token: {tokens.issue('10.0.0.5', 600)}\r\n\r\n").encode()
        for _ in range(requests):
            protocol.data_received(request)

    asyncio.run(run())


def _count(requests: int, source: str | None) -> int:
    env = {**os.environ, **({"PYTHONPATH": source} if source else {})}
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
         sys.executable, "-m", "benchmarks.instructions", "--inner", str(requests)],
        env=env, capture_output=True, text=True, check=True, timeout=1800,
    )
    match = _COLLECTED.search(done.stderr)
    if match is None:
        raise RuntimeError(f"no callgrind total in: {done.stderr[-500:]}")
    return int(match.group(1))


def per_request(requests: int, source: str | None) -> float:
    return (_count(requests, source) - _count(0, source)) / requests


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.instructions", description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", help="src/ of another commit, counted the same way for a ratio")
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--inner", type=int, help=argparse.SUPPRESS)  # the counted process itself
    args = parser.parse_args()
    if args.inner is not None:
        _workload(args.inner)
        return
    this = per_request(args.requests, None)
    print(f"this tree: {this:,.0f} instructions per cached credential request")
    if args.baseline:
        base = per_request(args.requests, args.baseline)
        print(f"baseline:  {base:,.0f} instructions per cached credential request")
        print(f"ratio this/baseline: {this / base:.3f}")


if __name__ == "__main__":
    main()
