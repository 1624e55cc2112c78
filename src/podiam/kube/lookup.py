"""One-off reads for `podiam explain`: a pod by name or by IP, a namespace's annotations."""

from __future__ import annotations

from typing import Any

import httpx2 as httpx
import lightkube
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import Namespace, Pod

from podiam.errors import KubeError
from podiam.kube.pod_watcher import pod_info
from podiam.pods import PodInfo


async def _get_or_none(client: lightkube.AsyncClient, resource: Any, name: str, **where: str) -> Any:
    """The object, or None when the API says it does not exist; KubeError for anything else."""
    try:
        return await client.get(resource, name, **where)
    except ApiError as e:
        if e.status is not None and e.status.code == 404:
            return None
        raise KubeError(f"cannot read {resource.__name__.lower()} {name}: {e}") from e
    except httpx.HTTPError as e:
        raise KubeError(f"cannot reach the Kubernetes API: {e}") from e


async def pod_by_name(client: lightkube.AsyncClient, namespace: str, name: str) -> PodInfo | None:
    pod = await _get_or_none(client, Pod, name, namespace=namespace)
    return None if pod is None else pod_info(pod)


async def pods_by_ip(client: lightkube.AsyncClient, ip: str) -> list[PodInfo]:
    """Every pod, in any namespace, whose status.podIP is ``ip`` (active or not)."""
    try:
        pods = [pod_info(obj) async for obj in client.list(Pod, namespace=lightkube.ALL_NS)]
    except httpx.HTTPError as e:
        raise KubeError(f"cannot list pods: {e}") from e
    return [pod for pod in pods if pod.ip == ip]


async def namespace_annotations(client: lightkube.AsyncClient, name: str) -> dict[str, str] | None:
    """The namespace's annotations; None when it does not exist."""
    ns = await _get_or_none(client, Namespace, name)
    if ns is None:
        return None
    return dict(ns.metadata.annotations or {}) if ns.metadata else {}
