"""
Which metadata route a request path is. Pure string work, no framework: the aiohttp app
uses it today and a dedicated fast path can use it tomorrow; it is fuzzed on its own.

Every version prefix is served alike: ``latest`` or a dated one such as ``2009-04-04``.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

_VERSION_RE = re.compile(r"latest|\d{4}-\d{2}-\d{2}", re.ASCII)


class Route(enum.Enum):
    TOKEN = "token"  # noqa: S105 - a route name, not a secret
    """PUT /latest/api/token: issue an IMDSv2 session token."""
    IAM_INDEX = "iam_index"
    """/latest/meta-data/iam/: lists info and security-credentials/."""
    ROLE_LIST = "role_list"
    """/latest/meta-data/iam/security-credentials/: the pod's role name."""
    CREDENTIALS = "credentials"
    """/latest/meta-data/iam/security-credentials/ROLE: the pod's credentials."""
    IAM_INFO = "iam_info"
    """/latest/meta-data/iam/info: synthesized for the pod's role."""
    HEALTHZ = "healthz"
    READYZ = "readyz"
    OTHER = "other"
    """Anything else: proxied when allow-listed, else 404."""


@dataclass(frozen=True)
class Match:
    route: Route
    role: str | None = None
    """The ROLE of a CREDENTIALS request, as the caller wrote it."""


_OTHER = Match(Route.OTHER)


def classify(path: str) -> Match:
    """The route of a request path (without query string)."""
    if path == "/healthz":
        return Match(Route.HEALTHZ)
    if path == "/readyz":
        return Match(Route.READYZ)
    parts = path.split("/")
    # parts[0] is "" for a path starting with "/"; parts[1] the version.
    if len(parts) < 3 or parts[0] != "" or not _VERSION_RE.fullmatch(parts[1]):
        return _OTHER
    rest = parts[2:]
    if rest == ["api", "token"]:
        return Match(Route.TOKEN)
    if rest[:2] != ["meta-data", "iam"]:
        return _OTHER
    tail = rest[2:]
    if tail in ([], [""]):
        return Match(Route.IAM_INDEX)
    if tail == ["info"]:
        return Match(Route.IAM_INFO)
    if tail[0] != "security-credentials":
        return _OTHER
    if tail[1:] in ([], [""]):
        return Match(Route.ROLE_LIST)
    if len(tail) == 2 or (len(tail) == 3 and tail[2] == ""):
        return Match(Route.CREDENTIALS, role=tail[1])
    return _OTHER
