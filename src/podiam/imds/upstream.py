"""
The node's own, real instance metadata service, as a client: for allow-listed paths pods
may read (region discovery), and for the agent's own start-up discovery (region, account).

podiam talks to it as an IMDSv2 client of its own: it fetches and renews its own session
token and never forwards a pod's token or headers, so nothing a pod sends reaches the real
service except the path, and no X-Forwarded-For is ever added (real IMDS refuses token
requests that carry one, which broke kube2iam and kiam for years).

The path is a CanonicalPath (imds/target.py) and goes on the wire byte for byte: the URL is
built as already encoded, so the client library neither re-quotes it nor resolves dot
segments. Resolving them is what turned ``placement/../iam/...`` into the node's credentials
in 0.1.0.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from types import TracebackType

import aiohttp
import structlog
from yarl import URL

from podiam.errors import NodeMetadataError
from podiam.imds.target import CanonicalPath

log = structlog.stdlib.get_logger(__name__)

TOKEN_TTL = 21600
_TOKEN_RENEW_BEFORE = 60.0
REGION_PATH = CanonicalPath("/latest/meta-data/placement/region")
IAM_INFO_PATH = CanonicalPath("/latest/meta-data/iam/info")


@dataclass(frozen=True)
class UpstreamResponse:
    status: int
    body: bytes = field(repr=False)
    """The node's metadata, which may be secret: never in repr()."""
    content_type: str


class NodeMetadataClient:
    def __init__(self, addr: str, timeout: float) -> None:
        self._base = f"http://{addr}"
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._token: str | None = None
        self._token_expiry = 0.0
        self._token_lock = asyncio.Lock()

    async def __aenter__(self) -> NodeMetadataClient:
        # No proxy from the environment: a request for the node's metadata must never leave the node.
        self._session = aiohttp.ClientSession(timeout=self._timeout, trust_env=False, auto_decompress=False)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def get(self, path: CanonicalPath) -> UpstreamResponse:
        """GET exactly ``path`` from the node's IMDS; NodeMetadataError when it cannot be reached."""
        session = self._require_session()
        headers = {}
        token = await self._ensure_token()
        if token is not None:
            headers["X-aws-ec2-metadata-token"] = token
        try:
            url = URL(self._base + path, encoded=True)  # as checked: no re-quoting, no dot-segment resolution
            async with session.get(url, headers=headers, allow_redirects=False) as resp:
                body = await resp.read()
                if resp.status == 401 and token is not None:
                    self._token = None  # renewed on the next call; this one reports the 401
                return UpstreamResponse(resp.status, body, resp.headers.get("Content-Type", "text/plain"))
        except (aiohttp.ClientError, TimeoutError) as e:
            raise NodeMetadataError(f"node metadata service at {self._base} did not answer {path}: {e!r}") from e

    async def get_text(self, path: CanonicalPath) -> str:
        resp = await self.get(path)
        if resp.status != 200:
            raise NodeMetadataError(f"node metadata service answered {resp.status} to {path}")
        return resp.body.decode()

    async def region(self) -> str:
        return (await self.get_text(REGION_PATH)).strip()

    async def instance_profile_arn(self) -> str:
        try:
            info = json.loads(await self.get_text(IAM_INFO_PATH))
            return str(info["InstanceProfileArn"])
        except (ValueError, KeyError, TypeError) as e:
            raise NodeMetadataError(f"node metadata iam/info is not what EC2 serves: {e}") from e

    async def _ensure_token(self) -> str | None:
        """The agent's own IMDSv2 token; None when the service only speaks IMDSv1."""
        if self._token is not None and time.monotonic() < self._token_expiry:
            return self._token
        async with self._token_lock:
            if self._token is not None and time.monotonic() < self._token_expiry:
                return self._token
            session = self._require_session()
            try:
                async with session.put(
                    self._base + "/latest/api/token",
                    headers={"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL)},
                ) as resp:
                    if resp.status != 200:
                        log.debug("node metadata token refused; using IMDSv1", status=resp.status)
                        return None
                    self._token = (await resp.text()).strip()
                    self._token_expiry = time.monotonic() + TOKEN_TTL - _TOKEN_RENEW_BEFORE
                    return self._token
            except (aiohttp.ClientError, TimeoutError) as e:
                raise NodeMetadataError(f"node metadata service at {self._base} did not answer: {e!r}") from e

    def _require_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("NodeMetadataClient used outside its async context")
        return self._session


def base_arn_from_profile(profile_arn: str) -> str:
    """arn:PART:iam::ACCOUNT:instance-profile/NAME -> arn:PART:iam::ACCOUNT:role/ (kube2iam's discovery)."""
    parts = profile_arn.split(":")
    if len(parts) < 6 or parts[0] != "arn" or parts[2] != "iam" or not parts[5].startswith("instance-profile/"):
        raise NodeMetadataError(f"{profile_arn!r} is not an instance profile ARN")
    return f"arn:{parts[1]}:iam::{parts[4]}:role/"
