"""
Per-caller token buckets for the metadata endpoint: ``rate`` requests per second with a
burst of twice that. SDKs ask a few times per credential refresh; a pod in a tight loop
gets 429 with Retry-After instead of taking the agent's CPU from every other pod.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from podiam.settings import ImdsSettings


class RateLimiter:
    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic,
                 max_tracked: int = ImdsSettings.rate_limit_tracked) -> None:
        """max_tracked: callers remembered at most (ImdsSettings.rate_limit_tracked says why)."""
        if rate < 0:
            raise ValueError("rate must be >= 0")
        self.rate = rate
        self._max_tracked = max_tracked
        self.burst = 2.0 * rate
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        """caller -> (tokens, time of the last update)"""

    @property
    def tracked(self) -> int:
        """Callers remembered now: what ``max_tracked`` bounds, whatever callers a pod invents.

        A property, not ``__len__``: an empty limiter must not be falsy (``limiter or default``)."""
        return len(self._buckets)

    def retry_after(self, caller: str) -> float:
        """Take one token for ``caller``: 0 when allowed, else seconds until one is free."""
        if self.rate == 0:
            return 0.0
        now = self._clock()
        tokens, last = self._buckets.get(caller, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            if len(self._buckets) >= self._max_tracked and caller not in self._buckets:
                self._forget_idle(now)
            self._buckets[caller] = (tokens - 1.0, now)
            return 0.0
        self._buckets[caller] = (tokens, now)
        return (1.0 - tokens) / self.rate

    def _forget_idle(self, now: float) -> None:
        """Drop callers whose buckets have refilled: forgetting them changes nothing."""
        full = [c for c, (tokens, last) in self._buckets.items()
                if tokens + (now - last) * self.rate >= self.burst]
        for caller in full:
            del self._buckets[caller]


def retry_after_header(seconds: float) -> str:
    """Retry-After takes whole seconds; never 0, which would invite an immediate retry."""
    return str(max(1, math.ceil(seconds)))
