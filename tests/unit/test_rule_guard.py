"""
The rule guard against an in-memory rule store: a deleted rule is restored, counted, told
on the Node, and reported missing by readiness from the check until the restore is done;
iptables failures are retried at the next interval and never end the loop.
"""

from __future__ import annotations

import asyncio

import pytest

from podiam.errors import IptablesError
from podiam.node.rule_guard import RuleGuard
from podiam.observability.metrics import Metrics
from podiam.readiness import Readiness


class FakeRules:
    """A rule that tests delete; ``restore`` can be held or made to fail."""

    def __init__(self) -> None:
        self.installed = True
        self.check_error: IptablesError | None = None
        self.restore_error: IptablesError | None = None
        self.hold: asyncio.Event | None = None
        self.restoring = asyncio.Event()
        self.restores = 0

    def describe(self) -> str:
        return "the test rule"

    async def present(self) -> bool:
        if self.check_error is not None:
            raise self.check_error
        return self.installed

    async def restore(self) -> None:
        self.restoring.set()
        if self.hold is not None:
            await self.hold.wait()
        if self.restore_error is not None:
            raise self.restore_error
        self.restores += 1
        self.installed = True


def sample(metrics: Metrics, name: str) -> float | None:
    return metrics.registry.get_sample_value(name)


def readiness(guard: RuleGuard) -> Readiness:
    return Readiness(started=lambda: True, stopping=lambda: False, index_synced=lambda: True,
                     rule_missing=lambda: guard.missing)


async def test_a_deleted_rule_is_reported_missing_until_restored_then_counted_and_told() -> None:
    rules, metrics = FakeRules(), Metrics()
    told: list[str] = []
    guard = RuleGuard(rules, metrics, interval=5.0, on_restored=told.append)
    ready = readiness(guard)
    await guard.check()
    assert ready.reason() is None and rules.restores == 0 and told == []

    rules.installed = False  # iptables -t nat -F
    rules.hold = asyncio.Event()
    check = asyncio.create_task(guard.check(), name="check")
    async with asyncio.timeout(5):
        await rules.restoring.wait()
    # The gap: seen missing, not back yet.
    assert ready.reason() == "iptables rule missing"
    assert sample(metrics, "podiam_iptables_rule_present") == 0
    rules.hold.set()
    async with asyncio.timeout(5):
        await check

    assert ready.reason() is None
    assert rules.installed and rules.restores == 1
    assert sample(metrics, "podiam_iptables_rule_present") == 1
    assert sample(metrics, "podiam_iptables_rule_restored_total") == 1
    [message] = told
    assert "the test rule" in message and "restored" in message


async def test_iptables_failures_are_retried_at_the_next_interval_and_never_end_the_loop() -> None:
    rules, metrics = FakeRules(), Metrics()
    rules.installed = False
    rules.restore_error = IptablesError("iptables -I PREROUTING ... failed: resource busy")
    rounds = 0

    async def sleep(seconds: float) -> None:
        nonlocal rounds
        assert seconds == 5.0
        rounds += 1
        if rounds == 2:
            assert guard.missing is not None and "not restored" in guard.missing
            assert "resource busy" in guard.missing
            rules.restore_error = None
            rules.check_error = IptablesError("iptables -C ... did not finish within 10 s")
        elif rounds == 3:
            rules.check_error = None
        elif rounds == 5:
            raise asyncio.CancelledError  # the runner's cancellation at shutdown

    guard = RuleGuard(rules, metrics, interval=5.0, sleep=sleep)
    with pytest.raises(asyncio.CancelledError):
        await guard.run()
    # Round 1 failed to restore, round 2 could not check (state kept), round 3 restored.
    assert rules.restores == 1 and guard.missing is None
    assert sample(metrics, "podiam_iptables_check_errors_total") == 2
    assert sample(metrics, "podiam_iptables_rule_restored_total") == 1


def test_a_zero_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="interval"):
        RuleGuard(FakeRules(), Metrics(), interval=0)
