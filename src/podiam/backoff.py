"""
The one retry back-off of podiam: every retry loop (the watches, the STS cache) asks a
``Backoff`` how long to wait after ``failures`` consecutive failures.

Capped before it is computed: the exponent is clamped, so no count of failures (an API
unreachable for days) can overflow the arithmetic. ``0.1 * 2**failures`` raised
OverflowError after about a thousand failures and ended the agent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

_MAX_EXPONENT = 1023
"""2.0**1023 is the largest power of two a float holds; any cap is reached long before."""


@dataclass(frozen=True)
class Backoff:
    """Exponential back-off with a cap and downward jitter.

    The base delay is ``initial`` after the first failure, doubling per failure up to
    ``maximum``; the delay is the base shortened by up to ``jitter`` of itself, at random,
    so that many retriers failing together (an API or STS outage) do not retry together.
    Every delay is within [initial * (1 - jitter), maximum].
    """

    initial: float
    """Seconds: the base delay after the first failure."""

    maximum: float
    """Seconds: the cap of the base delay, and so of every delay."""

    jitter: float = 0.5
    """Fraction of the base delay that may be taken off at random, in [0, 1]."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.initial) and math.isfinite(self.maximum) and 0 < self.initial <= self.maximum):
            raise ValueError(f"back-off needs 0 < initial ({self.initial}) <= maximum ({self.maximum}), finite")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"back-off jitter {self.jitter} is not a fraction in [0, 1]")

    def base(self, failures: int) -> float:
        """Seconds before jitter, after ``failures`` consecutive failures (below 1 counts as 1)."""
        exponent = min(max(failures, 1) - 1, _MAX_EXPONENT)
        return min(self.maximum, self.initial * 2.0**exponent)

    def delay(self, failures: int, r: float) -> float:
        """Seconds to wait after ``failures`` consecutive failures; ``r`` is a draw in [0, 1)."""
        return self.base(failures) * (1.0 - self.jitter * min(max(r, 0.0), 1.0))
