"""
A stand-in for the node's own EC2 instance metadata service.

podiam proxies allow-listed paths (region discovery) to the node's IMDS and must never let
a pod reach the rest: the node role's credentials, user-data, the instance profile. This
fake serves all of those with recognisable constants, so a test can assert that a pod
never sees ``NODE_ACCESS_KEY_ID`` or ``NODE_USER_DATA``, and it records every request so
a test can assert what podiam forwarded (and that it never added X-Forwarded-For).

Wire behaviour follows real IMDS: ``Server: EC2ws``, text/plain bodies (JSON ones too),
IMDSv2 tokens from ``PUT /latest/api/token`` (TTL 1..21600 s, 403 when the PUT carries
X-Forwarded-For), 401 for an invalid or expired token, token-less requests allowed unless
``require_token``; any version prefix (``latest``, ``2009-04-04``) serves the same tree.

In process: ``async with FakeNodeImds() as imds: imds.url``. Standalone:
``python -m podiam_sandbox.node_imds --host H --port P`` prints ``ready URL`` and exits
cleanly on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import re
import secrets
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from aiohttp import web
from aiohttp.typedefs import Handler

NODE_ROLE_NAME = "node-role"
NODE_ACCESS_KEY_ID = "ASIANODEROLEDONOTLEAK"
"""The node role's access key id: must never appear in anything a pod receives."""
# Fake secrets with recognisable values, so that a leak is easy to spot.
NODE_SECRET_ACCESS_KEY = "node-role-secret-access-key-DO-NOT-LEAK"  # noqa: S105
NODE_SESSION_TOKEN = "node-role-session-token-DO-NOT-LEAK"  # noqa: S105
NODE_USER_DATA = (
    "#!/bin/bash\n"
    "# podiam sandbox node user-data: NODE-USER-DATA-SECRET-DO-NOT-LEAK\n"
    "export BOOTSTRAP_SECRET=node-user-data-secret-do-not-leak\n"
)
"""The node's user-data, a secret bootstrap script: must never reach a pod."""
NODE_INSTANCE_ID = "i-0123456789abcdef0"
NODE_INSTANCE_PROFILE_NAME = "node-profile"
NODE_INSTANCE_PROFILE_ID = "AIPANODEPROFILEDONOTLEAK"
NODE_PRIVATE_IP = "10.0.0.10"

TOKEN_PATH = "/latest/api/token"  # noqa: S105 - IMDSv2 names, not secrets
TOKEN_HEADER = "X-aws-ec2-metadata-token"  # noqa: S105
TOKEN_TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"  # noqa: S105
MAX_TOKEN_TTL = 21600

_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_VERSION_RE = re.compile(r"^/(latest|\d{4}-\d{2}-\d{2})(/.*)?$")
_VERSIONS = ("1.0", "2007-01-19", "2009-04-04", "2016-09-02", "2021-07-15", "latest")


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    """Path and query string, as aiohttp decoded them."""
    headers: Mapping[str, str]
    """Case-insensitive."""
    target: str
    """The request target byte for byte as it arrived on the wire (undecoded, unnormalised):
    what a test compares with the path podiam checked."""


