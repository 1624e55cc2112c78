"""
Callers waiting, under a deadline, for something about a key to change: the pod index's
requests waiting for a pod's IP, the split agent's requests waiting for an identity's
credentials. One shape in both, so the cleanup is written once: a waiter that gave up is
removed, and a key with no waiter left is forgotten, so the table holds only callers that
are waiting now (bounded by the requests in flight).
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class Waiters(Generic[K]):
    def __init__(self) -> None:
        self._by_key: dict[K, set[asyncio.Future[None]]] = {}

    def __len__(self) -> int:
        """Keys waited for now."""
        return len(self._by_key)

    async def wait(self, key: K, deadline: float) -> None:
        """Until ``wake(key)``; TimeoutError at ``deadline`` (the running loop's time)."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._by_key.setdefault(key, set()).add(waiter)
        try:
            async with asyncio.timeout_at(deadline):
                await waiter
        finally:
            waiters = self._by_key.get(key)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._by_key[key]

    def wake(self, key: K) -> None:
        """Wake every caller waiting for ``key``; they look again."""
        for waiter in self._by_key.pop(key, ()):
            if not waiter.done():
                waiter.set_result(None)
