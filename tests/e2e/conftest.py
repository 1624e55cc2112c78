"""End-to-end fixtures: one sandboxed node (API emulator, moto STS, pods as network
namespaces behind the real DNAT rule) per test module, with a podiam agent on it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from podiam_sandbox.world import World


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world() -> AsyncIterator[World]:
    async with World() as w:
        yield w
