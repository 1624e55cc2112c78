"""
The decision for one caller of the metadata endpoint, made by one piece of code for every
consumer: the endpoint (imds/core.py), the pod index listener that acts when a pod is
decided (prefetch.py), `podiam explain`, and later the split-mode server that sends each
agent its pods' decisions. What they share:

- ``caller(pods, ip, host_identity)``: who an IP is (the node's own network, the one pod
  indexed with it, or nobody yet), raising the IdentityError the caller is refused with;
- ``decide(entry)``: the entry's Identity, or the Refusal it is answered with;
- ``refusal(error)``: the Refusal for any podiam error, from ``REFUSALS``, the one table of
  status, reason label and event reason by error type.

Pure and synchronous, so a cache hit costs a function call here and nothing more: ``decide``
hands back the identity policy stored in the entry, allocating nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol

from podiam.credentials import Identity
from podiam.errors import (
    BadRequestTarget,
    BadTokenTtl,
    CredentialsError,
    ForwardedTokenRequest,
    HostNetworkCaller,
    IdentityError,
    InvalidRoleError,
    InvalidToken,
    MethodNotAllowed,
    NamespaceNotKnown,
    NodeMetadataError,
    NoRoleError,
    NoServerReachable,
    PathNotAllowed,
    PodAmbiguous,
    PodiamError,
    PodNotFound,
    RateLimited,
    RoleForbidden,
    RoleMismatch,
    StsCallFailed,
    StsUnavailable,
    TokenRequired,
)
from podiam.pods import PodEntry, PodInfo


class Row(NamedTuple):
    status: int
    reason: str
    """The label of podiam_imds_refusals_total and of the log line."""
    event: str | None = None
    """The Warning event reason for the pod's owner; None when the owner has nothing to fix."""
    expected: bool = False
    """Refusing is the normal state of such a pod (it names no role): nobody is warned."""


REFUSALS: dict[type[PodiamError], Row] = {
    # Looked up along the error's MRO, so a subclass without a row is answered as its base.
    BadRequestTarget: Row(400, "non_canonical_target"),
    RateLimited: Row(429, "rate_limited"),
    MethodNotAllowed: Row(405, "method"),
    ForwardedTokenRequest: Row(403, "forwarded_token_request"),
    BadTokenTtl: Row(400, "bad_token_ttl"),
    TokenRequired: Row(401, "token_required"),
    InvalidToken: Row(401, "invalid_token"),
    PathNotAllowed: Row(404, "not_allowed"),
    PodNotFound: Row(404, "pod_not_found"),
    # Split mode: the pod may well exist; the agent cannot learn of it. Retrying helps.
    NoServerReachable: Row(503, "server_unreachable"),
    NoRoleError: Row(404, "no_role", expected=True),
    PodAmbiguous: Row(409, "ambiguous_ip"),
    InvalidRoleError: Row(403, "invalid_role", "IAMRoleInvalid"),
    RoleForbidden: Row(403, "role_forbidden", "IAMRoleForbidden"),
    # The namespace watch catches up by itself: an event would send the owner looking for nothing.
    NamespaceNotKnown: Row(403, "role_forbidden"),
    RoleMismatch: Row(403, "role_mismatch", "IAMRoleForbidden"),
    HostNetworkCaller: Row(403, "host_network"),
    IdentityError: Row(403, "forbidden"),
    StsCallFailed: Row(502, "sts_error", "IAMCredentialsFailed"),
    StsUnavailable: Row(504, "sts_unavailable", "IAMCredentialsFailed"),
    CredentialsError: Row(502, "sts_error", "IAMCredentialsFailed"),
    NodeMetadataError: Row(502, "node_metadata_unavailable"),
}
"""Error type -> how a request is answered when refused with it. Errors that never reach a
request (ConfigError, KubeError, IptablesError) have no row: answered 500 ``internal``."""

_INTERNAL = Row(500, "internal")

