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
from podiam.decision import KnownPods, Refusal, caller, decide, refusal
from podiam.errors import (
    BadTokenTtl,
    CredentialsError,
    ForwardedTokenRequest,
    IdentityError,
    InvalidToken,
    MethodNotAllowed,
    NodeMetadataError,
    PathNotAllowed,
    PodNotFound,
    RateLimited,
    RequestRefused,
    RoleMismatch,
    TokenRequired,
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
request_log = structlog.stdlib.get_logger("podiam.imds.requests")
"""Per-request lines, at debug level only."""
_request_level = logging.getLogger("podiam.imds.requests")
"""The same logger's stdlib side, whose isEnabledFor is cached: the hot path pays one call at info."""

TOKEN_HEADER = "x-aws-ec2-metadata-token"  # noqa: S105 - a header name
TTL_HEADER = "x-aws-ec2-metadata-token-ttl-seconds"
FORWARDED_HEADER = "x-forwarded-for"
WANTED_HEADERS = (TOKEN_HEADER, TTL_HEADER, FORWARDED_HEADER)
"""Every request header the endpoint reads (servers may keep only these)."""
TEXT_PLAIN = "text/plain"


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
        return _head(self.status, self.content_type, len(self.body), self.extra_headers)

    @cached_property
    def wire(self) -> bytes:
        """The whole keep-alive response, rendered once: a cached Reply is one write."""
        return self.head + b"\r\n" + self.body


@functools.lru_cache(maxsize=1024)
def _head(status: int, content_type: str, length: int, extra_headers: tuple[tuple[str, str], ...]) -> bytes:
    """Rendered once per distinct head: every token reply (one per SDK refresh) and every
    refusal is a new Reply, but their heads repeat."""
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "Server: EC2ws",
             f"Content-Type: {content_type}", f"Content-Length: {length}"]
    lines += [f"{name}: {value}" for name, value in extra_headers]
    return ("\r\n".join(lines) + "\r\n").encode("latin-1")


def _text(status: int, body: str | bytes, extra: tuple[tuple[str, str], ...] = ()) -> Reply:
    return Reply(status, body.encode() if isinstance(body, str) else body, TEXT_PLAIN, extra)


_OK = _text(200, "ok\n")
_READY = _text(200, "ready\n")
_NOT_READY = _text(503, "not ready (the reason is on the metrics port's /readyz)\n")
_IAM_INDEX = _text(200, "info\nsecurity-credentials/")
_NO_ROUTE = Match(Route.OTHER, path=CanonicalPath("/"))
"""The route a non-canonical target is measured under: it never reached routing."""


class PodLookup(KnownPods, Protocol):
    """Which pod an IP is (the pod index, or any other source of pods), and a bounded wait for
    one the source has not heard of yet."""

    async def wait_for(self, ip: str, timeout: float) -> PodEntry: ...

    @property
    def host_identity(self) -> Identity | None:
        """What the node's own network gets now (--host-network-role); None refuses it. Read
        per request: in split mode it is the server's, and changes with its snapshots."""

    @property
    def pod_changes(self) -> int:
        """Moves with every change that may change lookup() or is_host_ip() (ends replays)."""


class CredentialSource(Protocol):
    """Where credentials come from: the local STS cache, or (split mode) a podiam server."""

    def fresh(self, identity: Identity) -> Credentials | None:
        """Credentials that need no waiting, or None."""

    async def get(self, identity: Identity) -> Credentials: ...

    @property
    def credential_changes(self) -> int:
        """Moves with every change to what fresh() answers but the passage of time (ends replays)."""

    def replayed(self) -> None:
        """fresh()'s last answer was served again by a replay, without asking (for its metrics)."""


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
    clock: Callable[[], float] = time.monotonic
    """Seconds, for replays' lifetimes and their latency (the tokens' clock moves with it)."""


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

REPLAYED_ROUTES = frozenset({Route.CREDENTIALS, Route.ROLE_LIST, Route.IAM_INFO, Route.IAM_INDEX})
"""Routes whose 200 answer to a pod is a function of the pod index, the credentials and time only."""


