"""
What happens when the pod index decides a pod: its credentials are fetched, or its owner is
told why it gets none. Both apply the one decision (decision.py) the endpoint answers with.

Credentials are fetched when a pod enters the index (it is bound to this node and has its
IP), not when it first asks: the IP is set before the pod's containers start, so a pod's
first request finds its credentials cached. When the last pod of an identity goes, they
stop being refreshed.
"""

from __future__ import annotations

from typing import Protocol

import structlog

from podiam.credentials import Identity
from podiam.decision import Refusal, decide
from podiam.imds.core import EventSink
from podiam.observability.audit import IssuanceLog
from podiam.observability.metrics import Metrics
from podiam.pods import PodEntry
from podiam.sts.cache import CredentialCache

log = structlog.stdlib.get_logger(__name__)


class IdentitiesInUse(Protocol):
    """The pod index (one node's) or the server's cluster view (every node's)."""

    def identity_in_use(self, identity: Identity) -> bool: ...


class PrefetchWhenIndexed:
    """Pod index listener: prefetch a pod's identity, or tell its refusal when it is decided."""

    def __init__(self, cache: CredentialCache, index: IdentitiesInUse, issuance: IssuanceLog, events: EventSink,
                 metrics: Metrics) -> None:
        self._cache, self._index, self._issuance, self._events = cache, index, issuance, events
        self._metrics = metrics.policy

    def pod_active(self, entry: PodEntry) -> None:
        decision = decide(entry)
        if not isinstance(decision, Refusal):
            self._cache.prefetch(decision)
            return
        # Told to the pod's owner when it is decided, not only when the pod first asks.
        (log.debug if decision.expected else log.warning)("pod cannot be served", pod=entry.pod.ref,
                                                          reason=decision.message)
        if decision.event is not None:
            self._metrics.policy_denials.labels(decision.event).inc()
            self._events.warn(entry.pod, decision.event, decision.message)

    def pod_gone(self, entry: PodEntry) -> None:
        self._issuance.forget(entry.pod)
        self._events.forget(entry.pod)
        if entry.identity is not None and not self._index.identity_in_use(entry.identity):
            self._cache.discard(entry.identity)
