"""
The metadata endpoint pods reach through the DNAT rule, in IMDS's exact wire format.

Request path: source IP -> pod index (bounded wait for pods not yet seen) -> the identity
policy gave the pod when it was indexed -> credential cache -> pre-rendered JSON bytes.
Per-request logging happens at debug level only; refusals and errors are logged once each.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import structlog
from aiohttp import web

from podiam.credentials import IMDS_TIME_FORMAT, Credentials, Identity
from podiam.errors import (
    CredentialsError,
    HostNetworkCaller,
    IdentityError,
    InvalidRoleError,
    NodeMetadataError,
    NoRoleError,
    PodAmbiguous,
    PodiamError,
    PodNotFound,
    RoleForbidden,
    RoleMismatch,
    StsCallFailed,
    StsUnavailable,
)
from podiam.imds.rate_limit import RateLimiter, retry_after_header
from podiam.imds.routes import Match, Route, classify
from podiam.imds.tokens import TokenIssuer, parse_ttl
from podiam.imds.upstream import NodeMetadataClient
from podiam.observability.audit import IssuanceLog
from podiam.observability.metrics import Metrics
from podiam.pods import PodEntry, PodInfo
from podiam.settings import ImdsSettings

log = structlog.stdlib.get_logger(__name__)
request_log = logging.getLogger("podiam.imds.requests")
"""Per-request lines, at debug level only: checked with isEnabledFor so the hot path pays nothing."""

TOKEN_HEADER = "X-aws-ec2-metadata-token"  # noqa: S105 - a header name
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
BASE_HEADERS = {"Server": "EC2ws", "Content-Type": "text/plain"}

_STATUS_BY_ERROR: tuple[tuple[type[PodiamError], int, str], ...] = (
    # Most specific first; the reason names the metrics label and the log line.
    (PodNotFound, 404, "pod_not_found"),
    (NoRoleError, 404, "no_role"),
    (PodAmbiguous, 409, "ambiguous_ip"),
    (InvalidRoleError, 403, "invalid_role"),
    (RoleForbidden, 403, "role_forbidden"),
    (RoleMismatch, 403, "role_mismatch"),
    (HostNetworkCaller, 403, "host_network"),
    (StsCallFailed, 502, "sts_error"),
    (StsUnavailable, 504, "sts_unavailable"),
    (CredentialsError, 502, "sts_error"),
    (NodeMetadataError, 502, "node_metadata_unavailable"),
    (IdentityError, 403, "forbidden"),
)


class PodLookup(Protocol):
    """Which pod an IP is: the pod index (kube/), or any other source of pods."""

    async def wait_for(self, ip: str, timeout: float) -> PodEntry: ...

    def is_host_ip(self, ip: str) -> bool: ...


class EventSink(Protocol):
    """Where refusals of a pod are reported to its owner (Kubernetes Warning events)."""

    def warn(self, pod: PodInfo, reason: str, message: str) -> None: ...

    def forget(self, pod: PodInfo) -> None: ...


class NoEvents:
    """--no-pod-events."""

    def warn(self, pod: PodInfo, reason: str, message: str) -> None:
        pass

    def forget(self, pod: PodInfo) -> None:
        pass


def event_reason(error: PodiamError) -> str | None:
    """The Warning event reason for a refusal, or None when the pod's owner has nothing to fix."""
    if isinstance(error, RoleForbidden | RoleMismatch):
        return "IAMRoleForbidden"
    if isinstance(error, InvalidRoleError):
        return "IAMRoleInvalid"
    if isinstance(error, CredentialsError):
        return "IAMCredentialsFailed"
    return None


def _status_and_reason(error: Exception) -> tuple[int, str]:
    return next(((st, why) for kind, st, why in _STATUS_BY_ERROR if isinstance(error, kind)), (500, "internal"))


def status_for(error: Exception) -> int:
    """The HTTP status a pod is answered with for ``error`` (also what `podiam explain` reports)."""
    return _status_and_reason(error)[0]


