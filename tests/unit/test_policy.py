"""Role resolution, base ARNs, ExternalId and session names: the pure policy layer."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from podiam.errors import ConfigError, InvalidRoleError, NoRoleError
from podiam.pods import PodInfo
from podiam.policy import (
    ROLE_ARN_RE,
    SESSION_NAME_MAX,
    RolePolicy,
    normalise_base_arn,
    resolve_role,
    session_name,
)
from podiam.settings import RoleSettings

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