class Replay:
    """A pod's answered request, and what a byte-identical repeat of it on the same connection
    is answered with: the same Reply, while nothing it was decided from has moved.

    Why: an SDK or a pod in a loop sends the very same bytes again and again on a keep-alive
    connection; parsing and deciding them again costs most of the hot path. Only a repeat whose
    answer cannot differ is replayed: the same bytes (so the same method, target and headers),
    on the same connection (so the same source IP), for a route the pod index and credentials
    alone decide (REPLAYED_ROUTES, answered 200, not the node's own network), while neither has
    changed (their change counters), within the request token's lifetime and
    ImdsSettings.replay_window. The rate limit and the metrics count every replay as the
    request it is. Anything else (or a replay refused) goes the whole way again.
    """

    __slots__ = ("credential_changes", "hit", "ip", "latency", "pod_changes", "reply", "until")

    def __init__(self, reply: Reply, *, ip: str, until: float, pod_changes: int, credential_changes: int,
                 latency: Any, hit: Callable[[], None] | None) -> None:
        self.reply, self.ip, self.until = reply, ip, until
        self.pod_changes, self.credential_changes = pod_changes, credential_changes
        self.latency = latency
        """The request histogram's child for this route and status."""
        self.hit = hit
        """Counts a credential cache hit (credentials route only)."""

    def __repr__(self) -> str:  # the Reply may hold credentials: never shown
        return f"Replay(ip={self.ip!r}, status={self.reply.status})"