EVENT_REASONS = frozenset(row.event for row in REFUSALS.values() if row.event is not None)
"""The Warning event reasons podiam writes for pods: what a split agent may report (remote/reports.py)."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """How a request is refused: what the endpoint answers, counts, logs and tells the pod's owner."""

    status: int
    reason: str
    """The label of podiam_imds_refusals_total and of the log line."""
    message: str
    """The reply's body (without its newline): written for the pod's owner, never a secret."""
    event: str | None = None
    """The Warning event reason, or None when the pod's owner has nothing to fix."""
    expected: bool = False
    """Refusing is the normal state of such a pod (no role): logged at debug, not warning."""
    headers: tuple[tuple[str, str], ...] = ()


def refusal(error: PodiamError) -> Refusal:
    """The Refusal a request is answered with for ``error`` (the row of its most specific type)."""
    row = next((r for kind in type(error).__mro__ if (r := REFUSALS.get(kind)) is not None), _INTERNAL)
    headers = (("Retry-After", error.retry_after),) if isinstance(error, RateLimited) else ()
    return Refusal(row.status, row.reason, str(error), row.event, row.expected, headers)


def _error_by_reason() -> dict[str, type[PodiamError]]:
    """Reason label -> the most general error type with that label (REFUSALS inverted), for
    the errors a decision can hold: a pod's (IdentityError) and an identity's (CredentialsError)."""
    by_reason: dict[str, type[PodiamError]] = {}
    for kind, row in REFUSALS.items():
        if not issubclass(kind, IdentityError | CredentialsError):
            continue  # decided per request, on the agent: they never cross the wire
        known = by_reason.get(row.reason)
        if known is None or issubclass(known, kind):
            by_reason[row.reason] = kind
    return by_reason


_ERROR_BY_REASON = _error_by_reason()


def error_for(reason: str, message: str) -> PodiamError:
    """The podiam error that ``refusal`` answers with (status, reason, message) as
    ``Refusal(reason, message)`` was: how a refusal decided elsewhere (split mode's server)
    becomes an error again. Where several types share a label (RoleForbidden and
    NamespaceNotKnown, StsCallFailed and CredentialsError) it is their common base, whose
    answer is the same; an unknown label (a newer server) is answered as an internal error."""
    kind = _ERROR_BY_REASON.get(reason, PodiamError)
    return kind(message)


def decide(entry: PodEntry) -> Identity | Refusal:
    """What a pod's credentials request gets: the identity policy gave it, or its refusal."""
    if entry.identity is not None:
        return entry.identity
    assert entry.problem is not None  # policy gives an entry one or the other
    return refusal(entry.problem)


class KnownPods(Protocol):
    """Which pod an IP is, from what is known now: the pod index (kube/), or a split-mode feed."""

    def lookup(self, ip: str) -> PodEntry:
        """The one active pod with ``ip``; PodNotFound or PodAmbiguous otherwise."""

    def is_host_ip(self, ip: str) -> bool:
        """Whether ``ip`` is the node's own (a hostNetwork pod's, the node's, loopback)."""


def caller(pods: KnownPods, ip: str, host_identity: Identity | None) -> PodEntry:
    """The entry that answers ``ip``; raises HostNetworkCaller, PodNotFound or PodAmbiguous.

    The node's own network is decided before any pod: a hostNetwork pod shares the node's
    IP, so it can only get the node's identity (--host-network-role), never a pod role.
    """
    if pods.is_host_ip(ip):
        if host_identity is None:
            raise HostNetworkCaller(
                f"{ip} is the node's own network (a hostNetwork pod or the node itself): it is not "
                "served a pod role (see --host-network-role)"
            )
        # A stand-in pod, named for the audit log; host_network, so its owner is never warned.
        host = PodInfo(namespace="", name="hostNetwork", uid=f"host:{ip}", ip=ip, host_network=True)
        return PodEntry(host, host_identity, None)
    return pods.lookup(ip)
