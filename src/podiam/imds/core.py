"""
The metadata endpoint's decisions, independent of any HTTP server: a request (method, path,
headers, caller IP) in, a Reply out, in IMDS's exact wire format.

Request path: source IP -> pod index -> the identity policy gave the pod when it was
indexed -> credential cache -> pre-rendered bytes. ``answer()`` returns the Reply at once
when nothing has to be waited for (a known pod with fresh credentials, or any refusal
decided from memory) and otherwise a coroutine that finishes the request: waiting for a pod
the watch has not announced yet, for STS, or for the node's IMDS. So a server can write
cache hits without creating a task, and no step (rate limit, metrics) ever runs twice.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import json
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from http import HTTPStatus
from typing import Any, Protocol

import structlog

from podiam.credentials import IMDS_TIME_FORMAT, Credentials, Identity
from podiam.errors import (
    BadRequestTarget,
    CredentialsError,
    HostNetworkCaller,
    IdentityError,
    InvalidRoleError,
    NamespaceNotKnown,
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
from podiam.imds.routes import Match, Route, classify, proxy_route
from podiam.imds.target import CanonicalPath, canonical_path
from podiam.imds.tokens import TokenIssuer, parse_ttl
from podiam.imds.upstream import NodeMetadataClient
from podiam.observability.audit import IssuanceLog
from podiam.observability.metrics import Metrics
from podiam.pods import PodEntry, PodInfo
from podiam.settings import ImdsSettings

log = structlog.stdlib.get_logger("podiam.imds")
request_log = logging.getLogger("podiam.imds.requests")
"""Per-request lines, at debug level only: checked with isEnabledFor so the hot path pays nothing."""

TOKEN_HEADER = "x-aws-ec2-metadata-token"  # noqa: S105 - a header name
TTL_HEADER = "x-aws-ec2-metadata-token-ttl-seconds"
FORWARDED_HEADER = "x-forwarded-for"
WANTED_HEADERS = (TOKEN_HEADER, TTL_HEADER, FORWARDED_HEADER)
"""Every request header the endpoint reads (servers may keep only these)."""
TEXT_PLAIN = "text/plain"

_STATUS_BY_ERROR: tuple[tuple[type[PodiamError], int, str], ...] = (
    # Most specific first; the reason names the metrics label and the log line.
    (BadRequestTarget, 400, "non_canonical_target"),
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


def _status_and_reason(error: Exception) -> tuple[int, str]:
    return next(((st, why) for kind, st, why in _STATUS_BY_ERROR if isinstance(error, kind)), (500, "internal"))


def status_for(error: Exception) -> int:
    """The HTTP status a pod is answered with for ``error`` (also what `podiam explain` reports)."""
    return _status_and_reason(error)[0]


def event_reason(error: PodiamError) -> str | None:
    """The Warning event reason for a refusal, or None when the pod's owner has nothing to fix."""
    if isinstance(error, NamespaceNotKnown):
        return None  # the namespace watch catches up by itself; an event would mislead
    if isinstance(error, RoleForbidden | RoleMismatch):
        return "IAMRoleForbidden"
    if isinstance(error, InvalidRoleError):
        return "IAMRoleInvalid"
    if isinstance(error, CredentialsError):
        return "IAMCredentialsFailed"
    return None


class Request:
    """One request as the core sees it. A slots class: one is built per request."""

    __slots__ = ("headers", "ip", "method", "target")

    def __init__(self, method: str, target: str, headers: Mapping[str, str], ip: str) -> None:
        self.method = method
        self.target = target
        """The request target exactly as the client sent it (undecoded, unnormalised): the core
        alone decides whether it is canonical (imds/target.py)."""
        self.headers = headers
        """Looked up by lower-case name."""
        self.ip = ip


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes = field(repr=False)
    """May hold a pod's credentials: never in repr(), so a Reply can be logged or printed."""
    content_type: str = TEXT_PLAIN
    extra_headers: tuple[tuple[str, str], ...] = ()

    @cached_property
    def head(self) -> bytes:
        """The HTTP/1.1 status line and headers, for servers that write raw bytes."""
        lines = [f"HTTP/1.1 {self.status} {HTTPStatus(self.status).phrase}", "Server: EC2ws",
                 f"Content-Type: {self.content_type}", f"Content-Length: {len(self.body)}"]
        lines += [f"{name}: {value}" for name, value in self.extra_headers]
        return ("\r\n".join(lines) + "\r\n").encode("latin-1")

    @cached_property
    def wire(self) -> bytes:
        """The whole keep-alive response, rendered once: a cached Reply is one write."""
        return self.head + b"\r\n" + self.body


