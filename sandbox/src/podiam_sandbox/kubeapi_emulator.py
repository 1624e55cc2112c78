"""
The stateful Kubernetes API of the test world: kmock's emulator, made watch-correct.

kmock 0.8's ``KubernetesEmulator`` serves objects over real HTTP but lacks what a
watch-based agent relies on (listed in ``podiam_sandbox.kubeapi``). This subclass keeps
kmock's HTTP plumbing, discovery, request log and reaction DSL, and replaces the object
semantics:

- every write gets the next cluster-wide resourceVersion in one place (``kubeapi_store``),
  whether it came over HTTP or from a helper method: watchers cannot tell the two apart;
- writes happen in the fallback handlers, not before the reactions as in kmock, so a
  request that a test intercepts changes nothing, as a failed API call would::

      emulator["post /api/v1/namespaces/ns/pods"] << kmock.KubernetesError(status=503, reason="Unavailable")

  (inject a KubernetesError rather than a bare status: lightkube raises its ApiError only
  for a Status body with exactly ``Content-Type: application/json``);
- objects live in kmock's ``objects`` array: read it in assertions, but write through the
  helper methods, or no event and no resourceVersion is produced;
- with ``keep_requests=False`` (the standalone server) a request is forgotten once served.
  kmock finds the reaction that serves a request by scanning the whole request history once
  per reaction (a slice like ``[:1]`` depends on it), and each reaction keeps the requests it
  served (8 KB each): with every request kept, each costs more time and memory than the
  last (measured: 1,000 pod creations took 121 s, the next 1,000 took 365 s). A server in a
  process of its own has no reactions but the emulator's, which look at no history, and
  nobody to read it, so forgetting keeps it at the same cost at any age. Forgetting reaches
  into kmock 0.8's private lists (``_requests`` of the emulator and of each reaction).
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp.web
import attrs
import kmock

# kmock's one private name the sandbox needs: see failed_stream. At the top, so that a kmock
# that moved it fails at import, not inside an error handler.
from kmock._internal.rendering import StreamingError

from podiam_sandbox import kubeapi_wire as wire
from podiam_sandbox.kubeapi_changes import ChangeLog
from podiam_sandbox.kubeapi_selectors import FieldSelector, LabelSelector, ObjectFilter, SelectorError
from podiam_sandbox.kubeapi_store import ObjectKey, ObjectStore
from podiam_sandbox.kubeapi_watch import WatchDisconnected, WatchOptions, watch_events

ResourceRef = str | kmock.resource
"""A resource as tests name it: "pods", "v1/pods", "apps/v1/deployments" or a kmock.resource."""

MERGE_PATCH_TYPES = frozenset({"application/merge-patch+json", "application/strategic-merge-patch+json"})
ALL_VERBS = ("create", "delete", "get", "list", "patch", "update", "watch")


def failed_stream(exc: Exception) -> tuple[aiohttp.web.StreamResponse, Exception] | None:
    """The response and the error behind ``exc`` when it is kmock's wrapper of a failed stream.

    kmock wraps an error raised while it streams a reply (a watch) in ``StreamingError``,
    which carries the response already under way. kmock's own ``__call__`` unwraps it;
    ``KubeApiEmulator.__call__`` replaces that method (to parse paths its own way), so it
    must unwrap it too. The class is only in kmock's private ``_internal`` module (0.8 has
    no public name for it): this is the sandbox's one use of it, and the sandbox's
    pyproject pins kmock to 0.8.x for it.
    """
    if not isinstance(exc, StreamingError):
        return None
    cause = exc.__cause__ if isinstance(exc.__cause__, Exception) else exc
    raw_response: aiohttp.web.StreamResponse = exc.args[0]
    return raw_response, cause


def _drop(requests: list[kmock.Request], request: kmock.Request) -> None:
    """Remove ``request`` from a history, newest first; by identity: a Request's == is kmock's pattern match."""
    for i in range(len(requests) - 1, -1, -1):
        if requests[i] is request:
            del requests[i]
            return


def core_resources() -> dict[str, kmock.ResourceInfo]:
    """The resources podiam's agent uses, declared for discovery and namespacing."""
    return {
        "v1/pods": kmock.ResourceInfo(
            kind="Pod", singular="pod", namespaced=True, verbs=ALL_VERBS,
            shortnames={"po"}, categories={"all"}, subresources={"status", "binding"},
        ),
        "v1/namespaces": kmock.ResourceInfo(
            kind="Namespace", singular="namespace", namespaced=False, verbs=ALL_VERBS,
            shortnames={"ns"}, subresources={"status"},
        ),
        "v1/events": kmock.ResourceInfo(
            kind="Event", singular="event", namespaced=True, verbs=ALL_VERBS, shortnames={"ev"},
        ),
        # The node-ready taint: read and patched (with a resourceVersion precondition) by the agent or server.
        "v1/nodes": kmock.ResourceInfo(
            kind="Node", singular="node", namespaced=False, verbs=ALL_VERBS,
            shortnames={"no"}, subresources={"status"},
        ),
    }


