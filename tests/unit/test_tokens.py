"""IMDSv2 tokens: bound to the issuing IP, expiring, unforgeable."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from podiam.imds.tokens import TokenIssuer, parse_ttl


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_token_is_valid_from_its_ip_until_it_expires() -> None:
    clock = Clock()
    issuer = TokenIssuer(clock=clock)
    token = issuer.issue("10.0.0.5", 60)
    assert issuer.valid(token, "10.0.0.5")
    assert not issuer.valid(token, "10.0.0.6")
    clock.now += 59
    assert issuer.valid(token, "10.0.0.5")
    clock.now += 1
    assert not issuer.valid(token, "10.0.0.5")


def test_tokens_of_another_process_are_refused() -> None:
    assert not TokenIssuer().valid(TokenIssuer().issue("10.0.0.5", 60), "10.0.0.5")


def test_ipv6_callers_get_tokens_too() -> None:
    issuer = TokenIssuer()
    assert issuer.valid(issuer.issue("fd00::5", 60), "fd00::5")
    assert not issuer.valid(issuer.issue("fd00::5", 60), "10.0.0.5")


@given(st.text(max_size=200))
def test_garbage_is_never_a_valid_token(token: str) -> None:
    assert not TokenIssuer().valid(token, "10.0.0.5")


def test_a_tampered_token_is_refused() -> None:
    issuer = TokenIssuer()
    token = issuer.issue("10.0.0.5", 60)
    flipped = token[:3] + ("A" if token[3] != "A" else "B") + token[4:]
    assert not issuer.valid(flipped, "10.0.0.5")


@pytest.mark.parametrize(("header", "ttl"), [
    ("1", 1), ("21600", 21600), (" 60 ", 60), (None, None), ("", None), ("0", None), ("21601", None),
    ("-5", None), ("1.5", None), ("abc", None), ("٣", None),
])
def test_parse_ttl(header: str | None, ttl: int | None) -> None:
    assert parse_ttl(header) == ttl


def test_issue_refuses_out_of_range_ttls() -> None:
    with pytest.raises(ValueError, match="TTL"):
        TokenIssuer().issue("10.0.0.5", 0)
