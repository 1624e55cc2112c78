"""
What a pod is to podiam: the few fields that decide whether and how it is served.

Kept free of any Kubernetes client type so that policy and the metadata endpoint can be
tested with plain values; kube/ builds these from API objects.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from podiam.credentials import Identity
from podiam.errors import IdentityError

INACTIVE_PHASES = frozenset({"Succeeded", "Failed"})


@dataclass(frozen=True)
class PodInfo:
    namespace: str
    name: str
    uid: str
    ip: str | None
    """status.podIP; None until the network is set up."""
    phase: str | None = None
    host_network: bool = False
    deleting: bool = False
    """metadata.deletionTimestamp is set."""
    service_account: str | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)
    node: str | None = None
    """spec.nodeName: the node the pod is bound to."""

    @property
    def ref(self) -> str:
        """``namespace/name``: how people and kubectl name a pod."""
        return f"{self.namespace}/{self.name}"

    @property
    def active(self) -> bool:
        """Whether the pod may be served through its IP.

        A finished or terminating pod's IP can be handed to a new pod at any moment, and a
        hostNetwork pod shares the node's IP: none of them may claim an IP.
        """
        return (
            self.ip is not None
            and not self.host_network
            and not self.deleting
            and self.phase not in INACTIVE_PHASES
        )


@dataclass(frozen=True)
class PodEntry:
    """An active pod and what policy decided for it: an identity, or the error to answer with."""

    pod: PodInfo
    identity: Identity | None
    problem: IdentityError | None

    def same_decision(self, other: PodEntry) -> bool:
        """Whether policy decided the same for both (exceptions only compare by identity)."""
        return self.identity == other.identity and _problem_key(self.problem) == _problem_key(other.problem)


def _problem_key(problem: IdentityError | None) -> tuple[type, str] | None:
    return None if problem is None else (type(problem), str(problem))