class CredentialSource(Protocol):
    """Where credentials come from: the local STS cache, or (split mode) a podiam server."""

    async def get(self, identity: Identity) -> Credentials: ...


@dataclass(frozen=True)
class ImdsDeps:
    pods: PodLookup
    credentials: CredentialSource
    tokens: TokenIssuer
    issuance: IssuanceLog
    metrics: Metrics
    settings: ImdsSettings
    upstream: NodeMetadataClient | None
    ready: Callable[[], bool]
    limiter: RateLimiter
    events: EventSink = field(default_factory=NoEvents)
    host_identity: Identity | None = None
    """What the node's own network gets (--host-network-role); None refuses it."""


class _Refusal(Exception):
    """A response decided early (bad token, method, ...), carried out of the dispatch."""

    def __init__(self, status: int, reason: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.reason, self.headers = status, reason, headers


def _text(status: int, body: str | bytes, extra: dict[str, str] | None = None) -> web.Response:
    headers = BASE_HEADERS if extra is None else {**BASE_HEADERS, **extra}
    return web.Response(status=status, body=body.encode() if isinstance(body, str) else body, headers=headers)


_STARTED = dt.datetime.now(dt.UTC)
"""iam/info's LastUpdated: when this agent started, as the instance profile's association time."""


@functools.lru_cache(maxsize=4096)
def iam_info(role_arn: str) -> bytes:
    """iam/info for a pod: an instance profile named after the pod's role, never the node's."""
    partition, account, name = role_arn.split(":")[1], role_arn.split(":")[4], role_arn.rsplit("/", 1)[-1]
    digest = base64.b32encode(hashlib.sha256(role_arn.encode()).digest()).decode()
    return json.dumps(
        {
            "Code": "Success",
            "LastUpdated": _STARTED.strftime(IMDS_TIME_FORMAT),
            "InstanceProfileArn": f"arn:{partition}:iam::{account}:instance-profile/{name}",
            "InstanceProfileId": "AIPA" + digest[:17],
        },
        indent=2,
    ).encode()


class ImdsHandler:
    def __init__(self, deps: ImdsDeps) -> None:
        self._d = deps

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        match = classify(request.path)
        try:
            response = await self._dispatch(request, match)
        except _Refusal as r:
            self._d.metrics.refusals.labels(r.reason).inc()
            log.info("request refused", client=request.remote, path=request.path, status=r.status,
                     reason=r.reason, detail=str(r))
            response = _text(r.status, str(r) + "\n", r.headers)
        self._d.metrics.requests.labels(match.route.value, str(response.status)).observe(
            time.perf_counter() - started
        )
        return response

    async def _dispatch(self, request: web.Request, match: Match) -> web.StreamResponse:
        route = match.route
        if route is Route.HEALTHZ:
            return _text(200, "ok\n")
        if route is Route.READYZ:
            return _text(200, "ready\n") if self._d.ready() else _text(503, "pod index not synced yet\n")
        ip = request.remote or ""
        wait = self._d.limiter.retry_after(ip)
        if wait:
            raise _Refusal(429, "rate_limited", f"more than {self._d.limiter.rate:g} requests per second from "
                           f"{ip}; slow down", {"Retry-After": retry_after_header(wait)})
        if route is Route.TOKEN:
            return self._issue_token(request, ip)
        if request.method not in ("GET", "HEAD"):
            raise _Refusal(405, "method", f"method {request.method} is not allowed on {request.path}")
        self._check_token(request, ip)
        # Even allow-listed paths are for this node's pods only: nothing else that can reach
        # the port (another host, the node itself) learns anything about the node.
        entry = await self._caller(ip)
        if route is Route.OTHER:
            return await self._proxy(request)
        identity = self._identity(entry)
        if route is Route.ROLE_LIST:
            return _text(200, identity.role_name)
        if route is Route.IAM_INDEX:
            return _text(200, "info\nsecurity-credentials/")
        if route is Route.IAM_INFO:
            return _text(200, iam_info(identity.role_arn))
        # Route.CREDENTIALS
        if match.role != identity.role_name:
            raise self._refuse(RoleMismatch(
                f"pod {entry.pod.ref} asked for role {match.role!r} but its role is {identity.role_name!r}"
            ), entry.pod)
        try:
            creds = await self._d.credentials.get(identity)
        except CredentialsError as e:
            raise self._refuse(e, entry.pod, warn=True) from None
        self._d.issuance.served(entry.pod, identity, creds)
        if request_log.isEnabledFor(logging.DEBUG):
            request_log.debug("credentials served to %s for %s", entry.pod.ref, identity.role_arn)
        return _text(200, creds.imds_json)

    def _issue_token(self, request: web.Request, ip: str) -> web.Response:
        if request.method != "PUT":
            raise _Refusal(405, "method", "the token endpoint takes PUT only")
        if "X-Forwarded-For" in request.headers:
            # As real IMDS: a token request relayed by a proxy is refused (SSRF guard).
            raise _Refusal(403, "forwarded_token_request", "token requests through a proxy are refused")
        ttl = parse_ttl(request.headers.get(TTL_HEADER))
        if ttl is None:
            raise _Refusal(400, "bad_token_ttl", f"{TTL_HEADER} must be a whole number from 1 to 21600")
        return _text(200, self._d.tokens.issue(ip, ttl), {TTL_HEADER: str(ttl)})

    def _check_token(self, request: web.Request, ip: str) -> None:
        token = request.headers.get(TOKEN_HEADER)
        if token is None:
            if self._d.settings.require_imdsv2:
                raise _Refusal(401, "token_required", "IMDSv2 is required: PUT /latest/api/token first")
            return
        if not self._d.tokens.valid(token, ip):
            raise _Refusal(401, "invalid_token", "the metadata token is invalid, expired or not this pod's")

    async def _caller(self, ip: str) -> PodEntry:
        """The pod behind ``ip``; the node's own network is answered at once, never waited for."""
        if self._d.pods.is_host_ip(ip):
            if self._d.host_identity is None:
                raise self._refuse(HostNetworkCaller(
                    f"{ip} is the node's own network (a hostNetwork pod or the node itself): it is not "
                    "served a pod role (see --host-network-role)"
                ))
            host = PodInfo(namespace="", name="hostNetwork", uid=f"host:{ip}", ip=ip, host_network=True)
            return PodEntry(host, self._d.host_identity, None)
        try:
            return await self._d.pods.wait_for(ip, self._d.settings.pod_wait)
        except IdentityError as e:
            raise self._refuse(e) from None

    def _identity(self, entry: PodEntry) -> Identity:
        if entry.identity is None:
            assert entry.problem is not None
            raise self._refuse(entry.problem, entry.pod)
        return entry.identity

    def _refuse(self, error: PodiamError, pod: PodInfo | None = None, *, warn: bool = False) -> _Refusal:
        status, reason = _status_and_reason(error)
        if warn:
            log.warning("credentials unavailable", reason=reason, detail=str(error))
        event = event_reason(error)
        if pod is not None and event is not None and not pod.host_network:
            self._d.events.warn(pod, event, str(error))
        return _Refusal(status, reason, str(error))

    async def _proxy(self, request: web.Request) -> web.Response:
        path = request.path
        upstream = self._d.upstream
        if upstream is None or not self._d.settings.allow_route_pattern.search(path):
            raise _Refusal(404, "not_allowed", f"{path} is not served to pods (see --allow-route-regexp)")
        try:
            resp = await upstream.get(path)
        except NodeMetadataError as e:
            raise self._refuse(e, warn=True) from None
        return _text(resp.status, resp.body, {"Content-Type": resp.content_type})


def make_app(deps: ImdsDeps) -> web.Application:
    app = web.Application(client_max_size=4096)  # pods send no bodies worth more than that
    app.router.add_route("*", "/{tail:.*}", ImdsHandler(deps).handle)
    return app
