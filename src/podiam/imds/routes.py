"""
Which metadata route a canonical request path is (imds/target.py decides canonical form
first). Pure string work, no framework: both servers use it; it is fuzzed on its own.

Every version prefix is served alike: ``latest`` or a dated one such as ``2009-04-04``.
"""

from __future__ import annotations

import enum
import functools
import re
from dataclasses import dataclass

from podiam.imds.target import CanonicalPath

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


_NO_PATH = CanonicalPath("")


@dataclass(frozen=True)
class Match:
    route: Route
    role: str | None = None
    """The ROLE of a CREDENTIALS request, as the caller wrote it."""
    path: CanonicalPath = _NO_PATH
    """Of an OTHER request: the path that is checked against the allow-list and, if allowed,
    sent to the node's IMDS as it is. Empty for the other routes, which never leave podiam."""


@functools.lru_cache(maxsize=4096)
def classify(path: CanonicalPath) -> Match:
    """The route of a canonical request path.

    Cached, as canonical_path is: every request asks it, a new connection's too (the SDKs'
    pattern), and a pod's paths are few; the bound holds against a pod inventing paths."""
    if path == "/healthz":
        return Match(Route.HEALTHZ)
    if path == "/readyz":
        return Match(Route.READYZ)
    parts = path.split("/")
    # parts[0] is "" for a path starting with "/"; parts[1] the version.
    if len(parts) < 3 or parts[0] != "" or not _VERSION_RE.fullmatch(parts[1]):
        return Match(Route.OTHER, path=path)
    rest = parts[2:]
    if rest == ["api", "token"]:
        return Match(Route.TOKEN)
    if rest[:2] != ["meta-data", "iam"]:
        return Match(Route.OTHER, path=path)
    tail = rest[2:]
    if tail in ([], [""]):
        return Match(Route.IAM_INDEX)
    if tail == ["info"]:
        return Match(Route.IAM_INFO)
    if tail[0] != "security-credentials":
        return Match(Route.OTHER, path=path)
    if tail[1:] in ([], [""]):
        return Match(Route.ROLE_LIST)
    if len(tail) == 2 or (len(tail) == 3 and tail[2] == ""):
        return Match(Route.CREDENTIALS, role=tail[1])
    return Match(Route.OTHER, path=path)


def proxy_route(path: CanonicalPath) -> str:
    """A proxied path without its version prefix, as a metrics label (``meta-data/placement/region``)."""
    parts = path.split("/", 2)
    return parts[2] if len(parts) == 3 and _VERSION_RE.fullmatch(parts[1]) else path
