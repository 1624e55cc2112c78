"""
The Kubernetes API's wire conventions that kmock 0.8 gets wrong or leaves out.

- Paths: kmock's parser cannot read ``/api/v1/namespaces`` or ``/api/v1/namespaces/NAME``
  (it answers 500), because it takes "namespaces" for the namespace prefix of a path.
- Verbs: a watch is ``watch=`` any true boolean (``true``, ``True``, ``1``, as Go's
  strconv.ParseBool), PUT is an update (the RBAC verb), POST on a named object is a
  subresource create (``pods/NAME/binding``).
- Query parameters a list or watch understands, validated as the server does (400).
- Status errors with the real reasons (NotFound, AlreadyExists, Conflict, ...).
- Audit records: who made a request and its RBAC verb and object, as the API server's
  audit log writes them at level Metadata.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp.web
import kmock

from podiam_sandbox.kubeapi_selectors import FieldSelector, LabelSelector, ObjectFilter, SelectorError

TRUE_WORDS = frozenset({"1", "t", "T", "true", "True", "TRUE"})
"""What Go's strconv.ParseBool reads as true: the API server's reading of ``watch=``."""

NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})


@dataclass(frozen=True)
class ApiPath:
    """The Kubernetes meaning of a request path."""

    resource: kmock.resource
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None


def parse_api_path(path: str) -> ApiPath | None:
    """Read /api/v1/... and /apis/GROUP/VERSION/... paths; None for anything else.

    Discovery paths (/api/v1, /apis/GROUP[/VERSION]) give a resource without a plural,
    as kmock's own parser does, so that kmock's discovery handlers still serve them.
    """
    parts = [part for part in path.split("/") if part]
    version: str | None
    if len(parts) >= 2 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 2 and parts[0] == "apis":
        group, version, rest = parts[1], (parts[2] if len(parts) > 2 else None), parts[3:]
    else:
        return None
    if not rest:
        return ApiPath(kmock.resource(group=group, version=version, plural=None))
    namespace: str | None = None
    if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] not in NAMESPACE_SUBRESOURCES:
        namespace, rest = rest[1], rest[2:]
    return ApiPath(
        resource=kmock.resource(group=group, version=version, plural=rest[0]),
        namespace=namespace,
        name=rest[1] if len(rest) > 1 else None,
        subresource="/".join(rest[2:]) or None,
    )


def guess_action(method: str, path: ApiPath, query: Mapping[str, str]) -> kmock.action | None:
    """The Kubernetes verb of a request, or None for combinations the API does not serve."""
    match method.upper():
        case "GET" if query.get("watch") in TRUE_WORDS:
            return kmock.action.WATCH
        case "GET":
            return kmock.action.LIST if path.name is None else kmock.action.FETCH
        case "POST":
            return kmock.action.CREATE
        case "PATCH" | "PUT" if path.name is not None:
            return kmock.action.UPDATE
        case "DELETE" if path.name is not None:
            return kmock.action.DELETE
    return None


def rbac_verb(method: str, path: ApiPath, query: Mapping[str, str]) -> str:
    """The verb the API server's authorizer checks for a request (RBAC's, not kmock's action)."""
    match method.upper():
        case "GET" | "HEAD" if query.get("watch") in TRUE_WORDS:
            return "watch"
        case "GET" | "HEAD":
            return "list" if path.name is None else "get"
        case "POST":
            return "create"
        case "PUT":
            return "update"
        case "PATCH":
            return "patch"
        case "DELETE":
            return "deletecollection" if path.name is None else "delete"
    return method.lower()


def audit_record(method: str, raw_path: str, query: Mapping[str, str], authorization: str) -> dict[str, Any]:
    """One request as an audit event's essentials: user, verb and objectRef (or the non-resource URL).

    The user is the bearer token itself: the sandbox's tokens are dummies that name their
    holder (the emulator checks no credentials), so tests give each process its own.
    """
    user = authorization.removeprefix("Bearer ").strip() or None
    path = parse_api_path(raw_path)
    if path is None or path.resource.plural is None:
        return {"user": user, "verb": method.lower(), "nonResourceURL": raw_path}
    return {
        "user": user,
        "verb": rbac_verb(method, path, query),
        "apiGroup": path.resource.group or "",
        "resource": path.resource.plural,
        "subresource": path.subresource,
        "namespace": path.namespace,
        "name": path.name,
    }


