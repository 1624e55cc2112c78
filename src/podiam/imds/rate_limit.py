"""
Per-caller token buckets for the metadata endpoint: ``rate`` requests per second with a
burst of twice that (at least one). SDKs ask a few times per credential refresh; a pod in a tight loop
gets 429 with Retry-After instead of taking the agent's CPU from every other pod.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from podiam.settings import ImdsSettings


class RateLimiter:
    """Token buckets kept as one number per caller (the generic cell rate algorithm).

    A bucket of ``burst`` tokens refilled at ``rate`` per second allows exactly what this
    allows; instead of the tokens and when they were counted, each caller has the time at
    which its bucket would be full again (``_full_at``). A request is allowed when that is at
    most ``burst - 1`` requests' worth of time ahead, and moves it one request later. Why: the
    check is on every request, replays too (imds/core.py), and this is one lookup, two
    comparisons and one store of a float, where the bucket built a tuple per request.
    """

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic,
                 max_tracked: int = ImdsSettings.rate_limit_tracked) -> None:
        """max_tracked: callers remembered at most (ImdsSettings.rate_limit_tracked says why)."""
        if rate < 0:
            raise ValueError("rate must be >= 0")
        self.rate = rate
        self._max_tracked = max_tracked
        # At least one request: below half a request per second, twice the rate would refuse all.
        self.burst = max(1.0, 2.0 * rate)
        self._interval = 1.0 / rate if rate else 0.0
        """Seconds one request takes from a bucket."""
        self._tolerance = (self.burst - 1.0) * self._interval
        """How far ahead of now a caller's bucket may be full again and still allow a request."""
        self._clock = clock
        self._full_at: dict[str, float] = {}
        """caller -> when its bucket is full again (the clock's seconds); past means full now."""

    @property
    def tracked(self) -> int:
        """Callers remembered now: what ``max_tracked`` bounds, whatever callers a pod invents.

        A property, not ``__len__``: an empty limiter must not be falsy (``limiter or default``)."""
        return len(self._full_at)

    def retry_after(self, caller: str) -> float:
        """Take one token for ``caller``: 0 when allowed, else seconds until one is free."""
        if not self.rate:
            return 0.0
        now = self._clock()
        full_at = self._full_at.get(caller)
        if full_at is None:
            if len(self._full_at) >= self._max_tracked:
                self._forget_idle(now)
            full_at = now
        elif full_at < now:
            full_at = now
        wait = full_at - self._tolerance - now
        if wait > 0:
            return wait  # refused: nothing taken
        self._full_at[caller] = full_at + self._interval
        return 0.0

    def _forget_idle(self, now: float) -> None:
        """Drop callers whose buckets have refilled: forgetting them changes nothing."""
        for caller in [c for c, full_at in self._full_at.items() if full_at <= now]:
            del self._full_at[caller]


def retry_after_header(seconds: float) -> str:
    """Retry-After takes whole seconds; never 0, which would invite an immediate retry."""
    return str(max(1, math.ceil(seconds)))
