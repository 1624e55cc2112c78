"""The shared retry back-off: bounds, monotony and no overflow for any failure count."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from podiam.backoff import Backoff

seconds = st.floats(min_value=1e-6, max_value=1e6)
jitters = st.floats(min_value=0.0, max_value=1.0)
draws = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)
# Far past 10**6: an agent retrying every millisecond for a thousand years stays below 10**14.
failure_counts = st.integers(min_value=-10, max_value=10**30)


def policy(a: float, b: float, jitter: float) -> Backoff:
    return Backoff(initial=min(a, b), maximum=max(a, b), jitter=jitter)


@given(a=seconds, b=seconds, jitter=jitters, failures=failure_counts, r=draws)
def test_every_delay_is_within_initial_less_jitter_and_the_cap(
    a: float, b: float, jitter: float, failures: int, r: float
) -> None:
    backoff = policy(a, b, jitter)
    delay = backoff.delay(failures, r)
    assert backoff.initial * (1 - jitter) * (1 - 1e-12) <= delay <= backoff.maximum


@given(a=seconds, b=seconds, jitter=jitters, failures=st.integers(min_value=0, max_value=5000))
def test_the_base_never_decreases_and_doubles_until_the_cap(a: float, b: float, jitter: float, failures: int) -> None:
    backoff = policy(a, b, jitter)
    now, after = backoff.base(failures), backoff.base(failures + 1)
    assert now <= after
    if failures >= 1:
        assert after == min(backoff.maximum, now * 2)  # doubling a float is exact


@pytest.mark.parametrize("failures", [1023, 1024, 1025, 10**6, 10**100, 2**4096])
def test_huge_failure_counts_give_the_cap(failures: int) -> None:
    # 0.1 * 2**1024 raised OverflowError: the watch loop, and with it the agent, ended.
    backoff = Backoff(initial=0.2, maximum=5.0)
    assert backoff.base(failures) == 5.0
    assert 2.5 <= backoff.delay(failures, 0.999) <= 5.0


def test_the_first_delays_double_from_initial() -> None:
    backoff = Backoff(initial=1.0, maximum=60.0, jitter=0.25)
    assert [backoff.delay(n, 0.0) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert backoff.delay(1, 0.5) == 0.875


@pytest.mark.parametrize(("initial", "maximum", "jitter"),
                         [(0, 1, 0.5), (2, 1, 0.5), (1, float("inf"), 0.5), (float("nan"), 1, 0.5), (1, 2, 1.5)])
def test_nonsense_policies_are_refused(initial: float, maximum: float, jitter: float) -> None:
    with pytest.raises(ValueError, match="back-off"):
        Backoff(initial, maximum, jitter)
