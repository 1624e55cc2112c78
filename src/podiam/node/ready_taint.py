"""
The node's start-up taint (--node-ready-taint KEY): nodes join the cluster with a NoSchedule
taint KEY (kubelet --register-with-taints, or the node group's configuration), and the taint
goes once this node's agent is ready, so that no pod is scheduled onto the node before its
metadata traffic is redirected to podiam. Without it, a pod that starts before the agent's
rule exists talks to the node's real IMDS and gets the node's credentials (ANCHORS.md,
complaint 7). Cilium does the same with ``node.cilium.io/agent-not-ready``.

Ready means what /readyz says (readiness.py): start-up finished, so the DNAT rule is installed
(with --iptables), the rule not missing, the pods known (the first list, or in split mode the
first snapshot), no watch failing. An agent that cannot install its rule stops at start and
never gets there: the taint stays, and the node takes no pods.

``ReadyTaintRemoval`` owns one task: it looks at readiness every ``ready_poll`` seconds until
ready, then calls ``remove`` until it succeeds, waiting the shared back-off after each failure
(retried for as long as the agent runs), logs the outcome once and ends. What ``remove`` does
is the mode's: in agent mode the agent removes the taint with its own API client
(kube/node_taint.py); a split agent has no API access and reports its readiness to a podiam
server (remote/ready.py), which removes the taint its own --node-ready-taint names.

The taint is not put back when readiness is lost later (as with Cilium's): a node's running
pods would not leave for it, and the agent's rule guard restores a deleted rule in seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import structlog

from podiam.backoff import Backoff
from podiam.settings import ReadyTaintSettings

log = structlog.stdlib.get_logger(__name__)


@dataclass(frozen=True)
class TaintOutcome:
    """What a successful removal found."""

    key: str | None
    """The taint's key; None when there is none to remove (a podiam server without --node-ready-taint)."""
    removed: bool
    """Whether a taint was removed now (False: the node did not have it)."""


Remove = Callable[[], Awaitable[TaintOutcome]]
"""One removal attempt; any exception is a failure, retried after the back-off."""


class ReadyTaintRemoval:
    """``async with`` owns the task that removes the node's start-up taint once ``ready()``."""

    def __init__(self, remove: Remove, ready: Callable[[], bool], settings: ReadyTaintSettings, *, node: str,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 rng: Callable[[], float] = random.random) -> None:
        """
        remove: one attempt (agent mode: the Node's read and patch; split mode: a ReportReady call).
        ready: /readyz's decision, as a yes/no.
        sleep, rng: the waits and the back-off's jitter (tests pass their own).
        """
        self._remove, self._ready, self._settings, self._node = remove, ready, settings, node
        self._sleep, self._rng = sleep, rng
        self._backoff = Backoff(settings.retry_initial, settings.retry_max)
        self._task: asyncio.Task[None] | None = None
        self.outcome: TaintOutcome | None = None
        """Set once a removal succeeded."""
        self.done = asyncio.Event()
        """Set with ``outcome``."""

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self.run(), name="node-ready-taint")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run(self) -> None:
        """Wait until ready, then remove until done; returns once done (or raises CancelledError)."""
        while not self._ready():
            await self._sleep(self._settings.ready_poll)
        failures, last_error = 0, ""
        while True:
            try:
                outcome = await self._remove()
            except Exception as e:  # any failure is retried: the node must not stay tainted
                failures += 1
                delay = self._backoff.delay(failures, self._rng())
                error = f"{type(e).__name__}: {str(e)[:200]}"
                # Said once per distinct error: a missing RBAC grant must show, a long outage not flood.
                (log.warning if error != last_error else log.debug)(
                    "node-ready taint not removed yet; retrying", node=self._node, error=error,
                    failures=failures, retry_in=round(delay, 2))
                last_error = error
                await self._sleep(delay)
                continue
            self._finish(outcome)
            return

    def _finish(self, outcome: TaintOutcome) -> None:
        self.outcome = outcome
        self.done.set()
        if outcome.key is None:
            log.info("no node-ready taint to remove: the podiam server has no --node-ready-taint", node=self._node)
        elif outcome.removed:
            log.info("node-ready taint removed", node=self._node, key=outcome.key)
        else:
            log.info("node-ready taint already absent", node=self._node, key=outcome.key)
