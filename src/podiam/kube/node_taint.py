"""
Removing the node-ready taint (--node-ready-taint KEY) from a Node: every taint with that
key, whatever its value and effect, and no other taint.

One removal is a read and a write: GET the Node, and unless no taint has the key (then
nothing is written), a JSON merge patch of ``spec.taints`` (the list is replaced whole, as a
list without a merge key is in a strategic merge patch) that carries the resourceVersion
read. The API server applies it only to that version of the Node and answers 409 Conflict
otherwise: a taint added or changed by someone else (the kubelet, an operator's
``kubectl taint``) between the read and the write is never lost; the caller reads again.

RBAC: ``get`` and ``patch`` on ``nodes``, only with --node-ready-taint (agent mode: the
agent's service account; split mode: the server's).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx2 as httpx
import lightkube
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import Node
from lightkube.types import PatchType

from podiam.errors import KubeError, NodeChanged, NodeNotFound

Taint = Mapping[str, Any]
"""One entry of ``spec.taints`` as the API serves it (key, value, effect, timeAdded)."""


@dataclass(frozen=True)
class NodeTaints:
    """A Node's taints as read, and the version they were read at."""

    node: str
    resource_version: str
    taints: tuple[Taint, ...]

    def has(self, key: str) -> bool:
        return any(taint.get("key") == key for taint in self.taints)

    def without(self, key: str) -> dict[str, Any] | None:
        """The merge patch that removes every taint with ``key`` from this version; None when none has it."""
        return removal_patch(self.taints, key, self.resource_version)


def removal_patch(taints: Iterable[Taint], key: str, resource_version: str) -> dict[str, Any] | None:
    """The merge patch of ``spec.taints`` without the taints that have ``key``, conditional on
    ``resource_version``; None when no taint has it (nothing to write).

    The other taints keep their order and every field they had. A list left empty is written
    as null, which removes the field, as the API server stores a Node without taints.
    """
    taints = list(taints)
    kept = [dict(taint) for taint in taints if taint.get("key") != key]
    if len(kept) == len(taints):
        return None
    return {"metadata": {"resourceVersion": resource_version}, "spec": {"taints": kept or None}}


async def read_node_taints(client: lightkube.AsyncClient, node: str) -> NodeTaints:
    """GET the Node; NodeNotFound when it does not exist, KubeError when the API fails."""
    try:
        obj = await client.get(Node, node)
    except ApiError as e:
        if e.status is not None and e.status.code == 404:
            raise NodeNotFound(f"node {node} does not exist (is --node this node's name?)") from e
        raise KubeError(f"cannot read node {node}: {_api_message(e)}") from e
    except httpx.HTTPError as e:
        raise KubeError(f"cannot reach the Kubernetes API to read node {node}: {type(e).__name__}: {e}") from e
    taints = obj.spec.taints if obj.spec is not None and obj.spec.taints else []
    version = obj.metadata.resourceVersion if obj.metadata is not None else None
    return NodeTaints(node, version or "", tuple(taint.to_dict() for taint in taints))


async def patch_node(client: lightkube.AsyncClient, node: str, patch: dict[str, Any]) -> None:
    """Apply a merge patch to the Node; NodeChanged on 409 (it changed since the read)."""
    try:
        await client.patch(Node, node, patch, patch_type=PatchType.MERGE)
    except ApiError as e:
        code = e.status.code if e.status is not None else None
        if code == 409:
            raise NodeChanged(f"node {node} changed since it was read; reading it again") from e
        if code == 404:
            raise NodeNotFound(f"node {node} does not exist any more") from e
        raise KubeError(f"cannot patch node {node}: {_api_message(e)}") from e
    except httpx.HTTPError as e:
        raise KubeError(f"cannot reach the Kubernetes API to patch node {node}: {type(e).__name__}: {e}") from e


async def remove_node_taint(client: lightkube.AsyncClient, node: str, key: str, *, timeout: float) -> bool:
    """One removal within ``timeout`` seconds: True when a taint was removed, False when the Node
    had none with ``key`` (nothing written). KubeError (NodeChanged, NodeNotFound, or a
    deadline) when it did not happen: the caller retries."""
    try:
        async with asyncio.timeout(timeout):
            taints = await read_node_taints(client, node)
            patch = taints.without(key)
            if patch is None:
                return False
            await patch_node(client, node, patch)
            return True
    except TimeoutError:
        raise KubeError(f"removing taint {key} from node {node} took more than {timeout:g}s") from None


def _api_message(error: ApiError) -> str:
    status = error.status
    if status is None:
        return str(error)[:200]
    return f"{status.code} {status.reason}: {(status.message or '')[:200]}"
