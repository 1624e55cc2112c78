"""
The audit trail: one record per credential issuance, i.e. a new set of credentials served
to a pod for the first time. Not per request: a pod reading its credentials a thousand
times is one event. The record names the pod and the access key id (which CloudTrail
shows next to every API call made with it), never the secret key or session token.

Records go to the normal log stream, or with --audit-log to their own JSON-lines file (or
stdout), for a pipeline that keeps them longer than logs.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Callable
from typing import IO, Any

import structlog

from podiam.credentials import Credentials, Identity
from podiam.pods import PodInfo

log = structlog.stdlib.get_logger("podiam.audit")

AuditWriter = Callable[[dict[str, Any]], None]


def log_writer(record: dict[str, Any]) -> None:
    """The default: an info line on the normal log stream."""
    log.info("credentials issued", **record)


class JsonLinesWriter:
    """Appends one JSON object per line to a file, or writes to stdout for ``-``."""

    def __init__(self, target: str) -> None:
        self._own = target != "-"
        # Line-buffered: each record reaches the file whole, even if the agent is killed.
        self._stream: IO[str] = open(target, "a", buffering=1, encoding="utf-8") if self._own else sys.stdout  # noqa: SIM115

    def __call__(self, record: dict[str, Any]) -> None:
        self._stream.write(json.dumps({"event": "credentials issued", **record}) + "\n")
        if not self._own:
            self._stream.flush()

    def close(self) -> None:
        if self._own:
            self._stream.close()


class IssuanceLog:
    def __init__(self, node: str, write: AuditWriter = log_writer,
                 now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> None:
        self._node = node
        self._write = write
        self._now = now
        self._last_served: dict[str, str] = {}
        """Pod uid -> access key id last served to it."""

    def served(self, pod: PodInfo, identity: Identity, credentials: Credentials) -> None:
        """Called on every credentials response; records only when the pod gets a new set."""
        if self._last_served.get(pod.uid) == credentials.access_key_id:
            return
        self._last_served[pod.uid] = credentials.access_key_id
        self._write({
            "time": self._now().isoformat(timespec="seconds").replace("+00:00", "Z"),
            "node": self._node,
            "namespace": pod.namespace,
            "pod": pod.name,
            "pod_uid": pod.uid,
            "service_account": pod.service_account,
            "role_arn": identity.role_arn,
            "session_name": identity.session_name,
            "access_key_id": credentials.access_key_id,
            "expiration": credentials.expiration.isoformat(timespec="seconds").replace("+00:00", "Z"),
        })

    def forget(self, pod: PodInfo) -> None:
        """The pod is gone; its next issuance, if any, is a new record."""
        self._last_served.pop(pod.uid, None)
