"""The split agent's reconnect delay: the back-off grows per round of --server-address, so an
address that comes back is reached within one capped wait whatever its place in the list."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from podiam.backoff import Backoff
from podiam.remote.client import StreamSettings, reconnect_delay

DEFAULTS = StreamSettings(())
BACKOFF = Backoff(DEFAULTS.retry_initial, DEFAULTS.retry_max)
draws = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)


@given(failures=st.integers(min_value=1, max_value=10**6), r=draws)
def test_with_one_address_it_is_the_back_off_itself(failures: int, r: float) -> None:
    assert reconnect_delay(BACKOFF, failures, 1, r) == BACKOFF.delay(failures, r)


def test_two_addresses_are_each_tried_before_the_delay_grows() -> None:
    longest = [reconnect_delay(BACKOFF, n, 2, 0.0) for n in range(1, 15)]
    assert longest == [0.2, 0.2, 0.2, 0.4, 0.2, 0.8, 0.2, 1.6, 0.2, 3.2, 0.2, 5.0, 0.2, 5.0]


@given(addresses=st.integers(min_value=1, max_value=8), failures=st.integers(min_value=1, max_value=500),
       offset=st.integers(min_value=1, max_value=8), r=draws)
def test_any_address_is_reached_within_one_capped_wait(addresses: int, failures: int, offset: int, r: float) -> None:
    """From any failure, the attempt on the address ``offset`` places further (at most a whole
    round away) comes after at most the cap plus the first delay for each address in between."""
    offset = min(offset, addresses)
    wait = sum(reconnect_delay(BACKOFF, failures + k, addresses, r) for k in range(offset))
    assert wait <= BACKOFF.maximum + (addresses - 1) * BACKOFF.initial + 1e-9
