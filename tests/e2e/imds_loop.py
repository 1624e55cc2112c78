"""
Run inside a pod's network namespace (standard library only): an SDK's credential flow through
169.254.169.254 in a loop, one JSON line per flow appended to OUT, until the file STOP exists
or --max-seconds have passed. The test reads OUT while the loop runs.

A flow is what every SDK does (DESIGN.md): PUT /latest/api/token, GET security-credentials/,
GET security-credentials/ROLE, each with the token, on one connection, each with the SDKs' 1 s
and no retry. Any other status than 200, a timeout or an unreadable document is a failed flow.
A line: {"start", "end" (time.monotonic(), the host's clock too), "ok", and "role" and
"key" (the AccessKeyId, never the secret) or "error"}.

usage: imds_loop.py OUT STOP [--pause SECONDS] [--max-seconds SECONDS]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import time
from typing import Any

HOST = "169.254.169.254"
CREDS = "/latest/meta-data/iam/security-credentials/"
TIMEOUT = 1.0
"""Seconds: what boto3, the AWS CLI and the JS SDK v3 give the metadata service, one attempt."""


class Refused(Exception):
    pass


def request(conn: http.client.HTTPConnection, method: str, path: str, headers: dict[str, str]) -> bytes:
    conn.request(method, path, headers=headers)
    response = conn.getresponse()
    body = response.read()
    if response.status != 200:
        raise Refused(f"{method} {path}: HTTP {response.status}: {body[:200].decode(errors='replace').strip()}")
    return body


def credentials(body: bytes) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(body)
    if document.get("Code") != "Success" or not document.get("AccessKeyId"):
        raise Refused(f"credentials document with Code {document.get('Code')!r}")
    return document


def flow() -> dict[str, Any]:
    out: dict[str, Any] = {"start": time.monotonic()}
    conn = http.client.HTTPConnection(HOST, 80, timeout=TIMEOUT)
    try:
        token = request(conn, "PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "21600"})
        auth = {"X-aws-ec2-metadata-token": token.decode()}
        role = request(conn, "GET", CREDS, auth).decode()
        document = credentials(request(conn, "GET", CREDS + role, auth))
        out.update(ok=True, role=role, key=document["AccessKeyId"])
    except (Refused, OSError, http.client.HTTPException, ValueError, KeyError) as e:
        out.update(ok=False, error=f"{type(e).__name__}: {e}"[:400])
    finally:
        conn.close()
    out["end"] = time.monotonic()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("stop")
    parser.add_argument("--pause", type=float, default=0.05, help="seconds between two flows")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="a bound, should STOP never appear")
    args = parser.parse_args()
    deadline = time.monotonic() + args.max_seconds
    with open(args.out, "a", buffering=1) as out:  # line-buffered: each flow is readable at once
        while not os.path.exists(args.stop) and time.monotonic() < deadline:
            out.write(json.dumps(flow()) + "\n")
            time.sleep(args.pause)  # pacing, well under the per-pod rate limit


if __name__ == "__main__":
    main()
