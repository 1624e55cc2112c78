"""The emulator's pure parts: selector parsing, merge patches, the change log's bounds.

These are where an off-by-one or a parsing slip would make the emulator lie to the agent
about which pods it sees, so they get property tests on top of the HTTP tests.
"""

from __future__ import annotations

from typing import Any

import kmock
import pytest
from hypothesis import given
from hypothesis import strategies as st

from podiam_sandbox.kubeapi_changes import Change, ChangeLog, ResourceExpired
from podiam_sandbox.kubeapi_objects import merge_patch, patched, replaced
from podiam_sandbox.kubeapi_selectors import (
    FieldRequirement,
    FieldSelector,
    LabelRequirement,
    LabelSelector,
    SelectorError,
    read_field,
)

NAMES = st.from_regex(r"[a-z0-9]([-a-z0-9_.]{0,6}[a-z0-9])?", fullmatch=True)
LABEL_KEYS = st.builds(lambda prefix, name: prefix + name, st.sampled_from(["", "example.com/", "a.b/"]), NAMES)
LABEL_VALUES = st.one_of(st.just(""), NAMES)


@st.composite
def label_requirements(draw: st.DrawFn) -> tuple[str, LabelRequirement]:
    """A requirement in one of its spellings, and what it must parse to."""
    key = draw(LABEL_KEYS)
    operator = draw(st.sampled_from(["=", "==", "!=", "in", "notin", "exists", "!"]))
    if operator in ("in", "notin"):
        values = draw(st.lists(NAMES, min_size=1, max_size=3))
        space = draw(st.sampled_from(["", " "]))
        return f"{key} {operator} ({(',' + space).join(values)})", LabelRequirement(key, operator, frozenset(values))
    if operator == "exists":
        return key, LabelRequirement(key, "exists")
    if operator == "!":
        return f"!{key}", LabelRequirement(key, "!")
    value = draw(LABEL_VALUES)
    normalised = "!=" if operator == "!=" else "="
    return f"{key}{operator}{value}", LabelRequirement(key, normalised, frozenset({value}))


@given(st.lists(label_requirements(), min_size=1, max_size=4))
def test_label_selectors_parse_every_spelling(terms: list[tuple[str, LabelRequirement]]) -> None:
    text = ",".join(spelling for spelling, _ in terms)
    assert LabelSelector.parse(text).requirements == tuple(requirement for _, requirement in terms)


@given(label_requirements(), st.dictionaries(LABEL_KEYS, LABEL_VALUES, max_size=3))
def test_label_requirements_follow_the_api_semantics(
    term: tuple[str, LabelRequirement], labels: dict[str, str],
) -> None:
    _, requirement = term
    present = requirement.key in labels
    expected = {
        "=": present and labels.get(requirement.key) in requirement.values,
        "in": present and labels.get(requirement.key) in requirement.values,
        "!=": not present or labels[requirement.key] not in requirement.values,
        "notin": not present or labels[requirement.key] not in requirement.values,
        "exists": present,
        "!": not present,
    }[requirement.operator]
    assert LabelSelector((requirement,)).matches({"metadata": {"labels": labels}}) is expected


@pytest.mark.parametrize("text", ["a in (b", "a=b=c", "a b", "=b", "a in (b,c d)", "a,,b", "a in (-x)"])
def test_label_selectors_a_server_rejects(text: str) -> None:
    with pytest.raises(SelectorError):
        LabelSelector.parse(text)


def test_empty_selectors_match_everything() -> None:
    assert LabelSelector.parse("").matches({})
    assert FieldSelector.parse("").matches({})


FIELD_VALUES = st.text(alphabet="ab,=!\\ .-", max_size=8)


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=")


@given(st.lists(st.tuples(st.sampled_from(["spec.nodeName", "status.phase"]), st.booleans(), FIELD_VALUES),
                min_size=1, max_size=3))
def test_field_selectors_unescape_values(terms: list[tuple[str, bool, str]]) -> None:
    text = ",".join(f"{path}{'!=' if negated else '='}{escape(value)}" for path, negated, value in terms)
    expected = tuple(FieldRequirement(path, value, negated) for path, negated, value in terms)
    assert FieldSelector.parse(text).requirements == expected


def test_field_selector_operators() -> None:
    assert FieldSelector.parse("a==b").requirements == (FieldRequirement("a", "b"),)
    assert FieldSelector.parse("a!=b,").requirements == (FieldRequirement("a", "b", negated=True),)
    assert FieldSelector.parse("a=b!c").requirements == (FieldRequirement("a", "b!c"),)


@pytest.mark.parametrize("text", ["spec.nodeName", "=a", "a=b=c", "a=b\\", "a=\\x"])
def test_field_selectors_a_server_rejects(text: str) -> None:
    with pytest.raises(SelectorError):
        FieldSelector.parse(text)


@pytest.mark.parametrize(("obj", "path", "value"), [
    ({"spec": {"nodeName": "n1"}}, "spec.nodeName", "n1"),
    ({"spec": {}}, "spec.nodeName", ""),
    ({"spec": None}, "spec.nodeName", ""),
    ({"spec": {"hostNetwork": True}}, "spec.hostNetwork", "true"),
    ({"spec": {"priority": 5}}, "spec.priority", "5"),
])
def test_read_field(obj: dict[str, Any], path: str, value: str) -> None:
    assert read_field(obj, path) == value


# RFC 7386, appendix A: the merge patch test vectors.
@pytest.mark.parametrize(("target", "patch", "result"), [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    (["a", "b"], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
])
def test_merge_patch_follows_rfc_7386(target: Any, patch: Any, result: Any) -> None:
    assert merge_patch(target, patch) == result


def test_writes_keep_server_owned_fields_and_never_touch_the_old_state() -> None:
    old = {"kind": "Pod", "apiVersion": "v1",
           "metadata": {"name": "a", "namespace": "ns", "uid": "u1", "creationTimestamp": "t", "labels": {}}}
    new = patched(old, {"metadata": {"uid": "forged", "name": "b", "labels": {"x": "y"}}})
    assert new["metadata"] == {**old["metadata"], "labels": {"x": "y"}}
    assert old["metadata"]["labels"] == {}
    put = replaced(old, {"metadata": {"name": "a"}, "spec": {}})
    assert (put["kind"], put["metadata"]["uid"], put["spec"]) == ("Pod", "u1", {})


def change(log: ChangeLog) -> Change:
    version = log.next_version()
    return Change(version, kmock.resource("v1/pods"), "ADDED", {"metadata": {"resourceVersion": str(version)}}, None)


def test_the_change_log_expires_exactly_what_it_dropped() -> None:
    log = ChangeLog(limit=2)
    for _ in range(4):
        log.publish(change(log))
    assert [c.resource_version for c in log.since(2)] == [3, 4]
    with pytest.raises(ResourceExpired, match=r"^too old resource version: 1 \(2\)$"):
        log.since(1)
    log.compact(keep=0)
    assert log.since(4) == []
    with pytest.raises(ResourceExpired):
        log.since(3)


def test_changes_must_be_published_in_version_order() -> None:
    log = ChangeLog(limit=10)
    first, second = change(log), change(log)
    with pytest.raises(RuntimeError):
        log.publish(first)
    log.publish(second)