def _text(status: int, body: str | bytes, extra: tuple[tuple[str, str], ...] = ()) -> Reply:
    return Reply(status, body.encode() if isinstance(body, str) else body, TEXT_PLAIN, extra)


_OK = _text(200, "ok\n")
_READY = _text(200, "ready\n")
_NOT_READY = _text(503, "not ready (the reason is on the metrics port's /readyz)\n")
_IAM_INDEX = _text(200, "info\nsecurity-credentials/")
_NO_ROUTE = Match(Route.OTHER, path=CanonicalPath("/"))
"""The route a non-canonical target is measured under: it never reached routing."""


class PodLookup(Protocol):
    """Which pod an IP is: the pod index (kube/), or any other source of pods."""

    def lookup(self, ip: str) -> PodEntry:
        """The pod now; PodNotFound or PodAmbiguous otherwise."""

    async def wait_for(self, ip: str, timeout: float) -> PodEntry: ...

    def is_host_ip(self, ip: str) -> bool: ...


class CredentialSource(Protocol):
    """Where credentials come from: the local STS cache, or (split mode) a podiam server."""

    def fresh(self, identity: Identity) -> Credentials | None:
        """Credentials that need no waiting, or None."""

    async def get(self, identity: Identity) -> Credentials: ...


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

    def __init__(self, status: int, reason: str, message: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.status, self.reason, self.headers = status, reason, headers


_STARTED = dt.datetime.now(dt.UTC)
"""iam/info's LastUpdated: when this agent started, as the instance profile's association time."""


@functools.lru_cache(maxsize=4096)
def iam_info(role_arn: str) -> Reply:
    """iam/info for a pod: an instance profile named after the pod's role, never the node's."""
    partition, account, name = role_arn.split(":")[1], role_arn.split(":")[4], role_arn.rsplit("/", 1)[-1]
    digest = base64.b32encode(hashlib.sha256(role_arn.encode()).digest()).decode()
    return _text(200, json.dumps(
        {
            "Code": "Success",
            "LastUpdated": _STARTED.strftime(IMDS_TIME_FORMAT),
            "InstanceProfileArn": f"arn:{partition}:iam::{account}:instance-profile/{name}",
            "InstanceProfileId": "AIPA" + digest[:17],
        },
        indent=2,
    ))


@functools.lru_cache(maxsize=4096)
def _role_list(role_name: str) -> Reply:
    return _text(200, role_name)


Answer = Reply | Coroutine[Any, Any, Reply]

RATE_LIMIT_LOG_INTERVAL = 60.0
"""Seconds between two log lines about one rate-limited caller; the metric counts every 429."""

MAX_RENDERED = 8192
"""Rendered credential replies kept; one per set of credentials in use, so far above need."""


class MetadataCore:
    def __init__(self, deps: ImdsDeps) -> None:
        self._d = deps
        self._latency: dict[tuple[Route, int], Any] = {}
        """Labelled histogram children, resolved once per (route, status) rather than per request."""
        self._credential_replies: dict[str, tuple[Credentials, Reply]] = {}
        """access key id -> the rendered Reply for those credentials."""
        self._rate_limit_logged: dict[str, float] = {}
        """caller -> when its last 429 was logged (monotonic seconds)."""

    def answer(self, req: Request) -> Answer:
        """The Reply, or a coroutine that produces it when something must be waited for."""
        started = time.perf_counter()
        try:
            # Before routing, rate limits and the allow-list: everything after this line
            # sees one canonical path, and the upstream request carries exactly it.
            match = classify(canonical_path(req.target))
            result = self._now(req, match, started)
        except BadRequestTarget as e:
            match = _NO_ROUTE
            result = self._refused(req, self._refuse(e))
        except _Refusal as r:
            result = self._refused(req, r)
        if isinstance(result, Reply):
            self._observe(match.route, result.status, started)
        return result

    # -- the synchronous part -------------------------------------------------------------

    def _now(self, req: Request, match: Match, started: float) -> Answer:
        route = match.route
        # Every request from a pod is on its budget, the probes too: they are as cheap to
        # send as any other and are answered on the same connections.
        wait = self._d.limiter.retry_after(req.ip)
        if wait:
            raise _Refusal(429, "rate_limited", f"more than {self._d.limiter.rate:g} requests per second from "
                           f"{req.ip}; slow down", (("Retry-After", retry_after_header(wait)),))
        if route is Route.HEALTHZ:
            return _OK
        if route is Route.READYZ:
            return _READY if self._d.ready() else _NOT_READY
        if route is Route.TOKEN:
            return self._issue_token(req)
        if req.method not in ("GET", "HEAD"):
            raise _Refusal(405, "method", f"method {req.method} is not allowed on {req.target[:200]}")
        self._check_token(req)
        # Even allow-listed paths are for this node's pods only: nothing else that can reach
        # the port (another host, the node itself) learns anything about the node.
        entry = self._caller_now(req.ip)
        if entry is None:
            return self._finish(self._after_wait(req, match), match, started)
        if route is Route.OTHER:
            return self._finish(self._proxy(req, match, entry), match, started)
        result = self._serve(req, match, entry)
        return result if isinstance(result, Reply) else self._finish(result, match, started)

    def _serve(self, req: Request, match: Match, entry: PodEntry) -> Answer:
        """The answer for a known pod; a coroutine only when its credentials are not fresh."""
        identity = self._identity(entry)
        route = match.route
        if route is Route.ROLE_LIST:
            return _role_list(identity.role_name)
        if route is Route.IAM_INDEX:
            return _IAM_INDEX
        if route is Route.IAM_INFO:
            return iam_info(identity.role_arn)
        # Route.CREDENTIALS
        if match.role != identity.role_name:
            raise self._refuse(RoleMismatch(
                f"pod {entry.pod.ref} asked for role {match.role!r} but its role is {identity.role_name!r}"
            ), entry.pod)
        creds = self._d.credentials.fresh(identity)
        if creds is None:
            return self._with_sts(req, entry, identity)
        return self._credentials_reply(entry, identity, creds)

    def _credentials_reply(self, entry: PodEntry, identity: Identity, creds: Credentials) -> Reply:
        self._d.issuance.served(entry.pod, identity, creds)
        if request_log.isEnabledFor(logging.DEBUG):
            request_log.debug("credentials served to %s for %s", entry.pod.ref, identity.role_arn)
        cached = self._credential_replies.get(creds.access_key_id)
        if cached is not None and cached[0] is creds:
            return cached[1]
        if len(self._credential_replies) >= MAX_RENDERED:
            self._credential_replies.clear()  # mostly superseded credentials; live ones re-render once
        reply = _text(200, creds.imds_json)
        self._credential_replies[creds.access_key_id] = (creds, reply)
        return reply

    def _issue_token(self, req: Request) -> Reply:
        if req.method != "PUT":
            raise _Refusal(405, "method", "the token endpoint takes PUT only")
        if FORWARDED_HEADER in req.headers:
            # As real IMDS: a token request relayed by a proxy is refused (SSRF guard).
            raise _Refusal(403, "forwarded_token_request", "token requests through a proxy are refused")
        ttl = parse_ttl(req.headers.get(TTL_HEADER))
        if ttl is None:
            raise _Refusal(400, "bad_token_ttl", f"{TTL_HEADER} must be a whole number from 1 to 21600")
        return _text(200, self._d.tokens.issue(req.ip, ttl), (("X-aws-ec2-metadata-token-ttl-seconds", str(ttl)),))

    def _check_token(self, req: Request) -> None:
        token = req.headers.get(TOKEN_HEADER)
        if token is None:
            if self._d.settings.require_imdsv2:
                raise _Refusal(401, "token_required", "IMDSv2 is required: PUT /latest/api/token first")
            return
        if not self._d.tokens.valid(token, req.ip):
            raise _Refusal(401, "invalid_token", "the metadata token is invalid, expired or not this pod's")

    def _caller_now(self, ip: str) -> PodEntry | None:
        """The pod behind ``ip`` now; None when it is not known yet (then it is waited for).

        The node's own network is answered at once, never waited for.
        """
        if self._d.pods.is_host_ip(ip):
            if self._d.host_identity is None:
                raise self._refuse(HostNetworkCaller(
                    f"{ip} is the node's own network (a hostNetwork pod or the node itself): it is not "
                    "served a pod role (see --host-network-role)"
                ))
            host = PodInfo(namespace="", name="hostNetwork", uid=f"host:{ip}", ip=ip, host_network=True)
            return PodEntry(host, self._d.host_identity, None)
        try:
            return self._d.pods.lookup(ip)
        except PodNotFound:
            return None  # waited for (up to --pod-wait), then refused, by _after_wait
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

    def _refused(self, req: Request, r: _Refusal) -> Reply:
        self._d.metrics.refusals.labels(r.reason).inc()
        if r.status != 429 or self._first_429_in_a_while(req.ip):  # a flood must not flood the log
            # Paths are the caller's: bounded in the log, as a hostile pod chooses them.
            log.info("request refused", client=req.ip, target=req.target[:200], status=r.status, reason=r.reason,
                     detail=str(r)[:500])
        return _text(r.status, str(r) + "\n", r.headers)

    def _first_429_in_a_while(self, ip: str) -> bool:
        now = time.monotonic()
        if now - self._rate_limit_logged.get(ip, -RATE_LIMIT_LOG_INTERVAL) < RATE_LIMIT_LOG_INTERVAL:
            return False
        if len(self._rate_limit_logged) >= MAX_RENDERED:
            self._rate_limit_logged.clear()
        self._rate_limit_logged[ip] = now
        return True

    def _observe(self, route: Route, status: int, started: float) -> None:
        child = self._latency.get((route, status))
        if child is None:
            child = self._latency[(route, status)] = self._d.metrics.requests.labels(route.value, str(status))
        child.observe(time.perf_counter() - started)

    # -- the parts that wait --------------------------------------------------------------

    async def _finish(self, work: Coroutine[Any, Any, Reply], match: Match, started: float) -> Reply:
        """Await ``work``; refusals become replies, and the request is measured once."""
        reply = await work
        self._observe(match.route, reply.status, started)
        return reply

    async def _after_wait(self, req: Request, match: Match) -> Reply:
        try:
            entry = await self._d.pods.wait_for(req.ip, self._d.settings.pod_wait)
        except IdentityError as e:
            return self._refused(req, self._refuse(e))
        if match.route is Route.OTHER:
            return await self._proxy(req, match, entry)
        try:
            answer = self._serve(req, match, entry)
        except _Refusal as r:
            return self._refused(req, r)
        return answer if isinstance(answer, Reply) else await answer

    async def _with_sts(self, req: Request, entry: PodEntry, identity: Identity) -> Reply:
        try:
            creds = await self._d.credentials.get(identity)
        except CredentialsError as e:
            return self._refused(req, self._refuse(e, entry.pod, warn=True))
        return self._credentials_reply(entry, identity, creds)

    async def _proxy(self, req: Request, match: Match, entry: PodEntry) -> Reply:
        """An allow-listed path from the node's IMDS, for a pod of this node; logged and counted,
        so an operator sees everything pods read from the node."""
        path, upstream = match.path, self._d.upstream
        if upstream is None or not self._d.settings.allow_route_pattern.search(path):
            return self._refused(req, _Refusal(
                404, "not_allowed", f"{path} is not served to pods (see --allow-route-regexp)"))
        try:
            resp = await upstream.get(path)
        except NodeMetadataError as e:
            self._d.metrics.proxied.labels("unreachable", "none").inc()
            return self._refused(req, self._refuse(e, warn=True))
        log.info("node metadata proxied", pod=entry.pod.ref, path=path, upstream_status=resp.status)
        # Only paths the node's IMDS has (200) become labels: invented ones must not grow the series.
        self._d.metrics.proxied.labels(proxy_route(path) if resp.status == 200 else "other", str(resp.status)).inc()
        return Reply(resp.status, resp.body, resp.content_type)
