"""
One log record per credential issuance: a new set of credentials served to a pod for the
first time. Not per request: a pod reading its credentials a thousand times is one event.
The record names the pod and the access key id (which CloudTrail shows), never the secret
key or session token.
"""

from __future__ import annotations

import structlog

from podiam.credentials import Credentials, Identity
from podiam.pods import PodInfo

log = structlog.stdlib.get_logger("podiam.audit")


class IssuanceLog:
    def __init__(self, node: str) -> None:
        self._node = node
        self._last_served: dict[str, str] = {}
        """Pod uid -> access key id last served to it."""

    def served(self, pod: PodInfo, identity: Identity, credentials: Credentials) -> None:
        """Called on every credentials response; logs only when the pod gets a new set."""
        if self._last_served.get(pod.uid) == credentials.access_key_id:
            return
        self._last_served[pod.uid] = credentials.access_key_id
        log.info(
            "credentials issued",
            node=self._node,
            namespace=pod.namespace,
            pod=pod.name,
            pod_uid=pod.uid,
            service_account=pod.service_account,
            role_arn=identity.role_arn,
            session_name=identity.session_name,
            access_key_id=credentials.access_key_id,
            expiration=credentials.expiration.isoformat(),
        )

    def forget(self, pod: PodInfo) -> None:
        """The pod is gone; a pod that later reuses its uid slot is a new pod."""
        self._last_served.pop(pod.uid, None)
