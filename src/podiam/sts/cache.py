"""
The credential cache: what keeps STS off the request path.

Per identity the cache holds at most one credential set, at most one STS call in flight
(single-flight: every caller joins it) and at most one timer, which is either the
refresh-ahead of the credentials or the back-off retry after a failed call. Once an
identity has been fetched it always has exactly one of the two, a call or a timer, until
it is discarded: the end of every call schedules the next timer.

``get`` decides, with ``now`` from the clock and ``remaining`` = expiration - now:

1. remaining > session_refresh: the cached credentials, at once (a dict lookup).
2. expiry_margin < remaining <= session_refresh (due): join the refresh in flight, or
   start one unless an error younger than error_ttl says STS is failing; wait for it
   at most request_wait; answer the new credentials, else the old ones, still valid.
3. nothing cached, or remaining <= expiry_margin: an error younger than error_ttl is
   raised again without calling STS (negative cache); else the caller starts or joins
   the call and waits for it. Expired credentials are never answered.

A call is its own task: a caller that gives up (an SDK's 1 s timeout) leaves the call
running, and its retry finds the credentials cached.

Every duration and jitter named here is a field of StsSettings (settings.py says why each
has its value).

Times: the clock's ``now`` is wall time, because expirations are wall time; delays go
through the clock's ``call_later`` so that tests drive every timing rule with a fake
clock instead of waiting.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType, TracebackType
from typing import Protocol, Self

import structlog

from podiam.backoff import Backoff
from podiam.credentials import Credentials, Identity
from podiam.errors import ConfigError, CredentialsError, StsCallFailed, StsUnavailable
from podiam.observability.metrics import Metrics
from podiam.settings import StsSettings
from podiam.sts.assumer import Assumer, error_code

log = structlog.stdlib.get_logger(__name__)


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """Time for the cache: wall time now, and callbacks after a delay."""

    def now(self) -> dt.datetime:
        """Timezone-aware UTC."""
        ...

    def call_later(self, delay: float, callback: Callable[[], object]) -> Cancellable:
        """Call ``callback`` (in the event loop) after ``delay`` seconds."""
        ...


class SystemClock:
    """The real clock: the system's UTC time, the running loop's timers."""

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    def call_later(self, delay: float, callback: Callable[[], object]) -> Cancellable:
        return asyncio.get_running_loop().call_later(delay, callback)


@dataclass(frozen=True)
class EntryState:
    """What the cache knows about one identity, without secrets (for a debug endpoint)."""

    expiration: dt.datetime | None
    """Of the cached credentials; None when there are none."""
    last_error_code: str | None
    """STS's code of the last failed call, ``Unavailable`` if unreachable; None after a success."""
    failures: int
    """Consecutive failed calls (drives the back-off)."""
    fetching: bool
    """An STS call is in flight."""
    next_attempt: dt.datetime | None
    """When the pending timer (refresh-ahead or retry) fires; None while a call runs."""


def refresh_time(
    expiration: dt.datetime, fetched_at: dt.datetime, settings: StsSettings, r: float
) -> dt.datetime:
    """When credentials fetched at ``fetched_at`` are refreshed in the background.

    ``session_refresh`` before expiry, minus a jitter of up to ``refresh_jitter`` of it
    (``r`` in [0, 1)), never sooner than backoff_initial after the fetch: credentials
    that arrive already due (a misconfiguration) must not loop on STS.
    """
    due = expiration - dt.timedelta(seconds=settings.session_refresh * (1.0 + settings.refresh_jitter * r))
    return max(due, fetched_at + dt.timedelta(seconds=settings.backoff_initial))


