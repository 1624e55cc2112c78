"""
From a pod to the AssumeRole call made for it: role annotation -> role ARN, the default
role, namespace restrictions, the ExternalId, the STS session name (kiam's annotation or
the pod's name) and session tags.

Everything here is pure and synchronous: it runs once per pod event, never per request,
and its answer (an Identity, or the IdentityError to answer with) is kept in the pod index.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from podiam.credentials import Identity
from podiam.errors import ConfigError, InvalidRoleError, NamespaceNotKnown, NoRoleError, RoleForbidden
from podiam.pods import PodInfo
from podiam.settings import RestrictionSettings, RoleSettings

_PARTITION = r"aws(?:-[a-z]+)*"
_ROLE_NAME = r"[\w+=,.@-]{1,64}"
_PATH_SEGMENT = r"[\x21-\x2e\x30-\x7e]+"  # IAM path characters, without "/"
ROLE_ARN_RE = re.compile(
    rf"arn:(?P<partition>{_PARTITION}):iam::(?P<account>\d{{12}}):role/"
    rf"(?P<path>(?:{_PATH_SEGMENT}/)*)(?P<name>{_ROLE_NAME})",
    re.ASCII,
)
BASE_ARN_RE = re.compile(rf"arn:{_PARTITION}:iam::\d{{12}}:role(?:/{_PATH_SEGMENT})*/?", re.ASCII)
RELATIVE_ROLE_RE = re.compile(rf"/?(?:{_PATH_SEGMENT}/)*{_ROLE_NAME}", re.ASCII)
EXTERNAL_ID_RE = re.compile(r"[\w+=,.@:/-]{2,1224}", re.ASCII)

MAX_ARN_LENGTH = 2048
SESSION_NAME_MAX = 64
SESSION_NAME_MIN = 2
SESSION_NAME_KEY = "iam.amazonaws.com/session-name"
"""kiam's pod annotation naming the STS session. Fixed, as in kiam, which had no flag for it."""
_SESSION_UNSAFE = re.compile(r"[^\w+=,.@-]", re.ASCII)
_SESSION_HASH_LEN = 8


def normalise_base_arn(value: str) -> str:
    """Validate a base role ARN and give it exactly one trailing slash."""
    if not BASE_ARN_RE.fullmatch(value):
        raise ConfigError(
            f"base role ARN {value!r} is not of the form arn:aws:iam::123456789012:role/ "
            "(optionally with a path, e.g. arn:aws:iam::123456789012:role/pods/)"
        )
    return value.rstrip("/") + "/"


def resolve_role(value: str, base_arn: str | None) -> str:
    """The role ARN an annotation value names: an ARN as is (cross-account), else base + value."""
    value = value.strip()
    if value.startswith("arn:"):
        if len(value) > MAX_ARN_LENGTH or not ROLE_ARN_RE.fullmatch(value):
            raise InvalidRoleError(
                f"{value!r} is not a valid IAM role ARN (expected arn:aws:iam::ACCOUNT:role/NAME)"
            )
        return value
    if not value or not RELATIVE_ROLE_RE.fullmatch(value):
        raise InvalidRoleError(
            f"{value!r} is not a valid IAM role name (letters, digits and +=,.@_- up to 64 "
            "characters, optionally after a path like team/)"
        )
    if base_arn is None:
        raise InvalidRoleError(
            f"role {value!r} is a name, not an ARN, and the agent has no base ARN: "
            "use a full role ARN or start the agent with --base-role-arn or --auto-discover-base-arn"
        )
    arn = base_arn + value.lstrip("/")
    if len(arn) > MAX_ARN_LENGTH or not ROLE_ARN_RE.fullmatch(arn):
        raise InvalidRoleError(f"{value!r} does not make a valid role ARN with base {base_arn!r}")
    return arn


def fit_session_name(name: str) -> str:
    """``name`` in STS's RoleSessionName charset (any other character becomes ``-``), at most
    64 characters; the caller makes sure it has at least 2.

    When it has to be cut, a hash of the full name keeps two long names that share a prefix
    apart. Sanitising alone can make two names equal (``a b`` and ``a/b``): they then make the
    same AssumeRole call, and so share credentials.
    """
    safe = _SESSION_UNSAFE.sub("-", name)
    if len(safe) <= SESSION_NAME_MAX:
        return safe
    # surrogatepass: the API's JSON may carry a lone surrogate, which plain UTF-8 refuses.
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:_SESSION_HASH_LEN]
    return f"{safe[: SESSION_NAME_MAX - _SESSION_HASH_LEN - 1]}-{digest}"


def session_name(namespace: str, pod: str) -> str:
    """``<namespace>.<pod>``, fitted to STS: the name shows up in CloudTrail, so it names the pod."""
    return fit_session_name(f"{namespace}.{pod}")


