"""
Keeps the DNAT rule installed while the agent runs.

Something else on the node can delete it: a CNI or kube-proxy restart that rewrites the nat
table, or a person's ``iptables -t nat -F``. Until it is back, pods' metadata requests time
out or reach the node's real IMDS. The guard checks every ``interval`` seconds, restores a
missing rule, and says so: a warning in the log, ``podiam_iptables_rule_restored_total``,
a Warning Event on the Node (through ``on_restored``), and /readyz answering 503 from the
moment the rule is seen missing until it is back (``missing``).

An iptables call that fails is logged, counted and tried again at the next interval: the
guard never ends the agent. It is stopped before the rule is removed at shutdown, so it
never puts back a rule the agent is removing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

import structlog

from podiam.errors import IptablesError
from podiam.node.iptables import DnatRule, ensure_rule, rule_present
from podiam.observability.metrics import Metrics
from podiam.settings import NodeSettings

log = structlog.stdlib.get_logger(__name__)

RESTORED_REASON = "IptablesRuleRestored"
"""The Node Event's reason."""


class RuleStore(Protocol):
    """Where the rule lives; the real one is iptables, tests use an in-memory one."""

    def describe(self) -> str:
        """The rule, for logs and the Event."""
        ...

    async def present(self) -> bool:
        """Whether the rule is installed; raises IptablesError when that cannot be told."""
        ...

    async def restore(self) -> None:
        """Install the rule (no second copy); raises IptablesError on failure."""
        ...


class IptablesRules:
    """The DNAT rule in the node's nat table."""

    def __init__(self, rule: DnatRule, *, call_timeout: float = NodeSettings.iptables_timeout,
                 binary: str = "iptables") -> None:
        """binary: the chosen backend's iptables (node/backend.py)."""
        self._rule = rule
        self._call_timeout = call_timeout
        self._binary = binary

    def describe(self) -> str:
        r = self._rule
        return f"nat PREROUTING DNAT of {r.metadata_ip}:{r.metadata_port} on {r.interface} to {r.destination}"

    async def present(self) -> bool:
        return await rule_present(self._rule, call_timeout=self._call_timeout, binary=self._binary)

    async def restore(self) -> None:
        # ensure_rule checks again: a rule put back meanwhile is not doubled.
        await ensure_rule(self._rule, call_timeout=self._call_timeout, binary=self._binary)


class RuleGuard:
    """A root task: ``run()`` checks every ``interval`` seconds until cancelled."""

    def __init__(
        self,
        rules: RuleStore,
        metrics: Metrics,
        *,
        interval: float,
        on_restored: Callable[[str], None] = lambda message: None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """
        interval: seconds between checks; the rule is installed when the guard starts.
        on_restored: told the message after a restore (the runner records the Node Event).
        sleep: waits between checks (tests pass one they control).
        """
        if interval <= 0:
            raise ValueError("the iptables check interval must be positive")
        self._rules, self._metrics, self._interval = rules, metrics.rule, interval
        self._on_restored, self._sleep = on_restored, sleep
        self._missing: str | None = None
        self._metrics.iptables_rule_present.set(1)

    @property
    def missing(self) -> str | None:
        """Why the rule is not in place (for /readyz), or None while it is, as far as known."""
        return self._missing

    async def run(self) -> None:
        while True:
            await self._sleep(self._interval)
            await self.check()

    async def check(self) -> None:
        """One round: check, and restore if missing. Never raises IptablesError."""
        try:
            if await self._rules.present():
                self._set_missing(None)
                return
        except IptablesError as e:
            # Unknown is not missing: readiness keeps what the last check found.
            self._metrics.iptables_check_errors.inc()
            log.warning("could not check the iptables rule; trying again at the next interval", error=str(e))
            return
        rule = self._rules.describe()
        self._set_missing("iptables rule missing")
        log.warning("iptables rule missing; restoring it", rule=rule)
        try:
            await self._rules.restore()
        except IptablesError as e:
            self._metrics.iptables_check_errors.inc()
            self._set_missing(f"iptables rule missing and not restored: {e}")
            log.warning("could not restore the iptables rule; trying again at the next interval",
                        rule=rule, error=str(e))
            return
        self._set_missing(None)
        self._metrics.iptables_rule_restored.inc()
        message = (f"the podiam rule ({rule}) was missing and has been restored; meanwhile pods' metadata "
                   "requests may have timed out or reached the node's own metadata service")
        log.warning("iptables rule restored", rule=rule)
        self._on_restored(message)

    def _set_missing(self, reason: str | None) -> None:
        self._missing = reason
        self._metrics.iptables_rule_present.set(0 if reason else 1)
