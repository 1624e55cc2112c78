"""Role resolution, base ARNs, ExternalId and session names: the pure policy layer."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from podiam.errors import ConfigError, InvalidRoleError, NoRoleError, RoleForbidden
from podiam.pods import PodInfo
from podiam.policy import (
    ROLE_ARN_RE,
    SESSION_NAME_MAX,
    NamespaceRules,
    RolePolicy,
    normalise_base_arn,
    parse_namespace_rules,
    resolve_role,
    session_name,
)
from podiam.settings import RestrictionSettings, RoleSettings

BASE = "arn:aws:iam::123456789012:role/"
role_names = st.from_regex(r"[A-Za-z0-9+=,.@_-]{1,64}", fullmatch=True)
dns_labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", fullmatch=True)
pod_names = st.from_regex(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?", fullmatch=True)


def pod(annotations: dict[str, str], name: str = "web-1", namespace: str = "shop") -> PodInfo:
    return PodInfo(namespace=namespace, name=name, uid="u1", ip="10.0.0.5", phase="Running",
                   annotations=annotations)


@given(role_names)
def test_a_role_name_resolves_under_the_base_arn(name: str) -> None:
    arn = resolve_role(name, BASE)
    assert arn == BASE + name
    assert ROLE_ARN_RE.fullmatch(arn)


@given(st.sampled_from(["aws", "aws-cn", "aws-us-gov"]), st.from_regex(r"[0-9]{12}", fullmatch=True), role_names)
def test_a_full_arn_is_used_as_is_whatever_the_base(partition: str, account: str, name: str) -> None:
    arn = f"arn:{partition}:iam::{account}:role/{name}"
    assert resolve_role(arn, BASE) == arn
    assert resolve_role(arn, None) == arn


def test_paths_are_kept_and_a_leading_slash_is_folded() -> None:
    assert resolve_role("team/reader", BASE) == BASE + "team/reader"
    assert resolve_role("/team/reader", BASE) == BASE + "team/reader"
    assert resolve_role("reader", normalise_base_arn("arn:aws:iam::123456789012:role/pods")) == (
        "arn:aws:iam::123456789012:role/pods/reader"
    )


@pytest.mark.parametrize("value", [
    "", "   ", "has space", "a" * 65, "arn:aws:iam::123:role/x", "arn:aws:s3:::bucket",
    "arn:aws:iam::123456789012:user/bob", "arn:aws:iam::123456789012:role/", "reader;rm -rf",
    "ünïcode", "team//reader",
])
def test_malformed_annotations_are_refused_with_the_value_named(value: str) -> None:
    with pytest.raises(InvalidRoleError) as e:
        resolve_role(value, BASE)
    assert repr(value.strip()) in str(e.value)


@given(st.text(max_size=80))
def test_resolve_role_either_returns_a_valid_arn_or_refuses(value: str) -> None:
    try:
        arn = resolve_role(value, BASE)
    except InvalidRoleError:
        return
    assert ROLE_ARN_RE.fullmatch(arn)


def test_a_name_without_a_base_arn_says_what_to_configure() -> None:
    with pytest.raises(InvalidRoleError, match="--base-role-arn"):
        resolve_role("reader", None)


@pytest.mark.parametrize("value", ["arn:aws:iam::123456789012:user/", "role/", "arn:aws:iam::12:role/",
                                   "arn:aws:iam::123456789012:role//"])
def test_a_bad_base_arn_is_a_config_error(value: str) -> None:
    with pytest.raises(ConfigError, match="base role ARN"):
        normalise_base_arn(value)


def test_base_arn_gets_exactly_one_trailing_slash() -> None:
    assert normalise_base_arn("arn:aws:iam::123456789012:role") == BASE
    assert normalise_base_arn(BASE) == BASE


def test_surrounding_whitespace_is_ignored() -> None:
    # YAML block scalars (role: |) leave a trailing newline in the annotation.
    assert resolve_role("reader\n", BASE) == BASE + "reader"


@given(dns_labels, pod_names)
def test_session_names_fit_sts_and_are_stable(namespace: str, name: str) -> None:
    got = session_name(namespace, name)
    assert 2 <= len(got) <= SESSION_NAME_MAX
    assert re.fullmatch(r"[\w+=,.@-]+", got, re.ASCII)
    assert got == session_name(namespace, name)
    full = f"{namespace}.{name}"
    if len(full) <= SESSION_NAME_MAX:
        assert got == full


@given(dns_labels, st.text(alphabet="abcdefghij", min_size=60, max_size=100))
def test_cut_session_names_of_different_pods_differ(namespace: str, stem: str) -> None:
    assert session_name(namespace, stem + "-a") != session_name(namespace, stem + "-b")


SESSION_KEY = "iam.amazonaws.com/session-name"
STS_SESSION_RE = re.compile(r"[\w+=,.@-]{2,64}", re.ASCII)  # RoleSessionName, as STS documents it
READER = {"iam.amazonaws.com/role": "reader"}


def session_of(annotation: str, name: str = "web-1") -> str:
    policy = RolePolicy.from_settings(RoleSettings(), BASE)
    return policy.identity(pod({**READER, SESSION_KEY: annotation}, name=name)).session_name


@given(st.text(st.characters(exclude_categories=())))  # any string, lone surrogates included
def test_any_session_name_annotation_gives_a_name_sts_accepts(annotation: str) -> None:
    got = session_of(annotation)
    assert STS_SESSION_RE.fullmatch(got)
    assert got == session_of(annotation)
    if len(annotation.strip()) < 2:
        assert got == "shop.web-1"


@given(st.from_regex(STS_SESSION_RE, fullmatch=True))
def test_a_valid_session_name_annotation_is_kept_exactly(annotation: str) -> None:
    assert session_of(annotation) == annotation


@pytest.mark.parametrize("annotation", ["", "   ", "\n", "x"])
def test_a_session_name_too_short_for_sts_leaves_the_default(annotation: str) -> None:
    assert session_of(annotation) == "shop.web-1"


def test_a_malformed_session_name_is_fitted_not_refused() -> None:
    assert session_of("kafka client/é 1\n") == "kafka-client---1"
    assert session_of("  ordering-msk  ") == "ordering-msk"


@given(st.text(st.characters(exclude_categories=()), min_size=60, max_size=100))
def test_cut_session_name_annotations_that_share_a_prefix_differ(stem: str) -> None:
    assert session_of(stem + "-a") != session_of(stem + "-b")


def test_the_session_name_is_part_of_the_cache_key() -> None:
    policy = RolePolicy.from_settings(RoleSettings(), BASE)

    def identity(name: str, **annotations: str) -> object:
        return policy.identity(pod({**READER, **annotations}, name=name))

    # Same role: pods that name the same session share credentials, others do not.
    assert identity("web-1", **{SESSION_KEY: "msk"}) == identity("web-2", **{SESSION_KEY: "msk"})
    assert identity("web-1", **{SESSION_KEY: "msk"}) != identity("web-1", **{SESSION_KEY: "msk-2"})
    assert identity("web-1", **{SESSION_KEY: "msk"}) != identity("web-1")


def test_explain_says_where_the_session_name_came_from() -> None:
    policy = RolePolicy.from_settings(RoleSettings(), BASE)
    assert policy.explain(pod(READER), None)[1] == [f"role {BASE}reader from annotation iam.amazonaws.com/role",
                                                    "namespace restrictions are off"]
    _, passed = policy.explain(pod({**READER, SESSION_KEY: "msk"}), None)
    assert passed[-1] == f"session name msk from annotation {SESSION_KEY}"
    _, passed = policy.explain(pod({**READER, SESSION_KEY: "msk client"}), None)
    assert passed[-1] == f"session name msk-client from annotation {SESSION_KEY} (fitted to STS from 'msk client')"
    _, passed = policy.explain(pod({**READER, SESSION_KEY: " "}), None)
    assert passed[-1] == (f"session name shop.web-1, the default: annotation {SESSION_KEY} ' ' "
                          "is shorter than STS's 2 characters")


def test_policy_uses_the_annotation_then_the_default_role() -> None:
    policy = RolePolicy.from_settings(RoleSettings(default_role="fallback"), BASE)
    assert policy.identity(pod({"iam.amazonaws.com/role": "reader"})).role_arn == BASE + "reader"
    assert policy.identity(pod({})).role_arn == BASE + "fallback"
    assert policy.identity(pod({"iam.amazonaws.com/role": " "})).role_arn == BASE + "fallback"


def test_no_annotation_and_no_default_role_is_no_role() -> None:
    policy = RolePolicy.from_settings(RoleSettings(), BASE)
    with pytest.raises(NoRoleError, match=r"shop/web-1 has no iam\.amazonaws\.com/role annotation"):
        policy.identity(pod({}))


def test_identity_carries_session_name_and_external_id() -> None:
    policy = RolePolicy.from_settings(RoleSettings(), BASE)
    identity = policy.identity(pod({"iam.amazonaws.com/role": "reader",
                                    "iam.amazonaws.com/external-id": "ext-42"}))
    assert identity.session_name == "shop.web-1"
    assert identity.external_id == "ext-42"
    assert identity.role_name == "reader"


def test_custom_annotation_keys() -> None:
    policy = RolePolicy.from_settings(RoleSettings(role_key="example.com/role", external_id_key="example.com/x"),
                                      BASE)
    assert policy.identity(pod({"example.com/role": "r1", "iam.amazonaws.com/role": "r2"})).role_arn == BASE + "r1"


def test_a_bad_external_id_is_refused() -> None:
    policy = RolePolicy.from_settings(RoleSettings(), BASE)
    with pytest.raises(InvalidRoleError, match="ExternalId"):
        policy.identity(pod({"iam.amazonaws.com/role": "reader", "iam.amazonaws.com/external-id": "x"}))


def test_a_bad_default_role_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="--default-role"):
        RolePolicy.from_settings(RoleSettings(default_role="not a role"), BASE)


# -- namespace restrictions -----------------------------------------------------------------

RESTRICT = RestrictionSettings(enabled=True)


def rules(annotations: dict[str, str], fmt: str = "glob") -> NamespaceRules:
    return parse_namespace_rules("shop", annotations, RestrictionSettings(enabled=True, format=fmt), BASE)


def allowed(r: NamespaceRules, arn: str) -> bool:
    try:
        r.check(arn)
    except RoleForbidden:
        return False
    return True


@pytest.mark.parametrize(("entries", "role", "expected"), [
    (["reader"], "reader", True),
    (["reader"], "reader-2", False),                      # a name is exact, not a prefix
    (["team-*"], "team-a", True),
    (["team-*"], "team-a/nested", True),                  # go-glob's * crosses '/'
    (["team-*"], "other", False),
    ([BASE + "reader"], "reader", True),                  # full ARNs as written
    (["arn:aws:iam::999999999999:role/x"], "x", False),   # another account's role is another ARN
    (["*"], "anything", True),
    ([], "reader", False),
])
def test_kube2iam_glob_entries_are_normalised_with_the_base_arn(entries: list[str], role: str, expected: bool) -> None:
    assert allowed(rules({"iam.amazonaws.com/allowed-roles": json.dumps(entries)}), BASE + role) is expected


@pytest.mark.parametrize(("entries", "role", "expected"), [
    (["read.*"], "reader", True),
    (["read"], "reader", True),      # kube2iam's regexps are unanchored
    (["^x"], "reader", False),       # the base ARN comes first: ^ anchors before it
    (["(a|b)-team"], "b-team", True),
])
def test_kube2iam_regexp_entries_are_unanchored(entries: list[str], role: str, expected: bool) -> None:
    assert allowed(rules({"iam.amazonaws.com/allowed-roles": json.dumps(entries)}, "regexp"), BASE + role) is expected


@pytest.mark.parametrize(("pattern", "role", "expected"), [
    (".*", "anything", True),
    (BASE + "reader", "reader", True),
    ("reader", "reader", False),                 # anchored at both ends, over the whole ARN
    (".*:role/team-.*", "team-a", True),
    (".*:role/team-.*", "other", False),
])
def test_kiam_permitted_is_anchored_over_the_whole_arn(pattern: str, role: str, expected: bool) -> None:
    assert allowed(rules({"iam.amazonaws.com/permitted": pattern}), BASE + role) is expected


@pytest.mark.parametrize(("pattern", "role", "expected"), [
    ("reader", "reader", True),                  # searched: anywhere in the ARN
    ("team-", "my-team-a", True),
    ("^team-", "team-a", False),                 # an explicit anchor still anchors
    (":role/team-.*$", "team-a", True),
    ("team-", "other", False),
])
def test_kiam_permitted_is_searched_with_strict_regexp_disabled(pattern: str, role: str, expected: bool) -> None:
    settings = RestrictionSettings(enabled=True, strict_permitted_regexp=False)
    r = parse_namespace_rules("shop", {"iam.amazonaws.com/permitted": pattern}, settings, BASE)
    assert allowed(r, BASE + role) is expected


def test_kube2iam_entries_are_unchanged_by_the_kiam_flag() -> None:
    settings = RestrictionSettings(enabled=True, strict_permitted_regexp=False)
    r = parse_namespace_rules("shop", {"iam.amazonaws.com/allowed-roles": '["team-*"]'}, settings, BASE)
    assert allowed(r, BASE + "team-a") and not allowed(r, BASE + "my-team-a")


def test_either_annotation_may_permit() -> None:
    r = rules({"iam.amazonaws.com/allowed-roles": '["a"]', "iam.amazonaws.com/permitted": ".*/b"})
    assert allowed(r, BASE + "a")
    assert allowed(r, BASE + "b")
    assert not allowed(r, BASE + "c")


def test_no_annotation_permits_nothing() -> None:
    with pytest.raises(RoleForbidden, match="has no role annotation"):
        rules({}).check(BASE + "reader")


@pytest.mark.parametrize("annotations", [
    {"iam.amazonaws.com/allowed-roles": "not json"},
    {"iam.amazonaws.com/allowed-roles": '{"a": 1}'},
    {"iam.amazonaws.com/allowed-roles": '["ok", 3]'},
    {"iam.amazonaws.com/permitted": "(unclosed"},
    {"iam.amazonaws.com/permitted": ".*", "iam.amazonaws.com/allowed-roles": "not json"},  # fails closed
])
def test_a_malformed_annotation_permits_nothing_and_says_why(annotations: dict[str, str]) -> None:
    r = rules(annotations)
    assert r.problem
    with pytest.raises(RoleForbidden, match="permits no role"):
        r.check(BASE + "anything")


def test_a_malformed_regexp_entry_is_a_problem_not_a_crash() -> None:
    assert rules({"iam.amazonaws.com/allowed-roles": '["(x"]'}, "regexp").problem


@given(st.text(max_size=40), st.text(max_size=40))
def test_parsing_never_raises_and_malformed_never_allows(a: str, b: str) -> None:
    r = rules({"iam.amazonaws.com/allowed-roles": a, "iam.amazonaws.com/permitted": b})
    if r.problem:
        assert not allowed(r, BASE + "reader")


@given(st.lists(st.from_regex(r"[a-z*-]{1,12}", fullmatch=True), max_size=4), role_names)
def test_glob_without_star_is_equality(entries: list[str], name: str) -> None:
    r = rules({"iam.amazonaws.com/allowed-roles": json.dumps(entries)})
    exact = [e for e in entries if "*" not in e]
    if name in exact:
        assert allowed(r, BASE + name)
    if not any("*" in e for e in entries):
        assert allowed(r, BASE + name) is (name in exact)


def test_policy_applies_restrictions_and_the_default_role_rule() -> None:
    policy = RolePolicy.from_settings(RoleSettings(default_role="fallback"), BASE, RESTRICT)
    ns = rules({"iam.amazonaws.com/allowed-roles": '["reader"]'})
    assert policy.identity(pod({"iam.amazonaws.com/role": "reader"}), ns).role_arn == BASE + "reader"
    with pytest.raises(RoleForbidden, match="shop/web-1: namespace shop does not permit"):
        policy.identity(pod({"iam.amazonaws.com/role": "admin"}), ns)
    with pytest.raises(RoleForbidden):
        policy.identity(pod({}), ns)  # the default role is restricted too...
    bypass = RolePolicy.from_settings(RoleSettings(default_role="fallback"), BASE,
                                      RestrictionSettings(enabled=True, default_role_bypasses=True))
    assert bypass.identity(pod({}), ns).role_arn == BASE + "fallback"  # ...unless told otherwise
    with pytest.raises(RoleForbidden, match="not known to the agent"):
        policy.identity(pod({"iam.amazonaws.com/role": "reader"}), None)


def test_explain_lists_the_checks_that_passed() -> None:
    policy = RolePolicy.from_settings(RoleSettings(), BASE, RESTRICT)
    _, passed = policy.explain(pod({"iam.amazonaws.com/role": "reader"}),
                               rules({"iam.amazonaws.com/allowed-roles": '["read*"]'}))
    assert passed == [f"role {BASE}reader from annotation iam.amazonaws.com/role",
                      "namespace shop allows 'read*'"]


def test_session_tags_name_the_pod() -> None:
    policy = RolePolicy.from_settings(RoleSettings(session_tags=True), BASE)
    p = PodInfo(namespace="shop", name="web-1", uid="u-1", ip="10.0.0.5", service_account="web",
                annotations={"iam.amazonaws.com/role": "reader"})
    assert dict(policy.identity(p).session_tags) == {
        "kubernetes-namespace": "shop", "kubernetes-pod-name": "web-1",
        "kubernetes-pod-uid": "u-1", "kubernetes-service-account": "web"}
    assert RolePolicy.from_settings(RoleSettings(), BASE).identity(p).session_tags == ()


def test_host_network_identity() -> None:
    assert RolePolicy.from_settings(RoleSettings(), BASE).host_identity("node-1") is None
    host = RolePolicy.from_settings(RoleSettings(host_network_role="node-agent"), BASE).host_identity("node-1")
    assert host is not None
    assert (host.role_arn, host.session_name) == (BASE + "node-agent", "hostnetwork.node-1")


@given(role_names, st.text(alphabet="xyz-", max_size=6))
def test_kiam_regexps_are_anchored_at_both_ends(name: str, suffix: str) -> None:
    exact = rules({"iam.amazonaws.com/permitted": re.escape(BASE + name)})
    assert allowed(exact, BASE + name)
    assert allowed(exact, BASE + name + suffix) is (suffix == "")


@given(role_names, st.text(alphabet="xyz-", max_size=6))
def test_kube2iam_regexps_match_anywhere_after_the_base_arn(name: str, suffix: str) -> None:
    r = rules({"iam.amazonaws.com/allowed-roles": json.dumps([re.escape(name)])}, "regexp")
    assert allowed(r, BASE + name + suffix)  # unanchored, as kube2iam's regexp.MatchString
    assert not allowed(r, "arn:aws:iam::999999999999:role/" + name)  # the base ARN is part of the pattern