@attrs.define(kw_only=True)
class KubeApiEmulator(kmock.KubernetesEmulator):
    """A Kubernetes API server for tests and the demo: resourceVersions, selectors, real watches."""

    bookmark_interval: float = 1.0
    """Seconds between BOOKMARK events on watches that allow them."""
    history_limit: int = 10_000
    """Changes kept for watch resumption; a watch from an older version gets 410 Expired."""
    keep_requests: bool = True
    """Keep every request served, for assertions and reactions that count or slice (``[:1]``);
    False keeps only those in flight, so that the cost of a request does not grow with the
    history (module docstring). Tests in process keep them; the standalone server does not."""

    _received: int = attrs.field(init=False, default=0)
    """Requests received so far: their ids, and what kmock's ``limit`` counts."""

    _log: ChangeLog = attrs.field(
        init=False, default=attrs.Factory(lambda self: ChangeLog(self.history_limit), takes_self=True),
    )
    _store: ObjectStore = attrs.field(
        init=False, default=attrs.Factory(lambda self: ObjectStore(self._objects, self._log), takes_self=True),
    )

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for key, info in core_resources().items():
            self.resources[key] = info

    # --- The test-facing controls ---------------------------------------------------------

    @property
    def resource_version(self) -> int:
        """The cluster's current resourceVersion: the newest write's."""
        return self._log.version

    @property
    def watch_count(self) -> int:
        """How many watch streams are live (to wait until a client has (re)connected)."""
        return self._log.subscriber_count

    def compact(self, keep: int = 0) -> None:
        """Forget all but the newest ``keep`` changes: older watch resumptions get 410 Expired."""
        self._log.compact(keep)

    async def disconnect_watches(self) -> None:
        """Drop every live watch connection abruptly, as a network failure would; wait until gone.

        Clients may reconnect at once and resume from their last resourceVersion.
        """
        for subscription in self._log.disconnect_all():
            await subscription.closed.wait()

    async def close_watches(self) -> None:
        """Drop every live watch and every later one: call before stopping a server that serves this.

        aiohttp's shutdown waits for running handlers, and a watch only ends when told to.
        """
        for subscription in self._log.close():
            await subscription.closed.wait()

    # --- Helpers: the same writes and reads as over HTTP, without building requests -------

    async def create_object(
        self, resource: ResourceRef, obj: Mapping[str, Any], *, namespace: str | None = None,
    ) -> dict[str, Any]:
        """Create as POST does (generateName, uid, timestamps, ADDED); namespace defaults to the body's."""
        res = self._resolve(resource)
        return self._create(res, self._namespace_for(res, namespace, obj), obj)

    async def get_object(
        self, resource: ResourceRef, name: str, *, namespace: str | None = None,
    ) -> dict[str, Any]:
        """The current state, as GET returns it; KubernetesError 404 if absent."""
        return copy.deepcopy(self._store.require(self._key(resource, namespace, name)))

    async def list_objects(
        self, resource: ResourceRef, *, namespace: str | None = None,
        label_selector: str = "", field_selector: str = "",
    ) -> list[dict[str, Any]]:
        """The matching objects, as a list request returns them."""
        try:
            labels, fields = LabelSelector.parse(label_selector), FieldSelector.parse(field_selector)
        except SelectorError as e:
            raise wire.bad_request(str(e)) from e
        selection = ObjectFilter(namespace=namespace, labels=labels, fields=fields)
        return copy.deepcopy(self._store.select(self._resolve(resource), selection))

    async def patch_object(
        self, resource: ResourceRef, name: str, patch: Mapping[str, Any], *,
        namespace: str | None = None, subresource: str | None = None,
    ) -> dict[str, Any]:
        """Merge-patch as PATCH does; ``subresource="status"`` changes only the status."""
        return self._store.patch(self._key(resource, namespace, name), patch, subresource)

    async def replace_object(
        self, resource: ResourceRef, obj: Mapping[str, Any], *, namespace: str | None = None,
    ) -> dict[str, Any]:
        """Replace as PUT does: 409 if the body's resourceVersion is stale, 404 if absent."""
        metadata = obj.get("metadata") or {}
        key = self._key(resource, namespace or metadata.get("namespace"), metadata.get("name", ""))
        return self._store.replace(key, obj, None)

    async def delete_object(
        self, resource: ResourceRef, name: str, *, namespace: str | None = None,
    ) -> dict[str, Any]:
        """Delete as DELETE does: with finalizers, only mark it terminating (deletionTimestamp)."""
        return self._store.delete(self._key(resource, namespace, name))

    async def bind_pod(self, name: str, node: str, *, namespace: str = "default") -> dict[str, Any]:
        """Assign a pod to a node as the scheduler does (pods/binding); 409 if already assigned."""
        return self._store.bind(self._key("v1/pods", namespace, name), node)

    # --- HTTP: kmock's entry point with this module's reading of paths and verbs ----------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        """Serve one HTTP request; kmock's own parser cannot read namespace paths or PUT."""
        try:
            request = await self._parse(raw_request)
            try:
                return await self._handle(request)
            finally:
                if not self.keep_requests:
                    self._forget(request)
        except Exception as e:
            stream = failed_stream(e)
            if stream is None:
                self._record_error(e)
                return await self._render_error(e)
            raw_response, cause = stream
            self._record_error(cause)
            if not raw_response.prepared:  # failed before the first byte, e.g. a bad watch parameter
                return await self._render_error(cause)
            await self._stream_error(cause, raw_response)
            await raw_response.write_eof()
            return raw_response

    async def _parse(self, raw_request: aiohttp.web.BaseRequest) -> kmock.Request:
        """Read and record a request, as kmock does, with the Kubernetes meaning of kubeapi_wire."""
        if self.limit is not None and self._received >= self.limit:
            raise kmock.KubernetesError(status=429, reason="TooManyRequests", message="request limit reached")
        request = await wire.parse_request(raw_request, request_id=self._received)
        self._received += 1
        # Recorded even when not kept: kmock's dispatch finds a reaction's requests in the history.
        self._requests.append(request)
        return request

    def _forget(self, request: kmock.Request) -> None:
        """Drop a served request from the history and from the reaction that served it (each
        reaction lists its own requests: 8 KB each, measured, with the aiohttp request they hold)."""
        _drop(self._requests, request)
        for reaction in self._payloads:
            _drop(reaction._requests, request)

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        # Skip kmock's emulator step that writes before the reactions run: writes happen in
        # the fallbacks below, so a request a test intercepts leaves the state alone.
        return await super(kmock.KubernetesEmulator, self)._handle(request)

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        if isinstance(exc, kmock.KubernetesNotFoundError) and exc.reason != "NotFound":
            exc = kmock.KubernetesError(status=404, reason="NotFound", message=exc.message)
        elif not isinstance(exc, kmock.KubernetesError):
            exc = kmock.KubernetesError(status=500, reason="InternalError", message=repr(exc))
        body = json.dumps(wire.status_body(exc)).encode()
        return aiohttp.web.Response(status=exc.status, body=body, content_type="application/json")

    def _record_error(self, exc: Exception) -> None:
        """Keep kmock's ``errors`` for failures of the emulator, not for API answers like 404."""
        if self._errors and not isinstance(exc, kmock.KubernetesError):
            self._errors[-1].append(exc)

    async def _serve_version(self, request: kmock.Request) -> Any:
        payload = await super()._serve_version(request)
        if isinstance(payload, dict) and str(payload.get("groupVersion", "")).startswith("/"):
            payload["groupVersion"] = payload["groupVersion"][1:]  # kmock writes "/v1" for the core group
        return payload

    async def _serve_list(self, request: kmock.Request) -> kmock.Response:
        resource = self._known(request.resource)
        return wire.json_response({
            "apiVersion": self._api_version(resource),
            "kind": f"{self._kind(resource)}List",
            "metadata": {"resourceVersion": str(self._log.version)},
            "items": self._store.select(resource, wire.parse_filter(request)),
        })

    # kmock declares its watch handler as a stream; this one answers 400 before streaming.
    async def _serve_watch(self, request: kmock.Request) -> kmock.Response:  # type: ignore[override]
        resource = self._known(request.resource)
        options = WatchOptions(
            resource=resource,
            kind=self._kind(resource),
            api_version=self._api_version(resource),
            filter=wire.parse_filter(request),
            since=wire.parse_since(request.params),
            bookmarks=wire.is_true(request.params, "allowWatchBookmarks"),
            bookmark_interval=self.bookmark_interval,
            timeout=wire.parse_timeout(request.params),
        )
        stream = self._stream(request, options)
        return kmock.Response(status=200, headers={"Content-Type": "application/json"}, payload=stream)

    async def _stream(self, request: kmock.Request, options: WatchOptions) -> AsyncIterator[Any]:
        yield b""  # send the headers now: an idle watch is still an established watch
        try:
            snapshot = functools.partial(self._store.select, options.resource, options.filter)
            async for event in watch_events(self._log, options, snapshot):
                yield event
        except WatchDisconnected:
            raw_request = request._raw_request
            transport = raw_request.transport if raw_request is not None else None
            if transport is not None:
                transport.close()  # mid-stream, without the chunked terminator: a broken connection

    async def _serve_fetch(self, request: kmock.Request) -> kmock.Response:
        key = self._request_key(request)
        if request.subresource not in (None, "status"):
            raise wire.not_found(f"{key[0].plural}/{request.subresource}", key[2])
        return wire.json_response(self._store.require(key))

    async def _serve_create(self, request: kmock.Request) -> kmock.Response:
        resource = self._known_or_new(request.resource)
        body = self._body(request)
        if request.name is None:
            namespace = self._namespace_for(resource, request.namespace, body, strict=True)
            return wire.json_response(self._create(resource, namespace, body), status=201)
        if request.subresource == "binding" and resource == "v1/pods":
            self._store.bind(self._request_key(request), str((body.get("target") or {}).get("name", "")))
            success = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}
            return wire.json_response(success, status=201)
        raise wire.not_found(f"{resource.plural}/{request.subresource}", request.name)

    async def _serve_update(self, request: kmock.Request) -> kmock.Response:
        key = self._request_key(request)
        if request.method == kmock.method.PUT:
            return wire.json_response(self._store.replace(key, self._body(request), request.subresource))
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
        if content_type not in MERGE_PATCH_TYPES:
            raise wire.unsupported_media_type(content_type)
        return wire.json_response(self._store.patch(key, self._body(request), request.subresource))

    async def _serve_delete(self, request: kmock.Request) -> kmock.Response:
        return wire.json_response(self._store.delete(self._request_key(request)))

    def _create(self, resource: kmock.resource, namespace: str | None, body: Mapping[str, Any]) -> dict[str, Any]:
        api_version, kind = self._api_version(resource), self._kind(resource)
        return self._store.create(resource, namespace, body, api_version=api_version, kind=kind)

    # --- Resources: naming, kinds and namespacing ----------------------------------------

    def _key(self, resource: ResourceRef, namespace: str | None, name: str) -> ObjectKey:
        """The store key a helper call means: the resource resolved, the namespace defaulted."""
        res = self._resolve(resource)
        return (res, self._namespace_for(res, namespace, {}), name)

    def _request_key(self, request: kmock.Request) -> ObjectKey:
        return (self._known(request.resource), request.namespace, request.name or "")

    def _resolve(self, resource: ResourceRef) -> kmock.resource:
        """The one known resource a test means by "pods" or "v1/pods"."""
        spec = kmock.resource(resource) if isinstance(resource, str) else resource
        if spec.group is not None and spec.version is not None and spec.plural is not None:
            return spec
        candidates = {known for known in self._get_resources() if spec.check(known)}
        if len(candidates) != 1:
            raise ValueError(f"{resource!r} names {len(candidates)} known resources; name it as 'v1/pods'")
        return candidates.pop()

    def _known(self, resource: kmock.resource | None) -> kmock.resource:
        """The request's resource if the server serves it (declared or has objects), else 404."""
        # Declared resources first, in one lookup: kmock's _get_resources() visits every object.
        if (resource is None or resource.plural is None
                or (resource not in self.resources and resource not in self._get_resources())):
            raise kmock.KubernetesError(
                status=404, reason="NotFound", message="the server could not find the requested resource",
            )
        return resource

    def _known_or_new(self, resource: kmock.resource | None) -> kmock.resource:
        """Creation also accepts undeclared resources, as kmock does (for CRD-like test objects)."""
        if resource is None or resource.plural is None or resource.version is None:
            return self._known(resource)
        return resource

    def _info(self, resource: kmock.resource) -> kmock.ResourceInfo | None:
        """The declared info; not ``resources.get()``: kmock's getter creates missing entries."""
        if resource not in self.resources:
            return None
        return self.resources[resource]

    def _namespace_for(
        self, resource: kmock.resource, namespace: str | None, body: Mapping[str, Any], *, strict: bool = False,
    ) -> str | None:
        """Where an object lives: None if cluster-scoped, else the URL's or the body's namespace."""
        info = self._info(resource)
        namespaced = info.namespaced if info is not None else None
        body_namespace = (body.get("metadata") or {}).get("namespace")
        if namespaced is False:
            return None
        if strict and namespace and body_namespace and body_namespace != namespace:
            raise wire.bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            )
        chosen = namespace or body_namespace
        return chosen or ("default" if namespaced else None)

    def _kind(self, resource: kmock.resource) -> str:
        info = self._info(resource)
        if info is not None and info.kind:
            return str(info.kind)
        plural = str(resource.plural)
        return (plural[:-1] if plural.endswith("s") else plural).capitalize()

    def _api_version(self, resource: kmock.resource) -> str:
        return str(resource.version) if not resource.group else f"{resource.group}/{resource.version}"

    def _body(self, request: kmock.Request) -> Mapping[str, Any]:
        if not isinstance(request.data, Mapping):
            raise wire.bad_request("the request body must be a JSON object")
        return request.data
