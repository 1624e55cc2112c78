"""The one decision (podiam.decision): the refusal table covers every error that can reach a
request, and the endpoint core and the index listener answer every entry as ``decide`` does."""

from __future__ import annotations

import datetime as dt

import pytest

from pod_doubles import CredentialDouble
from podiam import errors
from podiam.credentials import Credentials, Identity
from podiam.decision import REFUSALS, Refusal, caller, decide, error_for, refusal
from podiam.errors import (
    CredentialsError,
    HostNetworkCaller,
    IdentityError,
    InvalidRoleError,
    NamespaceNotKnown,
    NoRoleError,
    NoServerReachable,
    PodAmbiguous,
    PodiamError,
    PodNotFound,
    RateLimited,
    RequestRefused,
    RoleForbidden,
    StsCallFailed,
    StsUnavailable,
)
from podiam.imds.core import ImdsDeps, MetadataCore, Reply, Request
from podiam.imds.rate_limit import RateLimiter
from podiam.imds.tokens import TokenIssuer
from podiam.kube.pod_index import PodIndex
from podiam.observability.audit import IssuanceLog
from podiam.observability.metrics import Metrics
from podiam.pods import PodEntry, PodInfo
from podiam.policy import RolePolicy
from podiam.settings import ImdsSettings, RestrictionSettings, RoleSettings

BASE = "arn:aws:iam::123456789012:role/"
NOW = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
CREDS = Credentials("ASIAEXAMPLE", "secret", "token", NOW + dt.timedelta(hours=1), NOW)
CREDS_PATH = "/latest/meta-data/iam/security-credentials/"

NEVER_A_REQUEST = {errors.ConfigError, errors.KubeError, errors.NodeNotFound, errors.NodeChanged,
                   errors.IptablesError, errors.RemoteCallFailed}
"""Raised before the agent serves, or inside its background loops: never an answer."""
ABSTRACT = {PodiamError, RequestRefused}
"""Bases nothing raises as such."""

DOCUMENTED = {
    # docs/architecture.md's table, restated so that a change to a status or label is deliberate.
    "BadRequestTarget": (400, "non_canonical_target", None),
    "RateLimited": (429, "rate_limited", None),
    "MethodNotAllowed": (405, "method", None),
    "ForwardedTokenRequest": (403, "forwarded_token_request", None),
    "BadTokenTtl": (400, "bad_token_ttl", None),
    "TokenRequired": (401, "token_required", None),
    "InvalidToken": (401, "invalid_token", None),
    "PathNotAllowed": (404, "not_allowed", None),
    "PodNotFound": (404, "pod_not_found", None),
    "NoServerReachable": (503, "server_unreachable", None),
    "NoRoleError": (404, "no_role", None),
    "PodAmbiguous": (409, "ambiguous_ip", None),
    "InvalidRoleError": (403, "invalid_role", "IAMRoleInvalid"),
    "RoleForbidden": (403, "role_forbidden", "IAMRoleForbidden"),
    "NamespaceNotKnown": (403, "role_forbidden", None),
    "RoleMismatch": (403, "role_mismatch", "IAMRoleForbidden"),
    "HostNetworkCaller": (403, "host_network", None),
    "IdentityError": (403, "forbidden", None),
    "StsCallFailed": (502, "sts_error", "IAMCredentialsFailed"),
    "StsUnavailable": (504, "sts_unavailable", "IAMCredentialsFailed"),
    "CredentialsError": (502, "sts_error", "IAMCredentialsFailed"),
    "NodeMetadataError": (502, "node_metadata_unavailable", None),
}


TREE = {kind for kind in vars(errors).values() if isinstance(kind, type) and issubclass(kind, PodiamError)}
"""errors.py's one tree (private subclasses elsewhere, e.g. node/iptables.py's, are answered as their base)."""


def test_every_error_that_can_reach_a_request_has_exactly_its_own_row() -> None:
    reachable = TREE - NEVER_A_REQUEST - ABSTRACT
    assert set(REFUSALS) == reachable
    assert {kind.__name__: (row.status, row.reason, row.event) for kind, row in REFUSALS.items()} == DOCUMENTED


def test_only_a_pod_without_a_role_is_refused_without_a_warning() -> None:
    assert [kind.__name__ for kind, row in REFUSALS.items() if row.expected] == ["NoRoleError"]


def test_an_error_without_a_row_is_answered_as_its_nearest_base_and_others_as_internal() -> None:
    class StricterRule(RoleForbidden):
        pass

    assert refusal(StricterRule("no")) == Refusal(403, "role_forbidden", "no", "IAMRoleForbidden")
    assert refusal(NamespaceNotKnown("later")).event is None  # its own row wins over RoleForbidden's
    assert refusal(errors.KubeError("down")) == Refusal(500, "internal", "down")


def test_a_rate_limited_refusal_carries_its_retry_after() -> None:
    assert refusal(RateLimited("slow down", retry_after="3")).headers == (("Retry-After", "3"),)
    assert refusal(PodNotFound("x")).headers == ()


def test_decide_hands_back_the_stored_identity_itself_or_the_problems_refusal() -> None:
    pod = PodInfo("ns", "p", "u", "10.0.0.1", "Running")
    identity = Identity(BASE + "r", "ns.p")
    assert decide(PodEntry(pod, identity, None)) is identity  # the hit path allocates nothing
    assert decide(PodEntry(pod, None, RoleForbidden("not here"))) == Refusal(
        403, "role_forbidden", "not here", "IAMRoleForbidden")


