"""
Label and field selectors, parsed and matched as the Kubernetes API server does.

The agent watches only its own node's pods (``fieldSelector=spec.nodeName=NODE``); whether
it sees a pod depends on the server applying the selector, including on every change of
the pod. So the emulator must apply selectors exactly, and reject the ones a real server
rejects (HTTP 400), instead of silently serving everything.

Supported, as in the API server:

- labels: ``k=v``, ``k==v``, ``k!=v``, ``k in (a,b)``, ``k notin (a,b)``, ``k``, ``!k``;
  ``!=`` and ``notin`` also match objects without the label;
- fields: ``path=v``, ``path==v``, ``path!=v``, comma-separated, values escaped as the
  server escapes them (a backslash before a backslash, a comma or an equals sign).
  Any dotted path is accepted (the real server allows a per-resource list, which always
  includes metadata.name and metadata.namespace, and for pods spec.nodeName and
  status.phase); a missing field reads as the empty string, as it does for the server.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

_LABEL_KEY = r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?/)?[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?"
_LABEL_VALUE = r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_SET_TERM = re.compile(rf"^(?P<key>{_LABEL_KEY})\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)$")
_EQUALITY_TERM = re.compile(rf"^(?P<key>{_LABEL_KEY})\s*(?P<op>==|!=|=)\s*(?P<value>{_LABEL_VALUE})$")
_EXISTS_TERM = re.compile(rf"^(?P<bang>!?)\s*(?P<key>{_LABEL_KEY})$")
_VALUE = re.compile(rf"^{_LABEL_VALUE}$")

LabelOperator = Literal["=", "!=", "in", "notin", "exists", "!"]


class SelectorError(ValueError):
    """A selector the API server would reject with 400 Bad Request."""


@dataclass(frozen=True)
class LabelRequirement:
    """One comma-separated term of a label selector."""

    key: str
    operator: LabelOperator
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether the labels satisfy this term; absent labels satisfy ``!=`` and ``notin``."""
        present = self.key in labels
        value = labels.get(self.key)
        match self.operator:
            case "=" | "in":
                return present and value in self.values
            case "!=" | "notin":
                return not present or value not in self.values
            case "exists":
                return present
            case "!":
                return not present
        raise AssertionError(self.operator)  # pragma: no cover  # exhaustive


@dataclass(frozen=True)
class LabelSelector:
    """A conjunction of label requirements; the empty selector matches everything."""

    requirements: tuple[LabelRequirement, ...] = ()

    @classmethod
    def parse(cls, text: str) -> LabelSelector:
        """Parse the ``labelSelector`` query parameter; raise SelectorError as a server would."""
        terms = [term.strip() for term in _split_outside_parentheses(text)]
        if terms == [""]:
            return cls()
        return cls(tuple(_parse_label_term(term) for term in terms))

    def matches(self, obj: Mapping[str, Any]) -> bool:
        """Whether the object's metadata.labels satisfy every requirement."""
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(requirement.matches(labels) for requirement in self.requirements)


@dataclass(frozen=True)
class FieldRequirement:
    """One ``path=value`` or ``path!=value`` term of a field selector."""

    path: str
    value: str
    negated: bool = False

    def matches(self, obj: Mapping[str, Any]) -> bool:
        """Compare the field's string form, as the server's field sets do."""
        return (read_field(obj, self.path) == self.value) != self.negated


@dataclass(frozen=True)
class FieldSelector:
    """A conjunction of field requirements; the empty selector matches everything."""

    requirements: tuple[FieldRequirement, ...] = ()

    @classmethod
    def parse(cls, text: str) -> FieldSelector:
        """Parse the ``fieldSelector`` query parameter; raise SelectorError as a server would."""
        return cls(tuple(_parse_field_term(term) for term in _split_escaped(text)))

    def matches(self, obj: Mapping[str, Any]) -> bool:
        """Whether the object satisfies every requirement."""
        return all(requirement.matches(obj) for requirement in self.requirements)


def read_field(obj: Mapping[str, Any], path: str) -> str:
    """The string form of a dotted field; missing fields read as "" (unbound pods: spec.nodeName=)."""
    value: Any = obj
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return ""
        value = value[part]
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _parse_label_term(term: str) -> LabelRequirement:
    if match := _SET_TERM.match(term):
        values = frozenset(value.strip() for value in match["values"].split(","))
        if not all(_VALUE.match(value) for value in values):
            raise SelectorError(f"invalid label value in {term!r}")
        operator: LabelOperator = "in" if match["op"] == "in" else "notin"
        return LabelRequirement(match["key"], operator, values)
    if match := _EQUALITY_TERM.match(term):
        operator = "!=" if match["op"] == "!=" else "="
        return LabelRequirement(match["key"], operator, frozenset({match["value"]}))
    if match := _EXISTS_TERM.match(term):
        return LabelRequirement(match["key"], "!" if match["bang"] else "exists")
    raise SelectorError(f"unable to parse requirement: {term!r}")


def _parse_field_term(term: str) -> FieldRequirement:
    """``path<op>value``, split at the first unescaped operator, as fields.ParseSelector does."""
    index = 0
    while index < len(term):
        if term[index] == "\\":
            index += 2
            continue
        for operator in ("!=", "==", "="):
            if term.startswith(operator, index):
                if index == 0:
                    raise SelectorError(f"invalid field selector: {term!r}: no field before {operator!r}")
                value = _unescape(term[index + len(operator):])
                return FieldRequirement(term[:index], value, negated=operator == "!=")
        index += 1
    raise SelectorError(f"invalid field selector: {term!r}: expected an operator (=, ==, !=)")


def _split_outside_parentheses(text: str) -> list[str]:
    """Split on commas that are not inside ``in (...)`` value lists."""
    parts: list[str] = []
    depth = 0
    start = 0
    for index, char in enumerate(text):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return parts


def _split_escaped(text: str) -> list[str]:
    """Split on commas not escaped by a backslash; empty terms are skipped, as by the server."""
    parts: list[str] = []
    start = index = 0
    while index < len(text):
        if text[index] == "\\":
            index += 2
        elif text[index] == ",":
            parts.append(text[start:index])
            index = start = index + 1
        else:
            index += 1
    parts.append(text[start:])
    return [part for part in parts if part]


def _unescape(value: str) -> str:
    """As fields.UnescapeValue: a backslash escapes only itself, "," and "="; bare "," and "=" are errors."""
    result: list[str] = []
    escaped = False
    for char in value:
        if escaped:
            if char not in "\\,=":
                raise SelectorError(f"invalid escape sequence \\{char} in field selector value {value!r}")
            result.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char in ",=":
            raise SelectorError(f"unescaped {char!r} in field selector value {value!r}")
        else:
            result.append(char)
    if escaped:
        raise SelectorError(f"field selector value {value!r} ends with a lone backslash")
    return "".join(result)


@dataclass(frozen=True)
class ObjectFilter:
    """Everything that narrows a list or watch: the URL's namespace and name, and both selectors."""

    namespace: str | None = None
    name: str | None = None
    labels: LabelSelector = LabelSelector()
    fields: FieldSelector = FieldSelector()

    def matches(self, obj: Mapping[str, Any]) -> bool:
        """Whether a list or watch with these parameters includes the object."""
        metadata = obj.get("metadata") or {}
        if self.namespace is not None and metadata.get("namespace") != self.namespace:
            return False
        if self.name is not None and metadata.get("name") != self.name:
            return False
        return self.labels.matches(obj) and self.fields.matches(obj)
