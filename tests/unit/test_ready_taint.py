"""The node-ready taint: the patch that removes it (only its key's taints, the rest untouched and
in order, conditional on the version read), and the task that removes it (not before ready,
retried with the shared back-off until done, logged once), with in-memory fakes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from podiam.errors import KubeError, NodeChanged
from podiam.kube.node_taint import NodeTaints, removal_patch
from podiam.node.ready_taint import ReadyTaintRemoval, TaintOutcome
from podiam.settings import ReadyTaintSettings

KEY = "podiam.io/agent-not-ready"
OURS = {"key": KEY, "value": "true", "effect": "NoSchedule"}
OTHER = {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}
EXECUTE = {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute", "timeAdded": "2030-01-02T03:04:05Z"}


def test_the_patch_removes_the_keys_taints_and_keeps_the_others_in_order() -> None:
    ours_execute = {"key": KEY, "effect": "NoExecute"}  # one key may carry several effects: all go
    patch = removal_patch([OTHER, OURS, EXECUTE, ours_execute], KEY, "42")
    assert patch == {"metadata": {"resourceVersion": "42"}, "spec": {"taints": [OTHER, EXECUTE]}}


def test_the_last_taint_going_removes_the_field() -> None:
    assert removal_patch([OURS], KEY, "7") == {"metadata": {"resourceVersion": "7"}, "spec": {"taints": None}}


def test_nothing_is_written_without_the_keys_taint() -> None:
    assert removal_patch([OTHER, EXECUTE], KEY, "7") is None
    assert removal_patch([], KEY, "7") is None
    # A value or an effect equal to the key is not the key.
    assert removal_patch([{"key": "x", "value": KEY, "effect": "NoSchedule"}], KEY, "7") is None


def test_node_taints_tell_whether_the_key_is_there() -> None:
    taints = NodeTaints("node-1", "9", (OTHER, OURS))
    assert taints.has(KEY) and not taints.has("dedicated2")
    assert taints.without(KEY) == removal_patch([OTHER, OURS], KEY, "9")


taint = st.fixed_dictionaries(
    {"key": st.sampled_from([KEY, "dedicated", "a/b", "x"]), "effect": st.sampled_from(["NoSchedule", "NoExecute"])},
    optional={"value": st.sampled_from(["", "true", KEY])},
)


@given(st.lists(taint, max_size=8))
def test_the_patch_never_touches_another_key(taints: list[dict[str, Any]]) -> None:
    patch = removal_patch(taints, KEY, "1")
    others = [t for t in taints if t["key"] != KEY]
    if patch is None:
        assert others == taints
    else:
        assert patch["spec"]["taints"] == (others or None)
        assert patch["metadata"] == {"resourceVersion": "1"}


class Script:
    """A fake removal: answers from a list (an exception is raised), counting calls."""

    def __init__(self, *answers: TaintOutcome | Exception) -> None:
        self.answers = list(answers)
        self.calls = 0

    async def __call__(self) -> TaintOutcome:
        self.calls += 1
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


class Clock:
    """The task's sleep: records each wait, and lets ``on_sleep`` change the world meanwhile."""

    def __init__(self, on_sleep: Callable[[float], None] = lambda seconds: None) -> None:
        self.waits: list[float] = []
        self._on_sleep = on_sleep

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self._on_sleep(seconds)
        await asyncio.sleep(0)


SETTINGS = ReadyTaintSettings(key=KEY, ready_poll=0.5, retry_initial=1.0, retry_max=4.0)


async def test_nothing_is_removed_before_ready() -> None:
    ready = [False, False, False, True]
    script = Script(TaintOutcome(KEY, removed=True))
    clock = Clock(lambda seconds: ready.pop(0))
    removal = ReadyTaintRemoval(script, lambda: ready[0], SETTINGS, node="node-1", sleep=clock.sleep)
    await removal.run()
    assert clock.waits == [0.5, 0.5, 0.5]  # three looks at readiness, each ready_poll apart
    assert script.calls == 1
    assert removal.outcome == TaintOutcome(KEY, removed=True) and removal.done.is_set()


async def test_failures_are_retried_with_the_back_off_until_done(caplog: pytest.LogCaptureFixture) -> None:
    script = Script(NodeChanged("node node-1 changed"), KubeError("503 ServiceUnavailable"),
                    KubeError("503 ServiceUnavailable"), KeyError("content-type"), KubeError("x"),
                    TaintOutcome(KEY, removed=True))
    clock = Clock()
    removal = ReadyTaintRemoval(script, lambda: True, SETTINGS, node="node-1", sleep=clock.sleep, rng=lambda: 0.0)
    with caplog.at_level(logging.DEBUG, "podiam.node.ready_taint"):
        await removal.run()
    assert script.calls == 6
    assert clock.waits == [1.0, 2.0, 4.0, 4.0, 4.0]  # doubling from retry_initial, capped at retry_max
    events = [(r.levelname, r.msg["event"], r.msg.get("error")) for r in caplog.records]
    retry = "node-ready taint not removed yet; retrying"
    assert events == [
        ("WARNING", retry, "NodeChanged: node node-1 changed"),
        ("WARNING", retry, "KubeError: 503 ServiceUnavailable"),
        ("DEBUG", retry, "KubeError: 503 ServiceUnavailable"),  # the same error again: not repeated as a warning
        ("WARNING", retry, "KeyError: 'content-type'"),
        ("WARNING", retry, "KubeError: x"),
        ("INFO", "node-ready taint removed", None),
    ]


@pytest.mark.parametrize(("outcome", "event"), [
    (TaintOutcome(KEY, removed=False), "node-ready taint already absent"),
    (TaintOutcome(None, removed=False), "no node-ready taint to remove: the podiam server has no --node-ready-taint"),
])
async def test_the_outcome_is_logged_once(outcome: TaintOutcome, event: str, caplog: pytest.LogCaptureFixture) -> None:
    removal = ReadyTaintRemoval(Script(outcome), lambda: True, SETTINGS, node="node-1", sleep=Clock().sleep)
    with caplog.at_level(logging.DEBUG, "podiam.node.ready_taint"):
        await removal.run()
    assert [r.msg["event"] for r in caplog.records] == [event]
    assert removal.outcome == outcome


async def test_the_task_is_owned_and_stopped_at_exit() -> None:
    never_ready = ReadyTaintRemoval(Script(), lambda: False, SETTINGS, node="node-1")
    async with never_ready:
        await asyncio.sleep(0)
    assert not never_ready.done.is_set()
    # The suite's task hygiene fixture fails this test if the task outlived the block.
