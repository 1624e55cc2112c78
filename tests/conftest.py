"""Suite-wide rules: no test may leave asyncio tasks behind; root-only tests skip elsewhere;
podiam's structlog events reach pytest's caplog as records that carry their fields."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from podiam.observability.logging import route_through_stdlib


def pytest_configure(config: pytest.Config) -> None:
    # As the agent does it, minus its handler: caplog then holds each event's dict in
    # record.msg, and tests assert on the event and its fields, not on rendered text.
    route_through_stdlib()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root: network namespaces and iptables")
    for item in items:
        if "root" in item.keywords or "e2e" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _task_hygiene(request: pytest.FixtureRequest) -> None:
    if asyncio.iscoroutinefunction(getattr(request.node, "obj", None)):
        request.getfixturevalue("_no_leftover_tasks")


def _grpc_call_status(task: asyncio.Task[object]) -> bool:
    """grpc.aio's own per-call task that waits for gRPC core to report a cancelled call's status.

    grpc creates and finishes it itself; when a stream is cancelled while its channel closes,
    the status may arrive a loop turn after the test ends (seen under load, about 1 run in 7).
    It is grpc's, not a task podiam started and failed to stop."""
    return getattr(task.get_coro(), "__qualname__", "") == "_AioCall._handle_status_once_received"


@pytest_asyncio.fixture()
async def _no_leftover_tasks() -> AsyncIterator[None]:
    """Fail any test that leaves tasks running: every background task must be owned and stopped."""
    before = asyncio.all_tasks()
    yield
    leftovers = [t for t in asyncio.all_tasks() - before
                 if not t.done() and t is not asyncio.current_task() and not _grpc_call_status(t)]
    if leftovers:
        names = ", ".join(sorted(t.get_name() for t in leftovers))
        for t in leftovers:
            t.cancel()
        pytest.fail(f"test left asyncio tasks running: {names}")
