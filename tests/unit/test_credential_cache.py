"""
The credential cache, driven by a fake clock and an in-memory assumer.

No test waits for real time: timers run when the fake clock is advanced, and tests wait
for conditions (a call made, a fetch finished) with a deadline.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from podiam.credentials import Credentials, Identity
from podiam.errors import ConfigError, CredentialsError, StsCallFailed, StsUnavailable
from podiam.observability.metrics import Metrics
from podiam.settings import StsSettings
from podiam.sts.cache import CredentialCache, refresh_time

T0 = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
SETTINGS = StsSettings()  # 3600 s sessions, refreshed 1800 s before expiry
ROLE = "arn:aws:iam::123456789012:role/app"
ID = Identity(role_arn=ROLE, session_name="default-app-1")


# -- fakes ------------------------------------------------------------------------------------


@dataclass
class _Timer:
    when: dt.datetime
    callback: Callable[[], object]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """Wall time that moves only when told; timers fire inside ``advance``, in time order."""

    def __init__(self, start: dt.datetime = T0) -> None:
        self._now = start
        self._timers: list[_Timer] = []

    def now(self) -> dt.datetime:
        return self._now

    def call_later(self, delay: float, callback: Callable[[], object]) -> _Timer:
        timer = _Timer(self._now + dt.timedelta(seconds=delay), callback)
        self._timers.append(timer)
        return timer

    def advance(self, seconds: float) -> None:
        target = self._now + dt.timedelta(seconds=seconds)
        while due := [t for t in self._timers if not t.cancelled and t.when <= target]:
            timer = min(due, key=lambda t: t.when)
            self._timers.remove(timer)
            self._now = max(self._now, timer.when)
            timer.callback()
        self._now = target

    def advance_to(self, when: dt.datetime) -> None:
        self.advance((when - self._now).total_seconds())

    def pending(self) -> list[_Timer]:
        return [t for t in self._timers if not t.cancelled]


class FixedRandom(random.Random):
    """A random source that always draws ``value``: jitter becomes exact arithmetic."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


