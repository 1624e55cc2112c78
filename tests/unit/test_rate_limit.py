"""Per-pod token buckets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from podiam.imds.rate_limit import RateLimiter, retry_after_header


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_of_twice_the_rate_then_refusal_with_the_wait() -> None:
    clock = Clock()
    limiter = RateLimiter(10, clock)
    assert [limiter.retry_after("a") for _ in range(20)] == [0.0] * 20
    assert limiter.retry_after("a") == pytest.approx(0.1)
    assert limiter.retry_after("b") == 0.0  # per caller
    clock.now += 0.11
    assert limiter.retry_after("a") == 0.0
    assert limiter.retry_after("a") > 0


def test_zero_disables() -> None:
    limiter = RateLimiter(0, Clock())
    assert all(limiter.retry_after("a") == 0.0 for _ in range(10_000))


@given(st.floats(0.1, 1000), st.lists(st.floats(0, 2), max_size=60))
def test_never_more_than_burst_plus_rate_times_elapsed(rate: float, gaps: list[float]) -> None:
    clock = Clock()
    limiter = RateLimiter(rate, clock)
    start, allowed = clock.now, 0
    for gap in gaps:
        clock.now += gap
        allowed += limiter.retry_after("a") == 0.0
    assert allowed <= limiter.burst + rate * (clock.now - start) + 1e-6


def test_memory_is_bounded() -> None:
    clock = Clock()
    limiter = RateLimiter(10, clock, max_tracked=100)
    for i in range(1000):
        limiter.retry_after(f"10.0.{i // 256}.{i % 256}")
        clock.now += 1  # every earlier caller's bucket refills
    assert limiter.tracked <= 100


@pytest.mark.parametrize(("seconds", "header"), [(0.01, "1"), (1.0, "1"), (1.2, "2")])
def test_retry_after_header(seconds: float, header: str) -> None:
    assert retry_after_header(seconds) == header


def test_a_rate_below_one_request_per_two_seconds_still_lets_requests_through() -> None:
    # Twice 0.2 is a burst of 0.4: fewer than one request, so every request was refused.
    clock = Clock()
    limiter = RateLimiter(0.2, clock)
    assert limiter.retry_after("a") == 0.0
    assert limiter.retry_after("a") == pytest.approx(5.0)
    clock.now += 5.0
    assert limiter.retry_after("a") == 0.0
