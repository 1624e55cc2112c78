"""The one canonical form of a request target: what passes is unchanged and plainly a path,
everything else is refused with a reason (imds/target.py)."""

from __future__ import annotations

import posixpath
from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from podiam.errors import BadRequestTarget
from podiam.imds.target import canonical_path

CANONICAL = [
    "/",
    "/healthz",
    "/latest/api/token",
    "/latest/meta-data/iam/security-credentials/",
    "/latest/meta-data/iam/security-credentials/my.role+name=x,y@z-1_2",
    "/2009-04-04/meta-data/placement/region",
    "/latest/meta-data/network/interfaces/macs/0e:49:61:0f:c3:11/",
    "/latest/meta-data/...",  # three dots name a file, not a parent
]


@pytest.mark.parametrize("target", CANONICAL)
def test_canonical_targets_pass_unchanged(target: str) -> None:
    assert canonical_path(target) == target


@pytest.mark.parametrize(("target", "why"), [
    ("/latest/meta-data/placement/../iam/security-credentials/node-role", "'.' or '..' segments"),
    ("/latest/meta-data/placement/../../user-data", "'.' or '..' segments"),
    ("/latest/meta-data/placement/./region", "'.' or '..' segments"),
    ("/latest/meta-data/placement/..", "'.' or '..' segments"),
    ("/latest/meta-data/placement/%2e%2e/iam/info", "percent-encoding"),
    ("/latest/meta-data/placement/%2E%2e/iam/info", "percent-encoding"),
    ("/latest/meta-data/placement/%252e%252e/iam/info", "percent-encoding"),
    ("/latest/meta-data/placement%2f..%2fiam/info", "percent-encoding"),
    ("/latest/meta-data/placement\\..\\iam/info", "backslashes"),
    ("/latest/meta-data//placement/region", "empty segments"),
    ("//latest/meta-data/placement/region", "empty segments"),
    ("/latest/meta-data/placement/region?x=1", "no query string or fragment"),
    ("/latest/meta-data/placement/region#..", "no query string or fragment"),
    ("http://169.254.169.254/latest/meta-data/placement/region", "origin-form"),
    ("169.254.169.254:80", "origin-form"),
    ("*", "origin-form"),
    ("", "origin-form"),
    ("/latest/meta-data/placement/;/../user-data", "'.' or '..' segments"),
    ("/latest/meta-data/placement/;x", "character ';' is not allowed"),
    ("/latest/meta-data/placement/\uff0e\uff0e/iam", "is not allowed"),  # fullwidth dots
    ("/latest/meta-data/placement/reg ion", "character ' ' is not allowed"),
])
def test_every_other_spelling_is_refused_with_its_reason(target: str, why: str) -> None:
    with pytest.raises(BadRequestTarget, match="is not canonical") as caught:
        canonical_path(target)
    assert why in str(caught.value)


def test_the_refusal_quotes_a_bounded_part_of_the_target() -> None:
    with pytest.raises(BadRequestTarget) as caught:
        canonical_path("/a/../" + "x" * 10_000)
    assert len(str(caught.value)) < 300


# Characters that make paths ambiguous (dots, separators, escapes, look-alikes) and plain ones.
NASTY = st.text(alphabet=st.sampled_from(list("/.%2eEfF5cC\\?#;: ~aZ0-_@+=,\x00\uff0e\u2215")), max_size=40)
SEGMENT = st.text(alphabet=st.sampled_from(list(".-_~:@+=,aZ09")), min_size=1, max_size=12)
PLAIN = st.builds(lambda segments, slash: "/" + "/".join(segments) + (slash if segments else ""),
                  st.lists(SEGMENT.filter(lambda s: s not in (".", "..")), max_size=6), st.sampled_from(["", "/"]))


def _plainly_a_path(target: str) -> bool:
    """An oracle independent of the code under test: nothing any reader could resolve differently."""
    segments = target[1:].split("/")
    return (
        target.startswith("/")
        and target.isascii()
        and unquote(target) == target
        and not any(c in target for c in "?#\\;\x00 \t")
        and (target == "/" or posixpath.normpath(target) == target.rstrip("/"))
        and "" not in segments[:-1]
    )


@given(st.one_of(NASTY, st.text()))
def test_a_target_passes_only_unchanged_and_plainly_a_path(target: str) -> None:
    try:
        path = canonical_path(target)
    except BadRequestTarget:
        return
    assert path == target
    assert _plainly_a_path(target), target


@given(PLAIN)
def test_every_plain_path_passes(target: str) -> None:
    assert _plainly_a_path(target), target  # the generator's own check
    assert canonical_path(target) == target