class FakeNodeImds:
    """An IMDS-compatible aiohttp server; ``requests`` records what it received."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        region: str = "us-east-1",
        account_id: str = "123456789012",
        partition: str = "aws",
        require_token: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``clock`` (seconds) times token expiry; tests pass a fake one to expire tokens."""
        self.host = host
        self.port = port
        self.region = region
        self.account_id = account_id
        self.partition = partition
        self.require_token = require_token
        self.requests: list[RecordedRequest] = []
        self._clock = clock
        self._tokens: dict[str, float] = {}  # token -> expiry on self._clock
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def instance_profile_arn(self) -> str:
        return f"arn:{self.partition}:iam::{self.account_id}:instance-profile/{NODE_INSTANCE_PROFILE_NAME}"

    def paths(self) -> list[str]:
        """Paths received so far, in order."""
        return [r.path for r in self.requests]

    async def __aenter__(self) -> Self:
        app = web.Application(middlewares=[self._record])
        app.on_response_prepare.append(_imds_headers)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except BaseException:
            await self._runner.cleanup()
            raise
        if self.port == 0:
            self.port = int(self._runner.addresses[0][1])
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _record(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.requests.append(RecordedRequest(request.method, request.path_qs, request.headers.copy(),
                                             request.raw_path))
        return await handler(request)

    async def _handle(self, request: web.Request) -> web.Response:
        if request.path == TOKEN_PATH:
            return self._token(request)
        if request.method not in ("GET", "HEAD"):
            return _text(405, "Method Not Allowed")
        denied = self._check_token(request)
        if denied is not None:
            return denied
        if request.path == "/":
            return _text(200, "\n".join(_VERSIONS))
        match = _VERSION_RE.match(request.path)
        body = self._tree().get((match.group(2) or "/").lstrip("/")) if match else None
        if body is None:
            return _text(404, "Not Found")
        return _text(200, body)

    def _token(self, request: web.Request) -> web.Response:
        if request.method != "PUT":
            return _text(405, "Method Not Allowed")
        # Real IMDS refuses token requests that went through a proxy (SSRF guard).
        if "X-Forwarded-For" in request.headers:
            return _text(403, "Forbidden")
        raw = request.headers.get(TOKEN_TTL_HEADER, "")
        ttl = int(raw) if raw.isascii() and raw.isdigit() else 0
        if not 1 <= ttl <= MAX_TOKEN_TTL:
            return _text(400, "Bad Request")
        token = secrets.token_urlsafe(42)
        self._tokens[token] = self._clock() + ttl
        response = _text(200, token)
        response.headers[TOKEN_TTL_HEADER] = str(ttl)
        return response

    def _check_token(self, request: web.Request) -> web.Response | None:
        token = request.headers.get(TOKEN_HEADER)
        if token is None:
            return _text(401, "Unauthorized") if self.require_token else None
        expiry = self._tokens.get(token)
        if expiry is None or self._clock() >= expiry:
            return _text(401, "Unauthorized")
        return None

    def _tree(self) -> dict[str, str]:
        """Body per path below the version prefix; directory listings end in '/'."""
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        credentials = {
            "Code": "Success",
            "LastUpdated": now.strftime(_TIME_FORMAT),
            "Type": "AWS-HMAC",
            "AccessKeyId": NODE_ACCESS_KEY_ID,
            "SecretAccessKey": NODE_SECRET_ACCESS_KEY,
            "Token": NODE_SESSION_TOKEN,
            "Expiration": (now + dt.timedelta(hours=6)).strftime(_TIME_FORMAT),
        }
        info = {
            "Code": "Success",
            "LastUpdated": now.strftime(_TIME_FORMAT),
            "InstanceProfileArn": self.instance_profile_arn,
            "InstanceProfileId": NODE_INSTANCE_PROFILE_ID,
        }
        zone = f"{self.region}a"
        document = {
            "accountId": self.account_id,
            "architecture": "x86_64",
            "availabilityZone": zone,
            "imageId": "ami-0123456789abcdef0",
            "instanceId": NODE_INSTANCE_ID,
            "instanceType": "m5.large",
            "pendingTime": "2026-01-01T00:00:00Z",
            "privateIp": NODE_PRIVATE_IP,
            "region": self.region,
            "version": "2017-09-30",
        }
        return {
            "": "dynamic\nmeta-data\nuser-data",
            "meta-data/": "iam/\ninstance-id\nlocal-ipv4\nplacement/",
            "meta-data/instance-id": NODE_INSTANCE_ID,
            "meta-data/local-ipv4": NODE_PRIVATE_IP,
            "meta-data/iam/": "info\nsecurity-credentials/",
            "meta-data/iam/info": json.dumps(info, indent=2),
            "meta-data/iam/security-credentials/": NODE_ROLE_NAME,
            f"meta-data/iam/security-credentials/{NODE_ROLE_NAME}": json.dumps(credentials, indent=2),
            "meta-data/placement/": "availability-zone\nregion",
            "meta-data/placement/availability-zone": zone,
            "meta-data/placement/region": self.region,
            "dynamic/": "instance-identity/",
            "dynamic/instance-identity/": "document",
            "dynamic/instance-identity/document": json.dumps(document, indent=2),
            "user-data": NODE_USER_DATA,
        }


def _text(status: int, body: str) -> web.Response:
    return web.Response(status=status, text=body, content_type="text/plain")


async def _imds_headers(request: web.Request, response: web.StreamResponse) -> None:
    # Also on aiohttp's own error responses, which bypass our handler.
    response.headers["Server"] = "EC2ws"


async def _serve(host: str, port: int, region: str, account_id: str, require_token: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with FakeNodeImds(
        host, port, region=region, account_id=account_id, require_token=require_token
    ) as imds:
        print(f"ready {imds.url}", flush=True)  # the protocol with the parent process
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m podiam_sandbox.node_imds", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed)")
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--account-id", default="123456789012")
    parser.add_argument("--require-token", action="store_true", help="answer token-less requests 401")
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.host, args.port, args.region, args.account_id, args.require_token))


if __name__ == "__main__":
    main()
