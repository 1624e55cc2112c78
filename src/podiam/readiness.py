"""
What /readyz answers: one decision, read by the operator endpoint (with its reason) and by
the metadata endpoint's /readyz (as a yes/no, through ``ImdsDeps.ready``).

Ready means pods are served correctly now. Not ready, in this order of precedence:

- ``stopping``: shutdown has begun;
- ``starting``: start-up has not finished (the rule may not be installed yet);
- the DNAT rule is missing (``iptables rule missing``, until the guard has put it back);
- a watch is failing: at once while it has never listed (``pods on node-1 watch failing for
  3s: ConnectError: ...``), and after ``watch_unready_after`` seconds of failure once it has
  (the index keeps serving what it last saw through a short API blip);
- ``pod index not synced yet``: the first list of this node's pods has not arrived.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # a type only: split mode's agent must not import the Kubernetes client
    from podiam.kube.watcher import WatchHealth


class WatchState(Protocol):
    @property
    def what(self) -> str: ...

    def health(self) -> WatchHealth: ...


class Readiness:
    """Call it for ready yes/no; ``reason()`` for why not (None when ready)."""

    def __init__(
        self,
        *,
        started: Callable[[], bool],
        stopping: Callable[[], bool],
        index_synced: Callable[[], bool],
        watches: Sequence[WatchState] = (),
        rule_missing: Callable[[], str | None] = lambda: None,
        unready_after: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """
        rule_missing: why the DNAT rule is not in place, or None (the rule guard's ``missing``).
        unready_after: seconds a synced watch may fail before it makes the agent not ready.
        clock: monotonic seconds, the watches' clock.
        """
        self._started, self._stopping, self._index_synced = started, stopping, index_synced
        self._watches, self._rule_missing = list(watches), rule_missing
        self._unready_after, self._clock = unready_after, clock

    def __call__(self) -> bool:
        return self.reason() is None

    def reason(self) -> str | None:
        if self._stopping():
            return "stopping"
        if not self._started():
            return "starting"
        missing = self._rule_missing()
        if missing is not None:
            return missing
        now = self._clock()
        for watch in self._watches:
            health = watch.health()
            failing = health.failing_for(now)
            if health.failing_since is not None and (not health.synced or failing >= self._unready_after):
                return f"{watch.what} watch failing for {failing:.0f}s: {health.last_error}"
        if not self._index_synced():
            return "pod index not synced yet"
        return None
