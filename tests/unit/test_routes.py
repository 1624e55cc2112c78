"""Metadata path classification."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from podiam.imds.routes import Match, Route, classify, proxy_route
from podiam.imds.target import CanonicalPath


def other(path: str) -> Match:
    return Match(Route.OTHER, path=CanonicalPath(path))


@pytest.mark.parametrize(("path", "expected"), [
    ("/latest/api/token", Match(Route.TOKEN)),
    ("/latest/meta-data/iam/security-credentials", Match(Route.ROLE_LIST)),
    ("/latest/meta-data/iam/security-credentials/", Match(Route.ROLE_LIST)),
    ("/latest/meta-data/iam/security-credentials/reader", Match(Route.CREDENTIALS, "reader")),
    ("/latest/meta-data/iam/security-credentials/reader/", Match(Route.CREDENTIALS, "reader")),
    ("/2009-04-04/meta-data/iam/security-credentials/reader", Match(Route.CREDENTIALS, "reader")),
    ("/latest/meta-data/iam/info", Match(Route.IAM_INFO)),
    ("/latest/meta-data/iam/", Match(Route.IAM_INDEX)),
    ("/latest/meta-data/iam", Match(Route.IAM_INDEX)),
    ("/healthz", Match(Route.HEALTHZ)),
    ("/readyz", Match(Route.READYZ)),
    ("/latest/user-data", other("/latest/user-data")),
    ("/latest/meta-data/placement/region", other("/latest/meta-data/placement/region")),
    ("/latest/meta-data/iam/security-credentials/a/b", other("/latest/meta-data/iam/security-credentials/a/b")),
    ("/v1/meta-data/iam/info", other("/v1/meta-data/iam/info")),
    ("latest/meta-data/iam/info", other("latest/meta-data/iam/info")),
    ("/", other("/")),
    ("", other("")),
])
def test_classify(path: str, expected: Match) -> None:
    assert classify(CanonicalPath(path)) == expected


@given(st.text())
def test_classify_never_fails_and_credentials_always_name_a_role(path: str) -> None:
    match = classify(CanonicalPath(path))
    if match.route is Route.CREDENTIALS:
        assert match.role and "/" not in match.role
    else:
        assert match.role is None
    # Only a request that may be proxied carries its path; it is the path it was given.
    assert match.path == (path if match.route is Route.OTHER else "")


@pytest.mark.parametrize(("path", "label"), [
    ("/latest/meta-data/placement/region", "meta-data/placement/region"),
    ("/2009-04-04/dynamic/instance-identity/document", "dynamic/instance-identity/document"),
    ("/unversioned/path", "/unversioned/path"),
])
def test_proxy_route_labels_drop_the_version(path: str, label: str) -> None:
    assert proxy_route(CanonicalPath(path)) == label