def glob_pattern(glob: str) -> re.Pattern[str]:
    """kube2iam's glob (ryanuber/go-glob): ``*`` matches any run of characters, ``/`` included;
    nothing else is special; the whole ARN must match."""
    return re.compile(r"\A(?:" + ".*".join(re.escape(part) for part in glob.split("*")) + r")\Z", re.DOTALL)


def _normalise_entry(entry: str, base_arn: str | None) -> str:
    """A kube2iam list entry as the ARN (pattern) it names: base ARN + name unless it is an ARN."""
    entry = entry.strip()
    if entry.startswith("arn:") or base_arn is None:
        return entry
    return base_arn + entry.lstrip("/")


@dataclass(frozen=True)
class NamespaceRules:
    """What one namespace permits, parsed once per namespace event.

    kube2iam's list and kiam's regexp each keep their own project's semantics, so migrated
    namespaces behave as before; a role is permitted when either annotation permits it. A
    malformed annotation fails closed: the namespace then permits nothing at all, and says why.
    """

    name: str
    allowed: tuple[tuple[str, re.Pattern[str]], ...] | None = None
    """kube2iam's entries (as written, compiled); None when the annotation is absent."""
    permitted: re.Pattern[str] | None = None
    """kiam's regexp; None when the annotation is absent."""
    problem: str | None = None
    """Why an annotation could not be used; set means nothing is permitted."""
    strict_permitted: bool = True
    """kiam's regexp must match the whole ARN; False (--disable-strict-namespace-regexp): anywhere in it."""

    def check(self, role_arn: str) -> str:
        """Why ``role_arn`` is permitted (a sentence); raises RoleForbidden otherwise."""
        if self.problem is not None:
            raise RoleForbidden(f"namespace {self.name} permits no role: {self.problem}")
        for written, pattern in self.allowed or ():
            if pattern.search(role_arn):  # globs are anchored at both ends; kube2iam regexps are not
                return f"namespace {self.name} allows {written!r}"
        if self.permitted is not None and (
            self.permitted.fullmatch(role_arn) if self.strict_permitted else self.permitted.search(role_arn)
        ):
            how = "" if self.strict_permitted else " (unanchored)"
            return f"namespace {self.name} permits /{self.permitted.pattern}/{how}"
        if self.allowed is None and self.permitted is None:
            raise RoleForbidden(f"namespace {self.name} has no role annotation, so it permits no role")
        raise RoleForbidden(f"namespace {self.name} does not permit role {role_arn}")


def _string_list(text: str) -> list[str]:
    entries = json.loads(text)
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        raise ValueError("not a JSON list of strings")
    return entries


def parse_namespace_rules(
    name: str, annotations: Mapping[str, str], settings: RestrictionSettings, base_arn: str | None
) -> NamespaceRules:
    """The rules of namespace ``name`` from its annotations; never raises."""
    problems: list[str] = []
    allowed: tuple[tuple[str, re.Pattern[str]], ...] | None = None
    permitted: re.Pattern[str] | None = None
    raw_list = annotations.get(settings.namespace_key)
    if raw_list is not None:
        try:
            entries = _string_list(raw_list)
            compiled = []
            for entry in entries:
                arn = _normalise_entry(entry, base_arn)
                compiled.append((entry, glob_pattern(arn) if settings.format == "glob" else re.compile(arn)))
            allowed = tuple(compiled)
        except (ValueError, re.error) as e:
            problems.append(f"annotation {settings.namespace_key} is malformed ({e}): {raw_list[:200]!r}")
    raw_regexp = annotations.get(settings.permitted_key)
    if raw_regexp is not None:
        try:
            permitted = re.compile(raw_regexp)
        except re.error as e:
            problems.append(f"annotation {settings.permitted_key} is not a valid regular expression ({e})")
    return NamespaceRules(name, allowed, permitted, "; ".join(problems) or None,
                          strict_permitted=settings.strict_permitted_regexp)


