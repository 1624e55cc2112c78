"""
The emulator's objects: what exists now, and every write as one versioned, logged step.

Whether a write happens is decided here, as the API server decides it: 404 for a missing
object, 409 for a taken name or a stale resourceVersion, finalizers turning a delete into a
termination, a write that changes nothing writing nothing. What the new state looks like
is ``kubeapi_objects``'s business; who asked (HTTP or a test helper) is the emulator's.

Objects live in kmock's ``ObjectsArray`` so that ``emulator.objects`` still serves
assertions; every write goes through ``_commit`` and nothing here awaits, so a write and
its watch event can never be seen apart.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import kmock

from podiam_sandbox import kubeapi_objects as objects
from podiam_sandbox import kubeapi_wire as wire
from podiam_sandbox.kubeapi_changes import Change, ChangeLog, ChangeType, with_version
from podiam_sandbox.kubeapi_selectors import ObjectFilter

ObjectKey = tuple[kmock.resource, str | None, str]
"""Where an object is kept: (resource, namespace or None if cluster-scoped, name)."""

Compute = Callable[[Mapping[str, Any]], dict[str, Any]]
"""How an update turns the current state into the next one."""

STALE = "the object has been modified; please apply your changes to the latest version and try again"


class ObjectStore:
    """Current objects and the writes that change them, each logged with the next resourceVersion."""

    def __init__(self, objects_array: kmock.ObjectsArray, log: ChangeLog) -> None:
        self._objects = objects_array
        self._log = log

    def current(self, key: ObjectKey) -> dict[str, Any] | None:
        """The object's current state (a shallow copy), or None if it does not exist."""
        if key not in self._objects or self._objects[key].deleted:
            return None
        return self._objects[key].last.raw

    def require(self, key: ObjectKey) -> dict[str, Any]:
        """The current state, or the API server's 404."""
        obj = self.current(key)
        if obj is None:
            raise wire.not_found(str(key[0].plural), key[2])
        return obj

    def select(self, resource: kmock.resource, selection: ObjectFilter) -> list[dict[str, Any]]:
        """Current objects that a list or watch with this filter includes, in etcd's key order."""
        found = [
            (namespace or "", name, obj.last.raw)
            for (res, namespace, name), obj in self._objects.items()
            if res == resource and not obj.deleted and selection.matches(obj.last.raw)
        ]
        return [raw for _, _, raw in sorted(found, key=lambda item: item[:2])]

    def create(
        self, resource: kmock.resource, namespace: str | None, body: Mapping[str, Any], *,
        api_version: str, kind: str,
    ) -> dict[str, Any]:
        """POST: a new object (its name generated from generateName if need be); 409 if taken."""
        metadata = body.get("metadata") or {}
        name = metadata.get("name") or self._free_name(resource, namespace, metadata.get("generateName"))
        if not name:
            raise wire.invalid(str(resource.plural), "",
                               "metadata.name: Required value: name or generateName is required")
        key = (resource, namespace, name)
        if self.current(key) is not None:
            raise wire.already_exists(str(resource.plural), name)
        obj = objects.created(body, api_version=api_version, kind=kind, name=name, namespace=namespace)
        return self._commit(key, "ADDED", obj, None)

    def replace(self, key: ObjectKey, body: Mapping[str, Any], subresource: str | None) -> dict[str, Any]:
        """PUT: the body becomes the object (only its status, through the status subresource)."""
        body_name, name = (body.get("metadata") or {}).get("name"), key[2]
        if body_name and body_name != name:
            raise wire.bad_request(f"the name of the object ({body_name}) does not match the name on the URL ({name})")
        compute = objects.status_only if subresource == "status" else objects.replaced
        return self.update(key, body, lambda old: compute(old, body))

    def patch(self, key: ObjectKey, patch: Mapping[str, Any], subresource: str | None) -> dict[str, Any]:
        """PATCH as a merge patch (only the status, through the status subresource)."""
        if subresource == "status":
            return self.update(key, patch, lambda old: objects.status_only(old, objects.patched(old, patch)))
        return self.update(key, patch, lambda old: objects.patched(old, patch))

    def bind(self, key: ObjectKey, node: str) -> dict[str, Any]:
        """pods/binding: what the scheduler does; 409 if the pod is already on a node."""
        assigned = (self.require(key).get("spec") or {}).get("nodeName")
        if assigned:
            raise wire.conflict("pods", key[2], f"pod {key[2]} is already assigned to node {assigned!r}")
        if not node:
            raise wire.invalid("bindings", key[2], "target.name: Required value")
        return self.update(key, {}, lambda old: objects.patched(old, {"spec": {"nodeName": node}}))

    def update(self, key: ObjectKey, body: Mapping[str, Any], compute: Compute) -> dict[str, Any]:
        """One update with optimistic concurrency; a no-op writes nothing, a release deletes."""
        old = self.require(key)
        expected = (body.get("metadata") or {}).get("resourceVersion")
        if expected and expected != (old.get("metadata") or {}).get("resourceVersion"):
            raise wire.conflict(str(key[0].plural), key[2], STALE)
        new = compute(old)
        if objects.same_content(new, old):
            return copy.deepcopy(old)
        if objects.is_terminating(new) and not objects.finalizers(new):
            return self._commit(key, "DELETED", new, old)  # the last finalizer is gone
        return self._commit(key, "MODIFIED", new, old)

    def delete(self, key: ObjectKey) -> dict[str, Any]:
        """DELETE: gone at once, or only marked terminating while finalizers remain."""
        old = self.require(key)
        if not objects.finalizers(old):
            return self._commit(key, "DELETED", old, old)
        if objects.is_terminating(old):
            return copy.deepcopy(old)
        terminating = copy.deepcopy(old)
        terminating["metadata"]["deletionTimestamp"] = objects.now_rfc3339()
        terminating["metadata"]["deletionGracePeriodSeconds"] = 0
        return self._commit(key, "MODIFIED", terminating, old)

    def _commit(
        self, key: ObjectKey, change_type: ChangeType, state: Mapping[str, Any], old: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        """Version, store, log and broadcast one write, with no await: watches see it atomically."""
        version = self._log.next_version()
        stamped = with_version(state, version)
        if change_type == "DELETED":
            self._objects[key].delete()
        elif key in self._objects:
            self._objects[key].create(stamped)
        else:
            self._objects[key] = stamped
        self._log.publish(Change(version, key[0], change_type, stamped, old))
        return copy.deepcopy(stamped)

    def _free_name(self, resource: kmock.resource, namespace: str | None, prefix: str | None) -> str | None:
        """A generated name not taken yet (the server retries too), or None without generateName."""
        if not prefix:
            return None
        while True:
            name = objects.generate_name(prefix)
            if self.current((resource, namespace, name)) is None:
                return name