@dataclass
class FakeAssumer:
    """Counts calls; can fail (``failure``) or hold every call until ``release()``."""

    clock: FakeClock
    lifetime: float = SETTINGS.session_duration
    failure: BaseException | None = None
    calls: list[tuple[Identity, dt.datetime]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    _gate: asyncio.Event | None = None

    def hold(self) -> None:
        self._gate = asyncio.Event()

    def release(self) -> None:
        if self._gate is not None:
            self._gate.set()
            self._gate = None

    async def assume(self, identity: Identity) -> Credentials:
        self.calls.append((identity, self.clock.now()))
        n = len(self.calls)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self._gate is not None:
                await self._gate.wait()
        finally:
            self.in_flight -= 1
        if self.failure is not None:
            raise self.failure
        now = self.clock.now()
        return Credentials(
            access_key_id=f"ASIA{n:016d}",
            secret_access_key=f"secret-{n}",
            session_token=f"token-{n}",
            expiration=now + dt.timedelta(seconds=self.lifetime),
            last_updated=now,
        )


async def until(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    """Let the loop run until ``predicate`` holds; fail after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0)


async def within(awaitable: Awaitable[Any], timeout: float = 2.0) -> Any:
    """Await with a deadline: where a bug would hang, the test fails instead."""
    async with asyncio.timeout(timeout):
        return await awaitable


def done_at_once(coro: Coroutine[Any, Any, Credentials]) -> Credentials:
    """Run ``coro`` to its end without letting it suspend: proof of a path without awaits."""
    try:
        coro.send(None)
    except StopIteration as stop:
        result: Credentials = stop.value
        return result
    coro.close()
    raise AssertionError("the coroutine suspended: this path awaited something")


async def raised(coro: Awaitable[Credentials]) -> CredentialsError:
    task = asyncio.ensure_future(coro)
    with pytest.raises(CredentialsError) as info:
        await within(task)
    return info.value


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def assumer(clock: FakeClock) -> FakeAssumer:
    return FakeAssumer(clock)


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def settings() -> StsSettings:
    return SETTINGS


@pytest.fixture
def rng() -> random.Random:
    return FixedRandom(0.0)


@pytest.fixture
async def cache(
    assumer: FakeAssumer, clock: FakeClock, metrics: Metrics, settings: StsSettings, rng: random.Random
) -> AsyncIterator[CredentialCache]:
    async with CredentialCache(assumer, settings, metrics, clock=clock, rng=rng) as c:
        yield c
    assert not clock.pending(), "timers left after exit"


def count(metrics: Metrics, name: str) -> float:
    return metrics.registry.get_sample_value(name) or 0.0


def fetched(cache: CredentialCache, identity: Identity = ID) -> Callable[[], bool]:
    """Predicate: an STS call for ``identity`` has finished and none runs."""

    def check() -> bool:
        state = cache.state().get(identity)
        return state is not None and not state.fetching and (
            state.expiration is not None or state.last_error_code is not None
        )

    return check


# -- the request path -------------------------------------------------------------------------


async def test_hit_is_a_lookup_without_awaits(cache: CredentialCache, assumer: FakeAssumer, metrics: Metrics) -> None:
    first = await cache.get(ID)
    assert len(assumer.calls) == 1
    assert count(metrics, "podiam_credential_cache_misses_total") == 1

    again = done_at_once(cache.get(ID))

    assert again is first
    assert len(assumer.calls) == 1
    assert count(metrics, "podiam_credential_cache_hits_total") == 1
    assert count(metrics, "podiam_credential_cache_identities") == 1


async def test_identities_differ_by_every_field(cache: CredentialCache, assumer: FakeAssumer) -> None:
    variants = [
        ID,
        Identity(role_arn=ROLE, session_name="default-app-2"),
        Identity(role_arn=ROLE, session_name="default-app-1", external_id="x"),
        Identity(role_arn=ROLE, session_name="default-app-1", session_tags=(("k", "v"),)),
    ]
    results = [await cache.get(identity) for identity in variants]
    assert len({c.access_key_id for c in results}) == 4
    assert [identity for identity, _ in assumer.calls] == variants


async def test_burst_of_first_requests_shares_one_call(
    cache: CredentialCache, assumer: FakeAssumer, metrics: Metrics
) -> None:
    assumer.hold()
    requests = [asyncio.create_task(cache.get(ID)) for _ in range(1000)]
    await until(lambda: len(assumer.calls) == 1)
    # A miss is counted as a request joins the call: then every one of them is waiting on it.
    await until(lambda: count(metrics, "podiam_credential_cache_misses_total") == 1000)
    assert not any(r.done() for r in requests)

    assumer.release()
    results = await within(asyncio.gather(*requests))

    assert len(assumer.calls) == 1
    assert all(r is results[0] for r in results)
    assert count(metrics, "podiam_credential_cache_misses_total") == 1000


async def test_calls_in_flight_are_bounded_by_fetchers_in_arrival_order(
    cache: CredentialCache, assumer: FakeAssumer
) -> None:
    # A node's start (or a burst of new pods) prefetches many identities at once. Unbounded,
    # every call shares STS's capacity and all finish late together (100 calls to moto each
    # took 0.6-1.2 s); bounded, the first pods are served first.
    fetchers = SETTINGS.fetchers
    identities = [Identity(role_arn=ROLE, session_name=f"default-app-{i}") for i in range(3 * fetchers)]
    assumer.hold()
    for identity in identities:
        cache.prefetch(identity)
    await until(lambda: len(assumer.calls) >= fetchers)
    assumer.release()
    await until(lambda: all(fetched(cache, identity)() for identity in identities))

    assert assumer.max_in_flight == fetchers
    assert [identity for identity, _ in assumer.calls] == identities


async def test_prefetch_keeps_sts_off_the_request_path(
    cache: CredentialCache, assumer: FakeAssumer, metrics: Metrics
) -> None:
    cache.prefetch(ID)
    cache.prefetch(ID)  # already known: no second call
    await until(fetched(cache))
    assert len(assumer.calls) == 1

    creds = done_at_once(cache.get(ID))

    assert creds.access_key_id == f"ASIA{1:016d}"  # the prefetched set: the first call's
    assert len(assumer.calls) == 1
    assert count(metrics, "podiam_credential_cache_misses_total") == 0


async def test_caller_cancellation_does_not_cancel_the_call(cache: CredentialCache, assumer: FakeAssumer) -> None:
    assumer.hold()
    impatient = asyncio.create_task(cache.get(ID))
    await until(lambda: len(assumer.calls) == 1)
    impatient.cancel()  # the SDK gave up after its 1 s
    with pytest.raises(asyncio.CancelledError):
        await within(impatient)
    assert cache.state()[ID].fetching

    assumer.release()
    await until(fetched(cache))

    retried = done_at_once(cache.get(ID))  # the SDK's retry is a hit
    assert retried.access_key_id == f"ASIA{1:016d}"  # from the call the first caller started
    assert len(assumer.calls) == 1


# -- refresh-ahead ----------------------------------------------------------------------------


async def test_refresh_ahead_once_per_window_and_not_before(
    cache: CredentialCache, assumer: FakeAssumer, clock: FakeClock
) -> None:
    cache.prefetch(ID)
    await until(fetched(cache))
    first = done_at_once(cache.get(ID))
    due = first.expiration - dt.timedelta(seconds=SETTINGS.session_refresh)  # jitter is 0 here

    clock.advance_to(due - dt.timedelta(seconds=1))
    assert not cache.state()[ID].fetching
    assert len(assumer.calls) == 1

    clock.advance(1)
    assert cache.state()[ID].fetching  # started in the background, no request involved
    await until(fetched(cache))
    second = done_at_once(cache.get(ID))
    assert second is not first
    assert second.expiration == due + dt.timedelta(seconds=SETTINGS.session_duration)

    clock.advance(SETTINGS.session_duration - SETTINGS.session_refresh - 1)  # just before the next window
    assert len(assumer.calls) == 2
    clock.advance(1)
    await until(fetched(cache))
    assert len(assumer.calls) == 3


@pytest.mark.parametrize("rng", [FixedRandom(0.999)])
async def test_jitter_moves_refresh_earlier_within_bound(
    cache: CredentialCache, assumer: FakeAssumer, clock: FakeClock
) -> None:
    cache.prefetch(ID)
    await until(fetched(cache))
    expiration = done_at_once(cache.get(ID)).expiration
    earliest = expiration - dt.timedelta(seconds=SETTINGS.session_refresh * (1 + SETTINGS.refresh_jitter))

    clock.advance_to(earliest - dt.timedelta(seconds=1))
    assert len(assumer.calls) == 1
    clock.advance(2)
    await until(fetched(cache))
    assert len(assumer.calls) == 2


@pytest.mark.parametrize("rng", [random.Random(7)])  # noqa: S311 - jitter, not secrets
async def test_jitter_spreads_identities_fetched_together(cache: CredentialCache, clock: FakeClock) -> None:
    identities = [Identity(role_arn=ROLE, session_name=f"pod-{i}") for i in range(50)]
    for identity in identities:
        cache.prefetch(identity)
    await until(lambda: all(fetched(cache, i)() for i in identities))

    state = cache.state()
    planned = {state[i].next_attempt for i in identities}
    expiration = T0 + dt.timedelta(seconds=SETTINGS.session_duration)
    latest = expiration - dt.timedelta(seconds=SETTINGS.session_refresh)
    earliest = expiration - dt.timedelta(seconds=SETTINGS.session_refresh * (1 + SETTINGS.refresh_jitter))
    assert len(planned) >= 45  # 50 draws from a continuous range
    assert all(p is not None and earliest <= p <= latest for p in planned)
    assert max(p for p in planned if p) - min(p for p in planned if p) > dt.timedelta(
        seconds=SETTINGS.session_refresh * SETTINGS.refresh_jitter / 2
    )


async def test_timers_sleep_at_most_max_timer(cache: CredentialCache, clock: FakeClock) -> None:
    # Timers run on monotonic time, expirations are wall time: long waits are re-checked.
    cache.prefetch(ID)
    await until(fetched(cache))
    (timer,) = clock.pending()
    assert timer.when - clock.now() <= dt.timedelta(seconds=SETTINGS.max_timer)


# -- due credentials on the request path ----------------------------------------------------


async def test_due_request_waits_briefly_for_the_refresh(
    cache: CredentialCache, assumer: FakeAssumer, clock: FakeClock, metrics: Metrics
) -> None:
    cache.prefetch(ID)
    await until(fetched(cache))
    old = done_at_once(cache.get(ID))
    assumer.hold()
    clock.advance_to(old.expiration - dt.timedelta(seconds=SETTINGS.session_refresh))
    assert cache.state()[ID].fetching

    request = asyncio.create_task(cache.get(ID))
    # Counted as a miss when it decides to wait for the refresh, at once before waiting.
    await until(lambda: count(metrics, "podiam_credential_cache_misses_total") == 1)
    assert not request.done()  # waiting for the refresh, up to request_wait
    assumer.release()

    assert (await within(request)) is not old
    assert len(assumer.calls) == 2


async def test_due_request_gets_old_credentials_when_refresh_is_slow(
    cache: CredentialCache, assumer: FakeAssumer, clock: FakeClock, metrics: Metrics
) -> None:
    cache.prefetch(ID)
    await until(fetched(cache))
    old = done_at_once(cache.get(ID))
    assumer.hold()
    clock.advance_to(old.expiration - dt.timedelta(seconds=SETTINGS.session_refresh))

    request = asyncio.create_task(cache.get(ID))
    await until(lambda: count(metrics, "podiam_credential_cache_misses_total") == 1)  # waiting
    assert not request.done()
    wait_ends = clock.now() + dt.timedelta(seconds=SETTINGS.request_wait)
    assert wait_ends in [t.when for t in clock.pending()]  # it waits request_wait, no less
    clock.advance(SETTINGS.request_wait)

    assert (await within(request)) is old
    assert cache.state()[ID].fetching  # the refresh goes on
    assumer.release()
    await until(fetched(cache))
    assert done_at_once(cache.get(ID)) is not old
    assert count(metrics, "podiam_credential_cache_misses_total") == 1


@pytest.mark.parametrize("settings", [StsSettings(error_ttl=10.0, backoff_initial=30.0)])
async def test_due_request_starts_a_refresh_when_none_runs(
    cache: CredentialCache, assumer: FakeAssumer, clock: FakeClock
) -> None:
    cache.prefetch(ID)
    await until(fetched(cache))
    old = done_at_once(cache.get(ID))
    assumer.failure = StsUnavailable("down")
    clock.advance_to(old.expiration - dt.timedelta(seconds=SETTINGS.session_refresh))
    await until(fetched(cache))  # the background refresh failed; its retry is 30 s away
    assert len(assumer.calls) == 2

    assert done_at_once(cache.get(ID)) is old  # error younger than error_ttl: no call, no wait
    assert len(assumer.calls) == 2

    clock.advance(11)  # error_ttl has passed, the retry is not due yet
    assumer.failure = None
    fresh = await cache.get(ID)
    assert len(assumer.calls) == 3
    assert fresh is not old


async def test_outage_keeps_serving_still_valid_credentials(
    cache: CredentialCache, assumer: FakeAssumer, clock: FakeClock
) -> None:
    cache.prefetch(ID)
    await until(fetched(cache))
    old = done_at_once(cache.get(ID))
    assumer.failure = StsUnavailable("STS could not be reached")

    # Through the due window, every few minutes until the margin: always the old set.
    step = 300.0
    clock.advance_to(old.expiration - dt.timedelta(seconds=SETTINGS.session_refresh))
    while clock.now() + dt.timedelta(seconds=step) < old.expiration - dt.timedelta(seconds=SETTINGS.expiry_margin):
        clock.advance(step)
        assert (await cache.get(ID)) is old
    assert len(assumer.calls) > 2  # background retries went on meanwhile
    assert cache.state()[ID].last_error_code == "Unavailable"

    assumer.failure = None
    await until(lambda: not cache.state()[ID].fetching)
    clock.advance_to(cache.state()[ID].next_attempt or clock.now())
    await until(fetched(cache))
    assert done_at_once(cache.get(ID)) is not old
    assert cache.state()[ID].failures == 0


async def test_expired_credentials_are_never_served(
    cache: CredentialCache, assumer: FakeAssumer, clock: FakeClock
) -> None:
    cache.prefetch(ID)
    await until(fetched(cache))
    old = done_at_once(cache.get(ID))
    assumer.failure = StsUnavailable("STS could not be reached")

    for at in (old.expiration - dt.timedelta(seconds=SETTINGS.expiry_margin), old.expiration + dt.timedelta(hours=1)):
        clock.advance_to(at)
        await until(lambda: not cache.state()[ID].fetching)
        with pytest.raises(StsUnavailable):  # the still-cached set is not answered
            await cache.get(ID)
        assert cache.state()[ID].expiration == old.expiration


# -- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("settings", [StsSettings(error_ttl=10.0, backoff_initial=30.0, backoff_max=60.0)])
async def test_error_is_remembered_for_error_ttl_then_retried(
    cache: CredentialCache, assumer: FakeAssumer, clock: FakeClock
) -> None:
    assumer.failure = StsCallFailed(f"STS refused to assume role {ROLE}: AccessDenied", code="AccessDenied")

    first = await raised(cache.get(ID))
    assert isinstance(first, StsCallFailed)
    assert first.code == "AccessDenied"
    assert len(assumer.calls) == 1

    clock.advance(9.9)
    again = await raised(cache.get(ID))  # from memory, no STS call
    assert isinstance(again, StsCallFailed)
    assert again.code == "AccessDenied"
    assert again is not first  # a fresh exception per caller
    assert len(assumer.calls) == 1

    clock.advance(0.2)
    assumer.failure = None
    creds = await cache.get(ID)
    assert len(assumer.calls) == 2
    assert done_at_once(cache.get(ID)) is creds  # cached: a hit
    assert cache.state()[ID].last_error_code is None


async def test_failures_are_counted_in_state_and_retried_with_backoff(
    cache: CredentialCache, assumer: FakeAssumer, clock: FakeClock
) -> None:
    assumer.failure = StsUnavailable("STS could not be reached")
    cache.prefetch(ID)
    await until(fetched(cache))

    # Follow the retries: each one is planned, fires when the clock gets there, fails.
    for n in range(1, 10):
        state = cache.state()[ID]
        assert state.failures == n
        assert state.next_attempt is not None
        clock.advance_to(state.next_attempt)
        await until(fetched(cache))
        assert len(assumer.calls) == n + 1

    times = [at for _, at in assumer.calls]
    delays = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60]  # rng draws 0: no stretch


async def test_an_sts_outage_of_days_is_retried_within_bounds_and_ends_in_credentials(
    assumer: FakeAssumer, clock: FakeClock, metrics: Metrics
) -> None:
    assumer.failure = StsUnavailable("STS could not be reached")
    async with CredentialCache(assumer, SETTINGS, metrics, clock=clock, rng=random.Random(5)) as cache:  # noqa: S311 - jitter, not secrets
        cache.prefetch(ID)
        await until(fetched(cache))
        outage_end = T0 + dt.timedelta(days=2)
        while clock.now() < outage_end:
            next_attempt = cache.state()[ID].next_attempt
            assert next_attempt is not None  # a retry is always planned: the outage never ends the loop
            clock.advance_to(next_attempt)
            await until(fetched(cache))
        assumer.failure = None
        next_attempt = cache.state()[ID].next_attempt
        assert next_attempt is not None
        clock.advance_to(next_attempt)
        await until(fetched(cache))
        assert done_at_once(cache.get(ID)).expiration > clock.now()  # cached: a hit
        assert cache.state()[ID].failures == 0

    times = [at for _, at in assumer.calls]
    delays = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    assert len(delays) > 2 * 86400 / SETTINGS.backoff_max
    low = SETTINGS.backoff_initial * (1 - SETTINGS.backoff_jitter)
    assert all(low <= d <= SETTINGS.backoff_max for d in delays), (min(delays), max(delays))


async def test_unexpected_assumer_error_is_an_outage_not_a_crash(
    cache: CredentialCache, assumer: FakeAssumer
) -> None:
    assumer.failure = ValueError("a bug")
    with pytest.raises(StsUnavailable, match="unexpected error"):
        await cache.get(ID)
    assert cache.state()[ID].next_attempt is not None  # retried like an outage


# -- lifecycle --------------------------------------------------------------------------------


async def test_identities_gauge_counts_those_holding_credentials(
    cache: CredentialCache, assumer: FakeAssumer, clock: FakeClock, metrics: Metrics
) -> None:
    # The gauge is kept by counting changes, not by a recount: every way in and out, once each.
    ids = [Identity(role_arn=ID.role_arn, session_name=f"s-{i}") for i in range(4)]
    for identity in ids[:3]:
        cache.prefetch(identity)
    await until(lambda: all(fetched(cache, i)() for i in ids[:3]))
    assert count(metrics, "podiam_credential_cache_identities") == 3

    clock.advance(SETTINGS.session_duration - SETTINGS.session_refresh)  # every refresh is due
    await until(lambda: len(assumer.calls) == 6 and all(fetched(cache, i)() for i in ids[:3]))
    assert count(metrics, "podiam_credential_cache_identities") == 3  # a refresh is not a new one

    assumer.hold()
    cache.prefetch(ids[3])
    await until(lambda: cache.state()[ids[3]].fetching)
    assert count(metrics, "podiam_credential_cache_identities") == 3  # fetching holds nothing yet
    cache.discard(ids[3])  # gone while its call is out
    assumer.release()
    cache.discard(ids[0])
    cache.discard(ids[0])
    await until(lambda: assumer.in_flight == 0)
    assert count(metrics, "podiam_credential_cache_identities") == 2
    assert set(cache.state()) == {ids[1], ids[2]}


async def test_discard_forgets_and_stops_refreshing(
    cache: CredentialCache, assumer: FakeAssumer, clock: FakeClock, metrics: Metrics
) -> None:
    cache.prefetch(ID)
    await until(fetched(cache))
    assert count(metrics, "podiam_credential_cache_identities") == 1

    cache.discard(ID)
    cache.discard(ID)  # idempotent

    assert ID not in cache.state()
    assert not clock.pending()
    assert count(metrics, "podiam_credential_cache_identities") == 0
    clock.advance(10 * SETTINGS.session_duration)
    assert len(assumer.calls) == 1
    await cache.get(ID)  # nothing was kept: a new call
    assert len(assumer.calls) == 2


async def test_discard_during_a_call_cancels_it(cache: CredentialCache, assumer: FakeAssumer) -> None:
    assumer.hold()
    waiting = asyncio.create_task(cache.get(ID))
    await until(lambda: len(assumer.calls) == 1)

    cache.discard(ID)

    with pytest.raises(StsUnavailable, match="abandoned"):
        await within(waiting)
    assert ID not in cache.state()


async def test_exit_stops_calls_and_timers(assumer: FakeAssumer, clock: FakeClock, metrics: Metrics) -> None:
    other = Identity(role_arn=ROLE, session_name="other")
    async with asyncio.timeout(2):  # an exit that does not cancel the held call would hang
        async with CredentialCache(assumer, SETTINGS, metrics, clock=clock) as cache:
            cache.prefetch(other)
            await until(fetched(cache, other))
            assumer.hold()
            waiting = asyncio.create_task(cache.get(ID))
            await until(lambda: len(assumer.calls) == 2)
            assert clock.pending()  # the refresh timer of ``other``

    with pytest.raises(StsUnavailable):
        await within(waiting)
    assert not clock.pending()
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("podiam-sts") and not t.done()]
    cache.prefetch(ID)  # after exit: ignored
    with pytest.raises(StsUnavailable, match="stopping"):
        await cache.get(ID)


async def test_used_outside_its_context_is_an_error(assumer: FakeAssumer, metrics: Metrics) -> None:
    cache = CredentialCache(assumer, SETTINGS, metrics)
    with pytest.raises(RuntimeError):
        await cache.get(ID)


@pytest.mark.parametrize(("duration", "refresh"), [(900, 1800), (900, 840), (3600, 3540)])
def test_refuses_a_refresh_time_within_the_margin_of_the_session(duration: float, refresh: float) -> None:
    # Fresh credentials would be due at once: the settings cannot even be built.
    with pytest.raises(ConfigError, match="by more than 60s"):
        StsSettings(session_duration=duration, session_refresh=refresh)


def test_the_expiry_margin_is_a_setting_the_session_check_follows() -> None:
    StsSettings(session_duration=100, session_refresh=50, expiry_margin=10)  # an accelerated clock
    with pytest.raises(ConfigError, match="by more than 50s"):
        StsSettings(session_duration=100, session_refresh=50, expiry_margin=50)


# -- the arithmetic ---------------------------------------------------------------------------

durations = st.floats(min_value=SETTINGS.expiry_margin + 2, max_value=43200)
fractions = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)


@given(
    lifetime=durations,
    refresh_share=st.floats(min_value=0.0, max_value=0.99),  # of what the margin leaves
    backoff_initial=st.floats(min_value=0.01, max_value=60),
    r=fractions,
)
def test_refresh_time_is_within_the_jitter_window_and_never_immediate(
    lifetime: float, refresh_share: float, backoff_initial: float, r: float
) -> None:
    settings = StsSettings(
        session_duration=lifetime,
        session_refresh=(lifetime - SETTINGS.expiry_margin) * refresh_share,
        backoff_initial=backoff_initial,
    )
    expiration = T0 + dt.timedelta(seconds=lifetime)

    at = refresh_time(expiration, T0, settings, r)

    due = expiration - dt.timedelta(seconds=settings.session_refresh)
    earliest = due - dt.timedelta(seconds=settings.session_refresh * settings.refresh_jitter)
    floor = T0 + dt.timedelta(seconds=backoff_initial)
    assert at <= max(due, floor)
    assert at >= max(earliest, floor) - dt.timedelta(microseconds=1)
    assert at >= floor