def _index() -> PodIndex:
    index = PodIndex(RolePolicy.from_settings(RoleSettings(), BASE).identity, host_ips=["10.0.0.254"])
    index.replace([
        PodInfo("ns", "a", "ua", "10.0.0.1", "Running", annotations={"iam.amazonaws.com/role": "r"}),
        PodInfo("ns", "b", "ub", "10.0.0.2", "Running"),
        PodInfo("ns", "c", "uc", "10.0.0.2", "Running"),
        PodInfo("kube-system", "d", "ud", "10.0.0.253", "Running", host_network=True),
    ])
    return index


@pytest.mark.parametrize(("ip", "error"), [
    ("10.0.0.2", PodAmbiguous), ("10.0.0.9", PodNotFound), ("10.0.0.254", HostNetworkCaller),
    ("10.0.0.253", HostNetworkCaller), ("127.0.0.1", HostNetworkCaller),
])
def test_caller_refuses_what_is_not_one_pod(ip: str, error: type[PodiamError]) -> None:
    with pytest.raises(error):
        caller(_index(), ip, None)


def test_caller_gives_the_nodes_own_network_the_host_identity() -> None:
    host = Identity(BASE + "node-tools", "hostnetwork.n1")
    entry = caller(_index(), "10.0.0.253", host)
    assert (entry.identity, entry.pod.host_network, entry.pod.uid) == (host, True, "host:10.0.0.253")
    assert caller(_index(), "10.0.0.1", host).pod.name == "a"


class Events:
    def __init__(self) -> None:
        self.warned: list[tuple[str, str, str]] = []

    def warn(self, pod: PodInfo, reason: str, message: str) -> None:
        self.warned.append((pod.name, reason, message))

    def forget(self, pod: PodInfo) -> None:
        pass


class Fresh(CredentialDouble):
    def fresh(self, identity: Identity) -> Credentials | None:
        return CREDS

    async def get(self, identity: Identity) -> Credentials:
        return CREDS


# Pods as the watch reports them: (name, annotations); the namespace "locked" permits nothing.
PODS = [
    ("served", {"iam.amazonaws.com/role": "reader"}),
    ("no-role", {}),
    ("bad-role", {"iam.amazonaws.com/role": "not a role!"}),
    ("bad-external-id", {"iam.amazonaws.com/role": "reader", "iam.amazonaws.com/external-id": "x"}),
    ("locked", {"iam.amazonaws.com/role": "reader"}),
    ("unknown-namespace", {"iam.amazonaws.com/role": "reader"}),
]


@pytest.mark.parametrize(("name", "annotations"), PODS)
def test_the_endpoint_answers_each_entry_as_decide_does(name: str, annotations: dict[str, str]) -> None:
    policy = RolePolicy.from_settings(RoleSettings(), BASE, RestrictionSettings(enabled=True))
    rules = {"served": policy.parse_namespace("served", {"iam.amazonaws.com/permitted": ".*"}),
             "no-role": None, "bad-role": None, "bad-external-id": None,
             "locked": policy.parse_namespace("locked", {})}
    namespace = name if name in rules else "elsewhere"
    index = PodIndex(lambda pod: policy.identity(pod, rules.get(pod.namespace)))
    index.replace([PodInfo(namespace, name, "u1", "10.0.0.5", "Running", annotations=annotations)])
    events, metrics = Events(), Metrics()
    deps = ImdsDeps(pods=index, credentials=Fresh(), tokens=TokenIssuer(), issuance=IssuanceLog("n1"),
                    metrics=metrics, settings=ImdsSettings(), upstream=None, ready=lambda: True,
                    limiter=RateLimiter(0), events=events)
    [entry] = index.entries()
    decision = decide(entry)
    reply = MetadataCore(deps).answer(Request("GET", CREDS_PATH + "reader", {}, "10.0.0.5"))
    assert isinstance(reply, Reply)
    if isinstance(decision, Refusal):
        assert (reply.status, reply.body) == (decision.status, decision.message.encode() + b"\n")
        assert events.warned == ([(name, decision.event, decision.message)] if decision.event else [])
        assert metrics.registry.get_sample_value("podiam_imds_refusals_total", {"reason": decision.reason}) == 1
    else:
        assert name == "served"
        assert (reply.status, reply.body) == (200, CREDS.imds_json)


@pytest.mark.parametrize("error", [
    NoRoleError("pod a/b has no role"), InvalidRoleError("bad"), RoleForbidden("no"), NamespaceNotKnown("later"),
    PodAmbiguous("two"), PodNotFound("none"), HostNetworkCaller("node"), IdentityError("other"),
    StsCallFailed("denied", code="AccessDenied"), StsUnavailable("down"), CredentialsError("odd"),
    NoServerReachable("no server"),
])
def test_a_refusal_sent_as_reason_and_message_is_answered_as_the_original(error: PodiamError) -> None:
    # Split mode: the server sends (reason, message); the agent must answer byte for byte the same.
    sent = refusal(error)
    again = refusal(error_for(sent.reason, sent.message))
    assert (again.status, again.reason, again.message) == (sent.status, sent.reason, sent.message)


def test_an_unknown_reason_is_an_internal_error() -> None:
    assert refusal(error_for("from-a-newer-server", "what")).status == 500