async def parse_request(raw_request: aiohttp.web.BaseRequest, *, request_id: int) -> kmock.Request:
    """Build kmock's request record with the Kubernetes meaning read by these rules."""
    body = await raw_request.read()
    text = body.decode("utf-8", errors="replace")
    try:
        data = json.loads(body) if body else None
    except ValueError:
        data = None
    query = dict(raw_request.query)
    path = parse_api_path(raw_request.path)
    return kmock.Request(
        id=request_id,
        raw_request=raw_request,
        url=raw_request.url,
        method=raw_request.method,
        params=query,
        headers=dict(raw_request.headers),
        cookies=dict(raw_request.cookies),
        body=body,
        text=text,
        data=data,
        action=None if path is None else guess_action(raw_request.method, path, query),
        resource=None if path is None else path.resource,
        namespace=None if path is None else path.namespace,
        name=None if path is None else path.name,
        subresource=None if path is None else path.subresource,
    )


def parse_filter(request: kmock.Request) -> ObjectFilter:
    """The URL's namespace and name plus both selectors; 400 for selectors a server rejects."""
    try:
        labels = LabelSelector.parse(request.params.get("labelSelector", ""))
        fields = FieldSelector.parse(request.params.get("fieldSelector", ""))
    except SelectorError as e:
        raise bad_request(str(e)) from e
    return ObjectFilter(namespace=request.namespace, name=request.name, labels=labels, fields=fields)


def parse_since(params: Mapping[str, str]) -> int | None:
    """The watch's starting version: None for "" and "0" (current state first), else an integer."""
    value = params.get("resourceVersion", "")
    if value in ("", "0"):
        return None
    try:
        return int(value)
    except ValueError:
        raise bad_request(f"resourceVersion: Invalid value: {value!r}: must be an integer") from None


def parse_timeout(params: Mapping[str, str]) -> float | None:
    """``timeoutSeconds``; fractions are accepted (a real server wants an integer) to keep tests fast."""
    value = params.get("timeoutSeconds", "")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        raise bad_request(f"timeoutSeconds: Invalid value: {value!r}") from None
    if seconds < 0:
        raise bad_request(f"timeoutSeconds: Invalid value: {value!r}: must be >= 0")
    return seconds


def is_true(params: Mapping[str, str], name: str) -> bool:
    """A boolean query parameter, read as the API server reads it."""
    return params.get(name) in TRUE_WORDS


def json_response(payload: Any, *, status: int = 200) -> kmock.Response:
    """A JSON answer with exactly ``Content-Type: application/json``, as lightkube expects.

    The status and headers are always given explicitly: kmock copies a returned Response's
    metadata onto the reaction that served it, so it would leak into later answers.
    """
    return kmock.Response(status=status, headers={"Content-Type": "application/json"}, payload=payload)


def status_body(error: kmock.KubernetesError) -> dict[str, Any]:
    """The Status object of an error, as the API server writes it."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": error.message or "",
        "reason": error.reason or "",
        "code": error.status,
    }
    if error.details:
        body["details"] = error.details
    return body


def bad_request(message: str) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=400, reason="BadRequest", message=message)


def not_found(plural: str, name: str) -> kmock.KubernetesError:
    return kmock.KubernetesError(
        status=404, reason="NotFound", message=f'{plural} "{name}" not found',
        details={"name": name, "kind": plural},
    )


def already_exists(plural: str, name: str) -> kmock.KubernetesError:
    return kmock.KubernetesError(
        status=409, reason="AlreadyExists", message=f'{plural} "{name}" already exists',
        details={"name": name, "kind": plural},
    )


def conflict(plural: str, name: str, message: str) -> kmock.KubernetesError:
    return kmock.KubernetesError(
        status=409, reason="Conflict",
        message=f'Operation cannot be fulfilled on {plural} "{name}": {message}',
        details={"name": name, "kind": plural},
    )


def invalid(plural: str, name: str, message: str) -> kmock.KubernetesError:
    return kmock.KubernetesError(
        status=422, reason="Invalid", message=f'{plural} "{name}" is invalid: {message}',
        details={"name": name, "kind": plural},
    )


def unsupported_media_type(content_type: str) -> kmock.KubernetesError:
    return kmock.KubernetesError(
        status=415, reason="UnsupportedMediaType",
        message=f"the body of the request was in an unknown format: {content_type}",
    )
