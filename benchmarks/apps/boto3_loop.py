"""
An application in a pod: STS GetCallerIdentity in a loop with boto3's default credential
chain, for ``argv[1]`` seconds after one warm-up call. Prints one JSON line.
"""

from __future__ import annotations

import json
import sys
import time

import boto3  # type: ignore[import-untyped]


def main() -> None:
    seconds = float(sys.argv[1])
    client = boto3.client("sts")
    client.get_caller_identity()  # warm-up: credentials resolved, connection open
    latencies: list[float] = []
    started = time.monotonic()
    end = started + seconds
    while (now := time.monotonic()) < end:
        client.get_caller_identity()
        latencies.append(time.monotonic() - now)
    elapsed = time.monotonic() - started
    latencies.sort()
    print(json.dumps({"calls": len(latencies), "seconds": elapsed,
                      "p50_ms": latencies[len(latencies) // 2] * 1000,
                      "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000}))


if __name__ == "__main__":
    main()
