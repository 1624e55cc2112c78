"""
The pod index's feed: this node's pods (spec.nodeName field selector) from a ListWatcher;
for split mode's server, every pod of the cluster into its ClusterIndex.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

import lightkube
from lightkube.resources.core_v1 import Pod

from podiam.kube.pod_index import PodIndex
from podiam.kube.watcher import ListWatcher
from podiam.observability.metrics import Metrics
from podiam.pods import PodInfo
from podiam.settings import KubeSettings


def pod_info(pod: Pod) -> PodInfo:
    """The fields podiam needs from a Pod object."""
    meta, spec, status = pod.metadata, pod.spec, pod.status
    assert meta is not None and meta.name is not None
    namespace = meta.namespace or "default"
    return PodInfo(
        namespace=namespace,
        name=meta.name,
        uid=meta.uid or f"{namespace}/{meta.name}",
        ip=(status.podIP or None) if status else None,
        phase=status.phase if status else None,
        host_network=bool(spec and spec.hostNetwork),
        deleting=meta.deletionTimestamp is not None,
        service_account=spec.serviceAccountName if spec else None,
        annotations=dict(meta.annotations or {}),
        node=spec.nodeName if spec else None,
    )


class PodTarget(Protocol):
    """A PodIndex (one node's pods) or a ClusterIndex (every node's)."""

    def __len__(self) -> int: ...

    def replace(self, pods: Iterable[PodInfo]) -> None: ...

    def upsert(self, pod: PodInfo) -> None: ...

    def delete(self, pod: PodInfo) -> None: ...


class PodSink:
    """Turns Pod objects into PodInfo for the index, and keeps the pod metrics current."""

    def __init__(self, index: PodTarget, metrics: Metrics) -> None:
        self._index, self._metrics = index, metrics.pods

    def replace(self, objects: list[Any]) -> None:
        self._index.replace([pod_info(pod) for pod in objects])
        self._metrics.pods_indexed.set(len(self._index))
        self._metrics.index_synced.set(1)

    def apply(self, kind: str, obj: Any) -> None:
        if kind == "DELETED":
            self._index.delete(pod_info(obj))
        else:
            self._index.upsert(pod_info(obj))
        self._metrics.pods_indexed.set(len(self._index))


def pod_watcher(
    client: lightkube.AsyncClient, index: PodIndex, settings: KubeSettings, metrics: Metrics
) -> ListWatcher:
    """The watcher of the pods bound to ``settings.node_name``."""
    return ListWatcher(client, Pod, PodSink(index, metrics), settings, metrics,
                       fields={"spec.nodeName": settings.node_name}, what=f"pods on {settings.node_name}")


def cluster_pod_watcher(client: lightkube.AsyncClient, index: PodTarget, settings: KubeSettings,
                        metrics: Metrics) -> ListWatcher:
    """The watcher of every pod of the cluster (split mode's server)."""
    return ListWatcher(client, Pod, PodSink(index, metrics), settings, metrics, what="pods of every node")
