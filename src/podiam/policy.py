"""
From a pod to the AssumeRole call made for it: role annotation -> role ARN, the default
role, the ExternalId, and the STS session name.

Everything here is pure and synchronous: it runs once per pod event, never per request,
and its answer (an Identity, or the IdentityError to answer with) is kept in the pod index.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from podiam.credentials import Identity
from podiam.errors import ConfigError, InvalidRoleError, NoRoleError
from podiam.pods import PodInfo
from podiam.settings import RoleSettings

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


def session_name(namespace: str, pod: str) -> str:
    """``<namespace>.<pod>`` in STS's RoleSessionName charset, at most 64 characters.

    The name shows up in CloudTrail, so it names the pod; when it has to be cut, a hash of
    the full name keeps two long names that share a prefix apart.
    """
    full = f"{namespace}.{pod}"
    safe = _SESSION_UNSAFE.sub("-", full)
    if len(safe) <= SESSION_NAME_MAX:
        return safe
    digest = hashlib.sha256(full.encode()).hexdigest()[:_SESSION_HASH_LEN]
    return f"{safe[: SESSION_NAME_MAX - _SESSION_HASH_LEN - 1]}-{digest}"


@dataclass(frozen=True)
class RolePolicy:
    """Decides the identity of a pod from its annotations and the agent's role settings."""

    role_key: str
    external_id_key: str
    base_arn: str | None
    default_role_arn: str | None

    @classmethod
    def from_settings(cls, settings: RoleSettings, base_arn: str | None) -> RolePolicy:
        """Build the policy; ``base_arn`` is the configured or discovered one. Raises ConfigError."""
        base = normalise_base_arn(base_arn) if base_arn else None
        default = None
        if settings.default_role:
            try:
                default = resolve_role(settings.default_role, base)
            except InvalidRoleError as e:
                raise ConfigError(f"--default-role: {e}") from e
        return cls(settings.role_key, settings.external_id_key, base, default)

    def role_arn(self, pod: PodInfo) -> str:
        """The role ARN for ``pod``; NoRoleError or InvalidRoleError otherwise."""
        value = pod.annotations.get(self.role_key)
        if value is None or not value.strip():
            if self.default_role_arn is None:
                raise NoRoleError(
                    f"pod {pod.ref} has no {self.role_key} annotation and the agent has no default role"
                )
            return self.default_role_arn
        try:
            return resolve_role(value, self.base_arn)
        except InvalidRoleError as e:
            raise InvalidRoleError(f"pod {pod.ref}: annotation {self.role_key}: {e}") from None

    def identity(self, pod: PodInfo) -> Identity:
        """The AssumeRole call for ``pod``; raises the IdentityError to answer it with."""
        arn = self.role_arn(pod)
        external_id = pod.annotations.get(self.external_id_key)
        if external_id is not None and not EXTERNAL_ID_RE.fullmatch(external_id):
            raise InvalidRoleError(
                f"pod {pod.ref}: annotation {self.external_id_key} is not a valid STS ExternalId "
                "(2 to 1224 characters of letters, digits and +=,.@:/-)"
            )
        return Identity(role_arn=arn, session_name=session_name(pod.namespace, pod.name),
                        external_id=external_id)
