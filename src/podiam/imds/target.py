"""
The one canonical form of a metadata request target, decided before anything else looks
at it: routing, the allow-list and the upstream request all see exactly this string.

Why so strict: every way of spelling a path differently from its canonical form is a way
to get a string that one component reads as an allowed path and another resolves to a
forbidden one. Releases up to 0.1.0 matched the allow-list against the raw target and
then let the HTTP client resolve dot segments, so
``/latest/meta-data/placement/../iam/security-credentials/NODE_ROLE`` reached the node's
credentials. Rather than normalise (and then have to prove that every later reader
normalises the same way), podiam refuses every target that is not already canonical.
No SDK sends anything else: they all ask for fixed, plain paths.

A canonical target is origin-form (starts with ``/``), ASCII, and made of segments of
``A-Z a-z 0-9 - . _ ~ : @ + = ,`` (RFC 3986's unreserved characters and the few
sub-delimiters that IAM role names and MAC addresses use), where no segment is ``.`` or
``..`` and no segment is empty except a final one (``security-credentials/``). Refused
with 400, each with its own message:

- an absolute-form (``http://host/...``), authority-form or asterisk-form target;
- a query (``?``) or fragment (``#``): IMDS reads neither;
- any percent-encoding (``%2e``, ``%2F``, ``%252e``...): no IMDS path needs one;
- a dot segment, an empty segment (``//``), a backslash, or any other character.
"""

from __future__ import annotations

import functools
import re
from typing import NewType

from podiam.errors import BadRequestTarget

CanonicalPath = NewType("CanonicalPath", str)
"""A request path that passed ``canonical_path``: the only kind the upstream client sends."""

_SEGMENT_CHARS = r"A-Za-z0-9\-._~:@+=,"
_CANONICAL = re.compile(
    # "/" alone, or segments that are neither "." nor "..", optionally a final "/".
    rf"/|(?:/(?!\.\.?(?:/|\Z))[{_SEGMENT_CHARS}]+)+/?",
    re.ASCII,
)
_OTHER_CHAR = re.compile(rf"[^{_SEGMENT_CHARS}/]", re.ASCII)

MAX_SHOWN = 100
"""Characters of a refused target quoted back in the message: the caller chose them."""


@functools.lru_cache(maxsize=1024)
def canonical_path(target: str) -> CanonicalPath:
    """``target`` itself when it is canonical; BadRequestTarget saying why otherwise.

    Cached because it runs on every request and SDKs ask for a handful of paths: a hit is a
    dict lookup instead of a regular expression. Refusals are never cached (lru_cache keeps
    no exceptions), and a pod inventing paths only evicts entries, which cost one match to
    bring back.
    """
    if _CANONICAL.fullmatch(target):
        return CanonicalPath(target)
    raise BadRequestTarget(f"request target {target[:MAX_SHOWN]!r} is not canonical: {_why(target)}")


def _why(target: str) -> str:
    """The first rule ``target`` breaks, for the refusal's message (not on the hot path)."""
    if not target.startswith("/"):
        return "only origin-form targets (/path) are served; this is not a proxy"
    if "?" in target or "#" in target:
        return "IMDS paths take no query string or fragment"
    if "%" in target:
        return "no percent-encoding: IMDS paths are plain"
    if "\\" in target:
        return "no backslashes"
    segments = target[1:].split("/")
    if any(s in (".", "..") for s in segments):
        return "no '.' or '..' segments"
    if "" in segments[:-1]:
        return "no empty segments ('//')"
    bad = _OTHER_CHAR.search(target)
    return f"character {bad.group()!r} is not allowed" if bad else "not a canonical path"
