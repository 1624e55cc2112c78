"""
How the API server turns a request body into the next stored state of an object.

Pure functions, no I/O: the emulator decides *whether* a write happens (existence,
conflicts, finalizers); these decide *what* the new state is. The server owns some
fields (uid, creationTimestamp, resourceVersion, deletionTimestamp); clients cannot
overwrite them, and every write below keeps them, as a real server does.
"""

from __future__ import annotations

import copy
import datetime as dt
import secrets
import uuid
from collections.abc import Mapping
from typing import Any

GENERATED_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
"""The alphabet of the API server's generated-name suffixes (no vowels: no accidental words)."""

GENERATED_NAME_LENGTH = 5

SERVER_OWNED_METADATA = ("uid", "creationTimestamp", "deletionTimestamp", "name", "namespace")
"""Metadata a client cannot change through PATCH or PUT."""


def now_rfc3339() -> str:
    """The API server's timestamp format: UTC, seconds, ``Z``."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def generate_name(prefix: str) -> str:
    """``metadata.generateName`` plus five random characters, as the API server does."""
    suffix = "".join(secrets.choice(GENERATED_NAME_ALPHABET) for _ in range(GENERATED_NAME_LENGTH))
    return prefix + suffix


def created(
    body: Mapping[str, Any],
    *,
    api_version: str,
    kind: str,
    name: str,
    namespace: str | None,
) -> dict[str, Any]:
    """The first stored state: the body with identity, uid and creationTimestamp set by the server."""
    obj = copy.deepcopy(dict(body))
    obj["apiVersion"] = obj.get("apiVersion") or api_version
    obj["kind"] = obj.get("kind") or kind
    metadata = obj.setdefault("metadata", {})
    metadata["name"] = name
    if namespace is not None:
        metadata["namespace"] = namespace
    else:
        metadata.pop("namespace", None)  # cluster-scoped: the server drops it
    metadata["uid"] = str(uuid.uuid4())
    metadata["creationTimestamp"] = now_rfc3339()
    metadata.pop("resourceVersion", None)
    metadata.pop("deletionTimestamp", None)
    return obj


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: dicts merge recursively, ``null`` removes, the rest replaces.

    Strategic merge patches are applied this way too: it differs only for lists of
    named items (containers, ports), which nothing in podiam's world patches.
    """
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def patched(old: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """The state after a merge patch, server-owned metadata kept."""
    return keep_server_fields(copy.deepcopy(merge_patch(old, patch)), old)


def replaced(old: Mapping[str, Any], body: Mapping[str, Any]) -> dict[str, Any]:
    """The state after a PUT: the body as it is, server-owned metadata kept."""
    return keep_server_fields(copy.deepcopy(dict(body)), old)


def status_only(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """Writes through the status subresource change the status and nothing else."""
    obj = copy.deepcopy(dict(old))
    if "status" in new:
        obj["status"] = copy.deepcopy(new["status"])
    else:
        obj.pop("status", None)
    return obj


def keep_server_fields(new: dict[str, Any], old: Mapping[str, Any]) -> dict[str, Any]:
    """Restore what only the server may set; apiVersion and kind too when a body leaves them out."""
    old_metadata = old.get("metadata") or {}
    metadata = new.setdefault("metadata", {})
    for field in SERVER_OWNED_METADATA:
        if field in old_metadata:
            metadata[field] = old_metadata[field]
        else:
            metadata.pop(field, None)
    new["apiVersion"] = new.get("apiVersion") or old.get("apiVersion")
    new["kind"] = new.get("kind") or old.get("kind")
    return new


def same_content(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two states differ only in resourceVersion: such a write is a no-op, no event."""
    return _without_version(a) == _without_version(b)


def finalizers(obj: Mapping[str, Any]) -> list[str]:
    return list((obj.get("metadata") or {}).get("finalizers") or [])


def is_terminating(obj: Mapping[str, Any]) -> bool:
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


def _without_version(obj: Mapping[str, Any]) -> dict[str, Any]:
    stripped = dict(obj)
    stripped["metadata"] = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "resourceVersion"}
    return stripped