@dataclass(frozen=True)
class RolePolicy:
    """Decides the identity of a pod from its annotations, its namespace and the agent's settings."""

    role_key: str
    external_id_key: str
    base_arn: str | None
    default_role_arn: str | None
    host_network_role_arn: str | None = None
    restrictions: RestrictionSettings = field(default_factory=RestrictionSettings)
    session_tags: bool = False

    @classmethod
    def from_settings(
        cls, settings: RoleSettings, base_arn: str | None, restrictions: RestrictionSettings | None = None
    ) -> RolePolicy:
        """Build the policy; ``base_arn`` is the configured or discovered one. Raises ConfigError."""
        base = normalise_base_arn(base_arn) if base_arn else None

        def role(flag: str, value: str | None) -> str | None:
            try:
                return resolve_role(value, base) if value else None
            except InvalidRoleError as e:
                raise ConfigError(f"{flag}: {e}") from e

        return cls(settings.role_key, settings.external_id_key, base,
                   role("--default-role", settings.default_role),
                   role("--host-network-role", settings.host_network_role),
                   restrictions or RestrictionSettings(), settings.session_tags)

    def parse_namespace(self, name: str, annotations: Mapping[str, str]) -> NamespaceRules:
        return parse_namespace_rules(name, annotations, self.restrictions, self.base_arn)

    def role_arn(self, pod: PodInfo) -> str:
        """The role ARN for ``pod``; NoRoleError or InvalidRoleError otherwise."""
        return self._role(pod)[0]

    def _role(self, pod: PodInfo) -> tuple[str, bool]:
        """The role ARN and whether it is the default role."""
        value = pod.annotations.get(self.role_key)
        if value is None or not value.strip():
            if self.default_role_arn is None:
                raise NoRoleError(
                    f"pod {pod.ref} has no {self.role_key} annotation and the agent has no default role"
                )
            return self.default_role_arn, True
        try:
            return resolve_role(value, self.base_arn), False
        except InvalidRoleError as e:
            raise InvalidRoleError(f"pod {pod.ref}: annotation {self.role_key}: {e}") from None

    def explain(self, pod: PodInfo, namespace: NamespaceRules | None) -> tuple[Identity, list[str]]:
        """The identity for ``pod`` and the checks that passed, one sentence each; raises the
        IdentityError to answer with. ``namespace`` is needed when restrictions are on."""
        passed: list[str] = []
        arn, is_default = self._role(pod)
        passed.append(f"role {arn}" + (" (the default role: no annotation)" if is_default
                                       else f" from annotation {self.role_key}"))
        if not self.restrictions.enabled:
            passed.append("namespace restrictions are off")
        elif is_default and self.restrictions.default_role_bypasses:
            passed.append("the default role bypasses namespace restrictions (--default-role-bypasses-restrictions)")
        elif namespace is None:
            raise NamespaceNotKnown(f"namespace {pod.namespace} of pod {pod.ref} is not known to the agent yet")
        else:
            try:
                passed.append(namespace.check(arn))
            except RoleForbidden as e:
                raise RoleForbidden(f"pod {pod.ref}: {e}") from None
        external_id = pod.annotations.get(self.external_id_key)
        if external_id is not None and not EXTERNAL_ID_RE.fullmatch(external_id):
            raise InvalidRoleError(
                f"pod {pod.ref}: annotation {self.external_id_key} is not a valid STS ExternalId "
                "(2 to 1224 characters of letters, digits and +=,.@:/-)"
            )
        tags: tuple[tuple[str, str], ...] = ()
        if self.session_tags:
            tags = tuple((k, v) for k, v in (
                ("kubernetes-namespace", pod.namespace), ("kubernetes-pod-name", pod.name),
                ("kubernetes-pod-uid", pod.uid), ("kubernetes-service-account", pod.service_account),
            ) if v)
        name, how = self._session_name(pod)
        if how is not None:
            passed.append(how)
        identity = Identity(role_arn=arn, session_name=name, external_id=external_id, session_tags=tags)
        return identity, passed

    @staticmethod
    def _session_name(pod: PodInfo) -> tuple[str, str | None]:
        """The STS session name and, when the annotation is there, a sentence on what it gave.

        A malformed annotation is fitted, not refused: the session name only labels the
        session, and a pod should not lose its role over it. One too short for STS (empty,
        whitespace, one character) leaves the default ``<namespace>.<pod>``.
        """
        default = session_name(pod.namespace, pod.name)
        raw = pod.annotations.get(SESSION_NAME_KEY)
        if raw is None:
            return default, None
        value = raw.strip()  # YAML block scalars leave a trailing newline
        if len(value) < SESSION_NAME_MIN:
            return default, (f"session name {default}, the default: annotation {SESSION_NAME_KEY} {raw[:100]!r} "
                             f"is shorter than STS's {SESSION_NAME_MIN} characters")
        name = fit_session_name(value)
        fitted = "" if name == value else f" (fitted to STS from {value[:100]!r})"
        return name, f"session name {name} from annotation {SESSION_NAME_KEY}{fitted}"

    def identity(self, pod: PodInfo, namespace: NamespaceRules | None = None) -> Identity:
        """The AssumeRole call for ``pod``; raises the IdentityError to answer it with."""
        return self.explain(pod, namespace)[0]

    def host_identity(self, node: str) -> Identity | None:
        """The identity served to the node's own network (hostNetwork pods), if configured."""
        if self.host_network_role_arn is None:
            return None
        return Identity(self.host_network_role_arn, session_name("hostnetwork", node))
