"""
The namespace index: each namespace's role restrictions, parsed once per namespace event,
fed by a ListWatcher. A change tells the pod index to decide that namespace's pods again,
so an annotation added or removed at run time takes effect without a restart, and a pod
whose role is no longer permitted stops being served at once (its cached credentials too).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import lightkube
import structlog
from lightkube.resources.core_v1 import Namespace

from podiam.kube.watcher import ListWatcher
from podiam.observability.metrics import Metrics
from podiam.policy import NamespaceRules, RolePolicy
from podiam.settings import KubeSettings

log = structlog.stdlib.get_logger(__name__)


class NamespaceIndex:
    def __init__(self, policy: RolePolicy, metrics: Metrics) -> None:
        self._policy = policy
        self._metrics = metrics.policy
        self._rules: dict[str, NamespaceRules] = {}
        self._listeners: list[Callable[[str], None]] = []
        self.synced = asyncio.Event()

    def subscribe(self, on_change: Callable[[str], None]) -> None:
        """``on_change(namespace)`` is called whenever a namespace's rules change."""
        self._listeners.append(on_change)

    def rules(self, namespace: str) -> NamespaceRules | None:
        return self._rules.get(namespace)

    def set(self, name: str, annotations: dict[str, str] | None) -> None:
        """Apply one namespace's current annotations (None: the namespace is gone)."""
        old = self._rules.get(name)
        new = None if annotations is None else self._policy.parse_namespace(name, annotations)
        if new == old:
            return
        if new is None:
            del self._rules[name]
        else:
            self._rules[name] = new
            if new.problem and (old is None or old.problem != new.problem):
                log.warning("namespace annotation cannot be used; the namespace permits no role",
                            namespace=name, problem=new.problem)
        self._metrics.namespace_annotation_errors.set(sum(1 for r in self._rules.values() if r.problem))
        for listener in self._listeners:
            listener(name)

    # WatchSink
    def replace(self, objects: list[Any]) -> None:
        listed = {ns.metadata.name: dict(ns.metadata.annotations or {}) for ns in objects}
        for name in [n for n in self._rules if n not in listed]:
            self.set(name, None)
        for name, notes in listed.items():
            self.set(name, notes)
        self.synced.set()

    def apply(self, kind: str, obj: Any) -> None:
        self.set(obj.metadata.name, None if kind == "DELETED" else dict(obj.metadata.annotations or {}))


def namespace_watcher(
    client: lightkube.AsyncClient, index: NamespaceIndex, settings: KubeSettings, metrics: Metrics
) -> ListWatcher:
    return ListWatcher(client, Namespace, index, settings, metrics, what="namespaces")