class MetadataCore:
    def __init__(self, deps: ImdsDeps) -> None:
        self._d = deps
        self._metrics = deps.metrics.endpoint
        self._latency: dict[tuple[Route, int], Any] = {}
        """Labelled histogram children, resolved once per (route, status) rather than per request."""
        self._credential_replies: dict[str, tuple[Credentials, Reply]] = {}
        """access key id -> the rendered Reply for those credentials."""
        self._rate_limit_logged: dict[str, float] = {}
        """caller -> when its last 429 was logged (monotonic seconds)."""

    def answer(self, req: Request) -> Answer:
        """The Reply, or a coroutine that produces it when something must be waited for."""
        started = time.perf_counter()
        match = _NO_ROUTE
        try:
            # Before routing, rate limits and the allow-list: everything after this line
            # sees one canonical path, and the upstream request carries exactly it.
            match = classify(canonical_path(req.target))
            result = self._answer_from_memory(req, match, started)
        except RequestRefused as e:  # decided before the caller is looked up: no pod to tell
            result = self._refused(req, refusal(e))
        if isinstance(result, Reply):
            self._observe(match.route, result.status, started)
        return result

    # -- replays (see Replay) ---------------------------------------------------------------

    def replay_ticket(self, req: Request, reply: Reply) -> Replay | None:
        """What a repeat of ``req`` may be answered with; None if it must be answered again.

        Called at once after answer(req) returned ``reply``, in the same turn of the loop: the
        state read here is the state the answer was decided from.
        """
        if reply.status != 200 or self._d.pods.is_host_ip(req.ip):
            return None
        try:
            route = classify(canonical_path(req.target)).route
        except RequestRefused:
            return None
        if route not in REPLAYED_ROUTES:
            return None
        now = self._d.clock()
        lifetime = self._d.settings.replay_window
        token = req.headers.get(TOKEN_HEADER)
        if token is not None:
            lifetime = min(lifetime, self._d.tokens.seconds_left(token, req.ip))
        if lifetime <= 0:
            return None
        hit = self._d.credentials.replayed if route is Route.CREDENTIALS else None
        return Replay(reply, ip=req.ip, until=now + lifetime, pod_changes=self._d.pods.pod_changes,
                      credential_changes=self._d.credentials.credential_changes,
                      latency=self._latency_child(route, 200), hit=hit)

    def replay(self, ticket: Replay) -> Reply | None:
        """The ticket's Reply for a repeat of its request, counted as a request; None when the
        request must be answered again (answer() then decides, and counts, it)."""
        started = self._d.clock()
        if (started >= ticket.until or ticket.pod_changes != self._d.pods.pod_changes
                or ticket.credential_changes != self._d.credentials.credential_changes
                or self._d.limiter.retry_after(ticket.ip)):
            return None
        if ticket.hit is not None:
            ticket.hit()
        ticket.latency.observe(self._d.clock() - started)
        return ticket.reply

    # -- what is answered without waiting ---------------------------------------------------

    def _answer_from_memory(self, req: Request, match: Match, started: float) -> Answer:
        """The Reply when memory decides it; else the coroutine that waits (measured by _finish)."""
        route = match.route
        # Every request from a pod is on its budget, the probes too: they are as cheap to
        # send as any other and are answered on the same connections.
        wait = self._d.limiter.retry_after(req.ip)
        if wait:
            raise RateLimited(f"more than {self._d.limiter.rate:g} requests per second from {req.ip}; slow down",
                              retry_after=retry_after_header(wait))
        if route is Route.HEALTHZ:
            return _OK
        if route is Route.READYZ:
            return _READY if self._d.ready() else _NOT_READY
        if route is Route.TOKEN:
            return self._issue_token(req)
        if req.method not in ("GET", "HEAD"):
            raise MethodNotAllowed(f"method {req.method} is not allowed on {req.target[:200]}")
        self._check_token(req)
        # Even allow-listed paths are for this node's pods only: nothing else that can reach
        # the port (another host, the node itself) learns anything about the node.
        try:
            entry = caller(self._d.pods, req.ip, self._d.pods.host_identity)
        except PodNotFound:  # not indexed yet: waited for (up to --pod-wait), then refused
            return self._finish(self._after_wait(req, match), match, started)
        except IdentityError as e:
            return self._refused(req, refusal(e))
        if route is Route.OTHER:
            return self._finish(self._proxy(req, match, entry), match, started)
        result = self._serve(req, match, entry)
        return result if isinstance(result, Reply) else self._finish(result, match, started)

    def _serve(self, req: Request, match: Match, entry: PodEntry) -> Answer:
        """The answer for a known pod; a coroutine only when its credentials are not fresh."""
        identity = decide(entry)
        if isinstance(identity, Refusal):
            return self._refused(req, identity, entry.pod)
        route = match.route
        if route is Route.ROLE_LIST:
            return _role_list(identity.role_name)
        if route is Route.IAM_INDEX:
            return _IAM_INDEX
        if route is Route.IAM_INFO:
            return iam_info(identity.role_arn)
        # Route.CREDENTIALS
        if match.role != identity.role_name:
            return self._refused(req, refusal(RoleMismatch(
                f"pod {entry.pod.ref} asked for role {match.role!r} but its role is {identity.role_name!r}"
            )), entry.pod)
        creds = self._d.credentials.fresh(identity)
        if creds is None:
            return self._with_sts(req, entry, identity)
        return self._credentials_reply(entry, identity, creds)

    def _credentials_reply(self, entry: PodEntry, identity: Identity, creds: Credentials) -> Reply:
        self._d.issuance.served(entry.pod, identity, creds)
        if _request_level.isEnabledFor(logging.DEBUG):
            request_log.debug("credentials served", pod=entry.pod.ref, role_arn=identity.role_arn)
        cached = self._credential_replies.get(creds.access_key_id)
        if cached is not None and cached[0] is creds:
            return cached[1]
        if len(self._credential_replies) >= self._d.settings.rendered_replies:
            self._credential_replies.clear()  # mostly superseded credentials; live ones re-render once
        reply = _text(200, creds.imds_json)
        self._credential_replies[creds.access_key_id] = (creds, reply)
        return reply

    def _issue_token(self, req: Request) -> Reply:
        if req.method != "PUT":
            raise MethodNotAllowed("the token endpoint takes PUT only")
        if FORWARDED_HEADER in req.headers:
            # As real IMDS: a token request relayed by a proxy is refused (SSRF guard).
            raise ForwardedTokenRequest("token requests through a proxy are refused")
        ttl = parse_ttl(req.headers.get(TTL_HEADER))
        if ttl is None:
            raise BadTokenTtl(f"{TTL_HEADER} must be a whole number from 1 to 21600")
        return _text(200, self._d.tokens.issue(req.ip, ttl), (("X-aws-ec2-metadata-token-ttl-seconds", str(ttl)),))

    def _check_token(self, req: Request) -> None:
        token = req.headers.get(TOKEN_HEADER)
        if token is None:
            if self._d.settings.require_imdsv2:
                raise TokenRequired("IMDSv2 is required: PUT /latest/api/token first")
            return
        if not self._d.tokens.valid(token, req.ip):
            raise InvalidToken("the metadata token is invalid, expired or not this pod's")

    def _refused(self, req: Request, r: Refusal, pod: PodInfo | None = None, *, upstream_failed: bool = False) -> Reply:
        """The one place a refusal is carried out: counted, logged, told to the pod's owner, answered.

        ``upstream_failed``: STS or the node's IMDS failed, which the operator must hear of.
        """
        if upstream_failed:
            log.warning("credentials unavailable", reason=r.reason, detail=r.message)
        if pod is not None and r.event is not None and not pod.host_network:
            self._d.events.warn(pod, r.event, r.message)
        self._metrics.refusals.labels(r.reason).inc()
        if r.status != 429 or self._first_429_in_a_while(req.ip):  # a flood must not flood the log
            # Paths are the caller's: bounded in the log, as a hostile pod chooses them.
            log.info("request refused", client=req.ip, target=req.target[:200], status=r.status, reason=r.reason,
                     detail=r.message[:500])
        return _text(r.status, r.message + "\n", r.headers)

    def _first_429_in_a_while(self, ip: str) -> bool:
        interval, now = self._d.settings.rate_limit_log_interval, time.monotonic()
        if now - self._rate_limit_logged.get(ip, -interval) < interval:
            return False
        if len(self._rate_limit_logged) >= self._d.settings.rendered_replies:
            self._rate_limit_logged.clear()
        self._rate_limit_logged[ip] = now
        return True

    def _observe(self, route: Route, status: int, started: float) -> None:
        self._latency_child(route, status).observe(time.perf_counter() - started)

    def _latency_child(self, route: Route, status: int) -> Any:
        child = self._latency.get((route, status))
        if child is None:
            child = self._latency[(route, status)] = self._metrics.requests.labels(route.value, str(status))
        return child

    # -- the parts that wait --------------------------------------------------------------

    async def _finish(self, work: Coroutine[Any, Any, Reply], match: Match, started: float) -> Reply:
        """Await ``work`` and measure the request, once."""
        reply = await work
        self._observe(match.route, reply.status, started)
        return reply

    async def _after_wait(self, req: Request, match: Match) -> Reply:
        try:
            entry = await self._d.pods.wait_for(req.ip, self._d.settings.pod_wait)
        except IdentityError as e:
            return self._refused(req, refusal(e))
        if match.route is Route.OTHER:
            return await self._proxy(req, match, entry)
        answer = self._serve(req, match, entry)
        return answer if isinstance(answer, Reply) else await answer

    async def _with_sts(self, req: Request, entry: PodEntry, identity: Identity) -> Reply:
        try:
            creds = await self._d.credentials.get(identity)
        except CredentialsError as e:
            return self._refused(req, refusal(e), entry.pod, upstream_failed=True)
        return self._credentials_reply(entry, identity, creds)

    async def _proxy(self, req: Request, match: Match, entry: PodEntry) -> Reply:
        """An allow-listed path from the node's IMDS, for a pod of this node; logged and counted,
        so an operator sees everything pods read from the node."""
        path, upstream = match.path, self._d.upstream
        if upstream is None or not self._d.settings.allow_route_pattern.search(path):
            not_allowed = PathNotAllowed(f"{path} is not served to pods (see --allow-route-regexp)")
            return self._refused(req, refusal(not_allowed))
        try:
            resp = await upstream.get(path)
        except NodeMetadataError as e:
            self._metrics.proxied.labels("unreachable", "none").inc()
            return self._refused(req, refusal(e), upstream_failed=True)
        log.info("node metadata proxied", pod=entry.pod.ref, path=path, upstream_status=resp.status)
        # Only paths the node's IMDS has (200) become labels: invented ones must not grow the series.
        self._metrics.proxied.labels(proxy_route(path) if resp.status == 200 else "other", str(resp.status)).inc()
        return Reply(resp.status, resp.body, resp.content_type)