class _Entry:
    """The mutable state of one identity; owned by the cache, never handed out."""

    __slots__ = (
        "creds",
        "error",
        "error_at",
        "failures",
        "fetch",
        "fresh_until",
        "identity",
        "timer",
        "timer_at",
        "valid_until",
    )

    def __init__(self, identity: Identity) -> None:
        self.identity = identity
        self.creds: Credentials | None = None
        # Precomputed so that the hit path compares one datetime.
        self.fresh_until = dt.datetime.min.replace(tzinfo=dt.UTC)
        self.valid_until = dt.datetime.min.replace(tzinfo=dt.UTC)
        self.error: CredentialsError | None = None
        self.error_at = dt.datetime.min.replace(tzinfo=dt.UTC)
        self.failures = 0
        self.fetch: asyncio.Task[Credentials | CredentialsError] | None = None
        self.timer: Cancellable | None = None
        self.timer_at: dt.datetime | None = None


class CredentialCache:
    """Credentials per Identity: single-flight, refresh-ahead, prefetch, negative cache.

    Use as ``async with CredentialCache(assumer, settings, metrics) as cache:``; the
    context owns every task and timer the cache starts and stops them all on exit.
    """

    def __init__(
        self,
        assumer: Assumer,
        settings: StsSettings,
        metrics: Metrics,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        # StsSettings checked that fresh credentials are not due at once (its __post_init__).
        try:
            # The shared, capped policy: days of STS outage never overflow the retry arithmetic.
            self._backoff = Backoff(settings.backoff_initial, settings.backoff_max, settings.backoff_jitter)
        except ValueError as e:
            raise ConfigError(f"STS retry back-off: {e}") from e
        self._assumer = assumer
        self._settings = settings
        self._metrics = metrics.credentials
        self._clock: Clock = clock or SystemClock()
        # Jitter only spreads load; it needs no unpredictability.
        self._rng = rng or random.Random()  # noqa: S311
        self._refresh = dt.timedelta(seconds=settings.session_refresh)
        self._margin = dt.timedelta(seconds=settings.expiry_margin)
        self._error_ttl = dt.timedelta(seconds=settings.error_ttl)
        self._entries: dict[Identity, _Entry] = {}
        self._holding = 0
        """Entries of _entries that hold credentials: the identities gauge, counted as they change
        rather than recounted, which made a prefetch of N identities O(N^2) (10,000 on a server)."""
        self._listeners: list[Callable[[Identity, Credentials | CredentialsError], None]] = []
        # --fetchers: STS calls in flight at once, in arrival order (asyncio's semaphore is FIFO).
        self._fetchers = asyncio.Semaphore(settings.fetchers)
        self._tasks: set[asyncio.Task[Credentials | CredentialsError]] = set()
        self._open = False
        self._closed = False
        self.credential_changes = 0
        """Counts every change to what fresh() answers with but the passage of time (CredentialSource)."""

    async def __aenter__(self) -> Self:
        if self._open or self._closed:
            raise RuntimeError("a CredentialCache is entered once")
        self._open = True
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._open, self._closed = False, True
        for entry in self._entries.values():
            if entry.timer is not None:
                entry.timer.cancel()
                entry.timer = None
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._entries.clear()
        self._holding = 0
        self._metrics.cached_identities.set(0)

    # -- the request path ---------------------------------------------------------------

    def fresh(self, identity: Identity) -> Credentials | None:
        """Rule 1 alone, synchronously: fresh credentials (a hit), or None when get() must decide.

        The metadata endpoint's fast path answers cache hits with this, without a coroutine.
        """
        entry = self._entries.get(identity)
        if entry is not None and entry.creds is not None and self._clock.now() < entry.fresh_until:
            self._metrics.cache_hits.inc()
            return entry.creds
        return None

    def replayed(self) -> None:
        """The endpoint served fresh()'s answer again from its replay: the cache hit it is."""
        self._metrics.cache_hits.inc()

    async def get(self, identity: Identity) -> Credentials:
        """Credentials for ``identity``, by the rules in the module docstring.

        Raises CredentialsError (StsCallFailed, StsUnavailable) when there are no valid
        credentials to answer with.
        """
        entry = self._entries.get(identity)
        now = self._clock.now()
        if entry is not None and entry.creds is not None:
            if now < entry.fresh_until:
                self._metrics.cache_hits.inc()
                return entry.creds
            if now < entry.valid_until:
                return await self._get_due(entry, entry.creds, now)
        if not self._open:
            if self._closed:  # a request that outlived the shutdown grace
                raise StsUnavailable("podiam is stopping: no more STS calls")
            raise RuntimeError("CredentialCache is used outside its 'async with' block")
        if entry is None:
            entry = self._entries[identity] = _Entry(identity)
        if entry.error is not None and now - entry.error_at < self._error_ttl:
            raise _fresh_copy(entry.error)
        self._metrics.cache_misses.inc()
        return await self._join(entry, entry.fetch or self._start_fetch(entry))

    async def _get_due(self, entry: _Entry, old: Credentials, now: dt.datetime) -> Credentials:
        """Case 2: valid credentials that are due; ``old``, still valid, is the fallback."""
        task = entry.fetch
        if task is None:
            if not self._open or (entry.error is not None and now - entry.error_at < self._error_ttl):
                # STS failed a moment ago and a retry is scheduled: do not make the pod wait.
                self._metrics.cache_hits.inc()
                return old
            task = self._start_fetch(entry)
        self._metrics.cache_misses.inc()
        await self._wait_at_most(task, self._settings.request_wait)
        # A successful call has replaced entry.creds by now; a failed or slow one has not.
        if entry.creds is not None and self._clock.now() < entry.valid_until:
            return entry.creds
        return await self._join(entry, task)

    async def _join(self, entry: _Entry, task: asyncio.Task[Credentials | CredentialsError]) -> Credentials:
        try:
            # The shield keeps the caller's cancellation (an SDK hanging up) off the call.
            outcome = await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and current is not None and not current.cancelling():
                # The call was cancelled under us (discard, shutdown), not this caller.
                raise StsUnavailable(
                    f"the STS call for role {entry.identity.role_arn} was abandoned: its pod"
                    " is gone or podiam is stopping"
                ) from None
            raise
        if isinstance(outcome, Credentials):
            return outcome
        raise _fresh_copy(outcome)

    async def _wait_at_most(self, task: asyncio.Task[Credentials | CredentialsError], seconds: float) -> None:
        """Wait until ``task`` is done or ``seconds`` passed on the clock; never cancels ``task``.

        Not asyncio.timeout: the fake clock of the tests has to drive this wait too.
        """
        if task.done():
            return
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake(*_: object) -> None:
            if not woken.done():
                woken.set_result(None)

        task.add_done_callback(wake)
        timer = self._clock.call_later(seconds, wake)
        try:
            await woken
        finally:
            timer.cancel()
            task.remove_done_callback(wake)

    # -- the background ---------------------------------------------------------------------

    def prefetch(self, identity: Identity) -> None:
        """Start fetching ``identity`` in the background unless it is already known.

        From then on refresh-ahead keeps it fresh until ``discard``. Never blocks, never
        raises for STS errors (they are kept for ``get`` and retried with back-off).
        """
        if not self._open or identity in self._entries:
            return
        entry = self._entries[identity] = _Entry(identity)
        self._start_fetch(entry)

    def subscribe(self, on_outcome: Callable[[Identity, Credentials | CredentialsError], None]) -> None:
        """``on_outcome(identity, credentials or error)`` after every STS call of an identity
        still cached (split mode's server streams them to the agents)."""
        self._listeners.append(on_outcome)

    def discard(self, identity: Identity) -> None:
        """Forget ``identity`` (its pod is gone): credentials, error, call and timer."""
        entry = self._entries.pop(identity, None)
        if entry is None:
            return
        self.credential_changes += 1
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        if entry.fetch is not None:
            entry.fetch.cancel()
        if entry.creds is not None:
            self._count_holding(-1)

    def state(self) -> Mapping[Identity, EntryState]:
        """A read-only view of every known identity, without secrets (a debug endpoint's)."""
        return MappingProxyType(
            {
                identity: EntryState(
                    expiration=entry.creds.expiration if entry.creds is not None else None,
                    last_error_code=error_code(entry.error) if entry.error is not None else None,
                    failures=entry.failures,
                    fetching=entry.fetch is not None,
                    next_attempt=entry.timer_at if entry.timer is not None else None,
                )
                for identity, entry in self._entries.items()
            }
        )

    def _start_fetch(self, entry: _Entry) -> asyncio.Task[Credentials | CredentialsError]:
        """Start the one STS call of ``entry``; the caller has checked that none runs."""
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        identity = entry.identity
        task = asyncio.create_task(
            self._fetch(entry), name=f"podiam-sts-fetch {identity.role_arn} {identity.session_name}"
        )
        entry.fetch = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _fetch(self, entry: _Entry) -> Credentials | CredentialsError:
        """One AssumeRole call; records the outcome and schedules what follows.

        Returns the error instead of raising it: a background call may have no one
        awaiting it, and an error is an outcome to keep, not a crash.
        """
        identity = entry.identity
        role = identity.role_arn
        outcome: Credentials | CredentialsError
        try:
            async with self._fetchers:
                outcome = await self._assumer.assume(identity)
        except CredentialsError as e:
            outcome = e
        except Exception as e:
            # A bug in an assumer must not stop refreshes of other identities or crash the
            # agent; it is logged with its traceback and retried like an outage.
            log.exception("unexpected error from the assumer", role_arn=role)
            outcome = StsUnavailable(f"unexpected error assuming role {role}: {type(e).__name__}")
        finally:
            if entry.fetch is asyncio.current_task():
                entry.fetch = None
        now = self._clock.now()
        if isinstance(outcome, Credentials):
            had_creds = entry.creds is not None
            entry.creds = outcome
            self.credential_changes += 1
            entry.fresh_until = outcome.expiration - self._refresh
            entry.valid_until = outcome.expiration - self._margin
            entry.error, entry.failures = None, 0
            next_at = refresh_time(outcome.expiration, now, self._settings, self._rng.random())
            if not had_creds and self._entries.get(identity) is entry:
                self._count_holding(+1)
            log.debug("credentials fetched", role_arn=role, session_name=identity.session_name,
                      expiration=outcome.expiration.isoformat(), next_refresh=next_at.isoformat())
        else:
            entry.error, entry.error_at = outcome, now
            entry.failures += 1
            delay = self._backoff.delay(entry.failures, self._rng.random())
            next_at = now + dt.timedelta(seconds=delay)
            log.warning("credentials not fetched", role_arn=role, session_name=identity.session_name,
                        code=error_code(outcome), error=str(outcome), failures=entry.failures,
                        retry_in=round(delay, 1))
        if self._open and self._entries.get(identity) is entry:
            self._schedule(entry, next_at)
            for listener in self._listeners:
                listener(identity, outcome)
        return outcome

    def _schedule(self, entry: _Entry, at: dt.datetime) -> None:
        if entry.timer is not None:
            entry.timer.cancel()
        entry.timer_at = at
        delay = (at - self._clock.now()).total_seconds()
        entry.timer = self._clock.call_later(min(max(delay, 0.0), self._settings.max_timer),
                                             lambda: self._on_timer(entry))

    def _on_timer(self, entry: _Entry) -> None:
        entry.timer = None
        if not self._open or self._entries.get(entry.identity) is not entry or entry.fetch is not None:
            return
        if entry.timer_at is not None and self._clock.now() < entry.timer_at:
            self._schedule(entry, entry.timer_at)  # woke early: max_timer or a wall-clock step
            return
        self._start_fetch(entry)

    def _count_holding(self, change: int) -> None:
        self._holding += change
        self._metrics.cached_identities.set(self._holding)


def _fresh_copy(error: CredentialsError) -> CredentialsError:
    """A new exception with the same class and message: one stored exception raised to
    many callers would collect their tracebacks (and keep their frames alive)."""
    if isinstance(error, StsCallFailed):
        return StsCallFailed(str(error), code=error.code)
    return type(error)(str(error))
