"""Metadata path classification."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from podiam.imds.routes import Match, Route, classify


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
    ("/latest/user-data", Match(Route.OTHER)),
    ("/latest/meta-data/placement/region", Match(Route.OTHER)),
    ("/latest/meta-data/iam/security-credentials/a/b", Match(Route.OTHER)),
    ("/v1/meta-data/iam/info", Match(Route.OTHER)),
    ("latest/meta-data/iam/info", Match(Route.OTHER)),
    ("/", Match(Route.OTHER)),
    ("", Match(Route.OTHER)),
])
def test_classify(path: str, expected: Match) -> None:
    assert classify(path) == expected


@given(st.text())
def test_classify_never_fails_and_credentials_always_name_a_role(path: str) -> None:
    match = classify(path)
    if match.route is Route.CREDENTIALS:
        assert match.role and "/" not in match.role
    else:
        assert match.role is None
