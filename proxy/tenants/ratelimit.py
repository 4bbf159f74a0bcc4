"""Genesys rate limits, absorbed: each token's budget, the choice of token, and held requests.

Genesys counts API requests per token in fixed windows and describes the window on every answer
(`inin-ratelimit-allowed`, `-count`, `-reset`). A `TenantBudget` keeps one `TokenWindow` per
token of a tenant and, for each request, reserves one request of the token with the most budget
left. When none has any, the request is held in a first-come-first-served queue until a window
resets, if that is within `max_wait` and the queue is not full; otherwise it gets the proxy's own
429 `rate_limited` at once, and nothing reaches Genesys. A held request whose client hangs up (or
whose task is cancelled) leaves the queue without using any budget.

Counting is conservative: a window's budget is `allowed - count - in_flight`, where `count` is the
highest count Genesys reported for the window and `in_flight` the requests sent and not yet
answered. Until a token's first answer, only one request (a probe) goes out on it, so a cold burst
costs no 429s. The limiter never sends more than a window allows as long as it sees every request
made with the token; `/auth/token` hands tokens to apps, whose own requests show up in the counts.

    budget = limiter.budget_of(tenant)                                 # on the tenant's object
    lease = await budget.acquire(lambda: tokens, gone=client_gone)   # may hold, may raise
    ...send with lease.token...
    lease.answered(status, headers)                                   # or lease.abandon()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, Literal, Protocol, TypeVar

from proxy.errors import ProxyError, RateLimited

if TYPE_CHECKING:
    from proxy.config import Config

log = logging.getLogger("proxy.tenants.ratelimit")

Clock = Callable[[], float]
HeldReason = Literal["budget", "retry_after"]
Upstream429Outcome = Literal["retried", "passed"]
T = TypeVar("T", bound=Hashable)

# Requests sent on a token before Genesys first described its window.
PROBES_PER_UNKNOWN_TOKEN = 1
# What a token whose answers describe no window may send at once: no limit the proxy could keep.
UNTOLD_BUDGET = 1 << 30
# The pool grows once every token has used this share of its window (the contract: 80 %).
GROW_AT = 0.8
# How often a held request checks that its client is still there: aiohttp does not cancel a
# handler whose client hangs up, and a held request must not go out for nobody.
GONE_POLL_SECONDS = 0.1
# `inin-ratelimit-reset` is in whole seconds, rounded up: a window may reset up to this much
# before the time it gives. One request (an early probe) may try then; if Genesys refuses it, the
# token waits for the full reset.
RESET_ROUNDING = 1.0
# Two answers of one window can disagree by the rounding plus their latency. A reset later than
# that by more is a new window.
SAME_WINDOW_SLACK = 1.5


@dataclass(frozen=True)
class RateLimitSettings:
    """`genesys.rate_limit`, as the limiter uses it."""

    max_wait: float = 5.0
    retries: int = 2
    tokens_per_tenant: int = 1
    max_waiting: int = 1000

    @classmethod
    def from_config(cls, config: Config) -> RateLimitSettings:
        rate = config.genesys.rate_limit
        return cls(rate.max_wait, rate.retries, rate.tokens_per_tenant, rate.max_waiting)

    @property
    def holds(self) -> bool:
        """Whether requests are held and 429s replayed at all (`max_wait: 0` turns both off)."""
        return self.max_wait > 0


class RateLimitObserver(Protocol):
    """Told when requests are held or refused, and what became of Genesys' 429s (metrics)."""

    def ratelimit_held(self, tenant: str, reason: HeldReason) -> None: ...

    def ratelimit_rejected(self, tenant: str) -> None: ...

    def upstream_429(self, tenant: str, outcome: Upstream429Outcome) -> None: ...


class TokenWindow:
    """One token's current rate-limit window, as far as Genesys' answers have described it."""

    __slots__ = ("allowed", "count", "early_probe", "in_flight", "length", "resets_at", "untold")

    def __init__(self) -> None:
        self.allowed: int | None = None  # unknown until the token's first answer
        self.count = 0
        self.in_flight = 0
        # Monotonic time by which the window has reset for sure; inf: a fresh window whose end
        # no answer has told yet.
        self.resets_at = math.inf
        # The longest reset seen: about the window's length, to predict later windows.
        self.length = 0.0
        # Whether one request may try in the last RESET_ROUNDING seconds before `resets_at`.
        self.early_probe = True
        # An answer came back without inin-ratelimit-* headers while the window was unknown:
        # there is no budget to keep, so requests are not held to the probe (until one does).
        self.untold = False

    def __repr__(self) -> str:
        return (
            f"TokenWindow(allowed={self.allowed}, count={self.count}, "
            f"in_flight={self.in_flight}, resets_at={self.resets_at:.1f})"
        )

    def roll(self, now: float) -> None:
        """Start a fresh window once the current one has certainly reset."""
        if now >= self.resets_at:
            self.count = 0
            self.resets_at = math.inf
            self.early_probe = True

    def available(self, now: float) -> int:
        """Requests that may go out on this token now, those in flight counted as spent."""
        self.roll(now)
        if self.allowed is None:
            if self.untold:
                return UNTOLD_BUDGET
            return max(0, PROBES_PER_UNKNOWN_TOKEN - self.in_flight)
        available = self.allowed - self.count - self.in_flight
        if available <= 0 and self.in_flight == 0 and now >= self.next_chance():
            return 1  # the window may have reset already: one request finds out
        return max(0, available)

    def next_chance(self) -> float:
        """The earliest time the window may have reset (inf: it has not been told)."""
        if self.early_probe:
            return self.resets_at - RESET_ROUNDING
        return self.resets_at

    def left(self, now: float) -> int | None:
        """What Genesys would say is left in the window (None: not known yet)."""
        if self.allowed is None:
            return None
        self.roll(now)
        return max(0, self.allowed - self.count)

    def used_share(self, now: float) -> float:
        """The share of the window's budget used or in flight; 0 while unknown."""
        self.roll(now)
        if not self.allowed:
            return 0.0
        return (self.count + self.in_flight) / self.allowed

    def observe(self, allowed: int, count: int, reset: float, now: float) -> None:
        """Take in the `inin-ratelimit-*` headers of one answer."""
        self.roll(now)
        resets_at = now + reset
        self.allowed = allowed
        self.length = max(self.length, reset)
        if self.resets_at == math.inf or resets_at > self.resets_at + SAME_WINDOW_SLACK:
            # A fresh window (or one that reset earlier than the rounded reset promised).
            self.count, self.resets_at = count, resets_at
        else:
            # Answers come back out of order: the highest count is the window's.
            self.count = max(self.count, count)
            self.resets_at = min(self.resets_at, resets_at)

    def exhaust(self, seconds: float, now: float) -> None:
        """Genesys refused the token for its window: nothing more until `seconds` from now."""
        self.roll(now)
        if self.allowed is not None:
            self.count = max(self.count, self.allowed)
        self.resets_at = min(self.resets_at, now + seconds)
        self.early_probe = False


class Lease(Generic[T]):
    """One request's reservation on one token; settle it with `answered` or `abandon`."""

    __slots__ = ("_budget", "_settled", "_window", "token")

    def __init__(self, budget: TenantBudget[T], token: T, window: TokenWindow) -> None:
        self.token = token
        self._budget = budget
        self._window = window
        self._settled = False

    def answered(self, status: int, headers: Mapping[str, str]) -> None:
        """Genesys answered: count the request from its headers."""
        if not self._settled:
            self._settled = True
            self._budget._settle(self._window, status, headers)

    def abandon(self) -> None:
        """No answer (a timeout, a broken connection): count the request as spent anyway."""
        if not self._settled:
            self._settled = True
            self._budget._settle(self._window, None, {})


@dataclass(eq=False)
class _Waiter(Generic[T]):
    """A held request: its future gets a lease once budget comes free."""

    future: asyncio.Future[Lease[T]]
    gone: Callable[[], bool] | None
    arrived: float  # the limiter's clock


class TenantBudget(Generic[T]):
    """A tenant's token windows and its queue of held requests."""

    # Every cached tenant has one: slots, and no queue until a request is held (an empty deque
    # alone is 600 bytes), keep the tenant table's per-tenant cost down.
    __slots__ = (
        "_grow",
        "_growing",
        "_limiter",
        "_queue",
        "_timer",
        "_timer_at",
        "_tokens",
        "_windows",
        "tenant",
    )

    def __init__(self, tenant: str, limiter: RateLimiter[T]) -> None:
        self.tenant = tenant
        self._limiter = limiter
        self._windows: dict[T, TokenWindow] = {}
        self._tokens: Callable[[], Sequence[T]] = tuple
        self._grow: Callable[[], Awaitable[object]] | None = None
        self._queue: deque[_Waiter[T]] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._growing: asyncio.Task[None] | None = None

    # -- reading ---------------------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        """Requests held right now."""
        return sum(1 for waiter in self._queue or () if not waiter.future.done())

    @property
    def in_flight(self) -> int:
        """Requests sent on the tenant's tokens and not answered yet."""
        return sum(window.in_flight for window in self._windows.values())

    def remaining(self) -> int | None:
        """Requests left in the current windows of the tenant's tokens (None: none known yet)."""
        now = self._limiter.clock()
        values = [left for w in self._windows.values() if (left := w.left(now)) is not None]
        return sum(values) if values else None

    def window_of(self, token: T) -> TokenWindow | None:
        return self._windows.get(token)

    def describe(self, tokens: Sequence[T]) -> list[dict[str, float | int | None]]:
        """Each token's window, in pool order, for the admin page; never the token itself."""
        now = self._limiter.clock()
        rows: list[dict[str, float | int | None]] = []
        for token in tokens:
            window = self._windows.get(token)
            if window is None:
                rows.append({"allowed": None, "remaining": None, "in_flight": 0, "reset": None})
                continue
            left = window.left(now)
            finite = math.isfinite(window.resets_at)
            rows.append(
                {
                    "allowed": window.allowed,
                    "remaining": left,
                    "in_flight": window.in_flight,
                    "reset": round(max(0.0, window.resets_at - now), 1) if finite else None,
                }
            )
        return rows

    def best(self, tokens: Sequence[T]) -> T | None:
        """The token with the most budget left, reserving nothing (for `/auth/token`)."""
        if not tokens:
            return None
        now = self._limiter.clock()
        return max(tokens, key=lambda token: self._window(token).available(now))

    # -- the request path ------------------------------------------------------------------------

    async def acquire(
        self,
        tokens: Callable[[], Sequence[T]],
        *,
        grow: Callable[[], Awaitable[object]] | None = None,
        gone: Callable[[], bool] | None = None,
    ) -> Lease[T]:
        """Reserve one request on the best token, holding the caller while none has budget.

        `tokens` gives the tenant's usable tokens (read again whenever a held request is
        released); `grow` fetches one more token into the pool; `gone` says the client hung up.
        Raises `RateLimited` when the wait would pass `max_wait` or too many wait already, and
        `ConnectionResetError` when the client went away while held.
        """
        self._tokens = tokens
        self._grow = grow
        current = tokens()
        if not current:
            raise ValueError("acquire needs at least one token")
        if not self._queue:  # nobody to overtake: first come, first served
            lease = self._take(current)
            if lease is not None:
                self._forget_callbacks()
                return lease
        settings = self._limiter.settings
        if not settings.holds:
            # Pass-through: never hold or refuse; the best token goes out, budget or not.
            now = self._limiter.clock()
            token = max(current, key=lambda t: self._window(t).available(now))
            lease = self._reserve(token, current)
            self._forget_callbacks()
            return lease
        return await self._hold(settings, gone)

    def _forget_callbacks(self) -> None:
        """With nobody held, drop the caller's callbacks: only held requests read them again, and
        kept they would hold a closure (and a token) per cached tenant."""
        if not self._queue:
            self._tokens, self._grow = tuple, None

    async def _hold(self, settings: RateLimitSettings, gone: Callable[[], bool] | None) -> Lease[T]:
        now = self._limiter.clock()
        waiting = self.waiting
        predicted = self._predicted_wait(waiting, now)
        if waiting >= settings.max_waiting:
            raise self._refuse(
                f"{waiting} requests are already held for Genesys rate-limit budget "
                "(genesys.rate_limit.max_waiting)",
                self._predicted_wait(waiting, now, earliest=False),
            )
        if predicted > settings.max_wait:
            raise self._used_up(waiting, now)
        future: asyncio.Future[Lease[T]] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(future, gone, now)
        if self._queue is None:
            self._queue = deque()
        self._queue.append(waiter)
        self._limiter.held(self.tenant, "budget")
        self._arm_timer(now)
        try:
            async with asyncio.timeout(settings.max_wait):
                await _wait_for_lease(waiter)
        except TimeoutError:
            if not waiter.future.done():
                waiter.future.cancel()
                raise self._refuse(
                    "no Genesys rate-limit budget came free within genesys.rate_limit.max_wait "
                    f"({settings.max_wait:g} s)",
                    self._predicted_wait(0, self._limiter.clock(), earliest=False),
                ) from None
        except BaseException:
            self._give_back(waiter)
            raise
        finally:
            self._unqueue(waiter)
        return waiter.future.result()

    def _used_up(self, position: int, now: float) -> RateLimited:
        # Refused counting on the earliest reset the rounded headers allow; the app is told the
        # latest, so that it does not come back too early.
        seconds = self._predicted_wait(position, now, earliest=False)
        max_wait = self._limiter.settings.max_wait
        return self._refuse(
            f"the tenant's Genesys rate-limit budget is used up for {seconds:.0f} s, longer "
            f"than genesys.rate_limit.max_wait ({max_wait:g} s)",
            seconds,
        )

    def _refuse(self, message: str, retry_after: float) -> RateLimited:
        self._limiter.rejected(self.tenant)
        seconds = float(max(1, math.ceil(retry_after))) if math.isfinite(retry_after) else 60.0
        log.info("request refused: %s", message, extra={"tenant": self.tenant})
        return RateLimited(message, tenant=self.tenant, retry_after=seconds)

    def _take(self, tokens: Sequence[T]) -> Lease[T] | None:
        """A lease on the token with the most budget left, or None if none has any."""
        windows = self._windows
        if len(windows) != len(tokens) or any(token not in windows for token in tokens):
            self._sync(tokens)
        now = self._limiter.clock()
        best: T | None = None
        most = 0
        for token in tokens:
            available = self._window(token).available(now)
            if available > most:
                best, most = token, available
        return None if best is None else self._reserve(best, tokens)

    def _reserve(self, token: T, tokens: Sequence[T]) -> Lease[T]:
        window = self._window(token)
        window.in_flight += 1
        if self._grow is not None and len(tokens) < self._limiter.settings.tokens_per_tenant:
            self._maybe_grow(tokens)
        return Lease(self, token, window)

    def _window(self, token: T) -> TokenWindow:
        window = self._windows.get(token)
        if window is None:
            window = self._windows[token] = TokenWindow()
        return window

    def _sync(self, tokens: Sequence[T]) -> None:
        """Follow the pool: forget tokens that left it (refreshed, dropped, revoked), add new."""
        keep = set(tokens)
        for token in [t for t in self._windows if t not in keep]:
            del self._windows[token]
        for token in tokens:
            self._window(token)

    def _predicted_wait(self, position: int, now: float, *, earliest: bool = True) -> float:
        """Seconds until the request `position` places behind the front could go out, counting
        on the earliest reset the rounded headers allow (`earliest`) or on the latest."""
        forecast = self._forecast(now, earliest=earliest)
        return 0.0 if forecast is None else _wait_at(position, *forecast)

    def _forecast(self, now: float, *, earliest: bool = True) -> tuple[float, int, float] | None:
        """(seconds to the first reset, requests per round of resets, window length), or None
        while no forecast can be made: a token's window is unknown or the pool can grow."""
        tokens = self._tokens()
        if self._grow is not None and len(tokens) < self._limiter.settings.tokens_per_tenant:
            return None  # another token is (or will be) on its way
        windows = [self._window(token) for token in tokens]
        for window in windows:
            window.roll(now)
        if not windows or any(w.allowed is None or w.resets_at == math.inf for w in windows):
            return None  # answers in flight will tell; the wait stays bounded by max_wait
        capacity = sum(w.allowed or 0 for w in windows)
        resets = (w.next_chance() if earliest else w.resets_at for w in windows)
        first_reset = max(0.0, min(resets) - now)
        return first_reset, capacity, max(w.length for w in windows)

    # -- growing the pool ------------------------------------------------------------------------

    def _maybe_grow(self, tokens: Sequence[T]) -> None:
        if self._growing is not None or self._grow is None:
            return
        now = self._limiter.clock()
        windows = [self._windows.get(token) for token in tokens]
        if any(w is None or w.allowed is None or w.used_share(now) < GROW_AT for w in windows):
            return
        grow = self._grow
        log.info(
            "all %d tokens of tenant %s used %.0f%% of their window: fetching another",
            len(tokens),
            self.tenant,
            GROW_AT * 100,
            extra={"tenant": self.tenant},
        )
        self._growing = asyncio.create_task(self._grow_pool(grow), name=f"pool-grow:{self.tenant}")

    async def _grow_pool(self, grow: Callable[[], Awaitable[object]]) -> None:
        try:
            await grow()
        except ProxyError as exc:  # the token manager recorded it; held requests time out
            log.warning(
                "could not add a token to the pool of tenant %s: %s",
                self.tenant,
                exc.message,
                extra={"tenant": self.tenant},
            )
        finally:
            self._growing = None
        self.release()

    # -- releasing held requests -----------------------------------------------------------------

    def _settle(self, window: TokenWindow, status: int | None, headers: Mapping[str, str]) -> None:
        now = self._limiter.clock()
        window.in_flight = max(0, window.in_flight - 1)
        described = parse_ratelimit_headers(headers)
        if described is not None:
            window.observe(*described, now)
        else:
            window.roll(now)
            window.count += 1  # no headers: assume Genesys counted it
            if window.allowed is None:
                window.untold = True
        if status == 429 and described is not None and described[1] >= described[0]:
            # Refused for the token's own window (not a resource's): hold the token until reset.
            retry_after = parse_retry_after(headers.get("Retry-After"))
            window.exhaust(retry_after if retry_after is not None else described[2], now)
        if self._queue:
            self.release()

    def release(self) -> None:
        """Hand free budget to held requests, first come first served."""
        queue = self._queue
        while queue:
            waiter = queue[0]
            if waiter.future.done():
                queue.popleft()
                continue
            lease = self._take(self._tokens())
            if lease is None:
                break
            queue.popleft()
            waiter.future.set_result(lease)
        if queue:
            now = self._limiter.clock()
            self._refuse_hopeless(now)
            self._arm_timer(now)

    def _refuse_hopeless(self, now: float) -> None:
        """Refuse at once the held requests that cannot go out before their max_wait is up.

        Until a token's window is known every request is held; once Genesys described it, the
        ones placed later than the windows within reach will hold would only time out.
        """
        forecast = self._forecast(now)
        if forecast is None:
            return
        # The current max_wait, so that a reload lowering it applies to held requests too.
        max_wait = self._limiter.settings.max_wait
        position = 0
        for waiter in self._queue or ():
            if waiter.future.done():
                continue
            predicted = _wait_at(position, *forecast)
            if now + predicted > waiter.arrived + max_wait:
                waiter.future.set_exception(self._used_up(position, now))
                continue
            position += 1

    def _give_back(self, waiter: _Waiter[T]) -> None:
        """A held request gave up (cancelled, client gone): return a lease it was handed."""
        future = waiter.future
        if not future.done():
            future.cancel()
        elif not future.cancelled() and future.exception() is None:
            lease = future.result()
            if not lease._settled:
                lease._settled = True
                lease._window.in_flight = max(0, lease._window.in_flight - 1)
            self.release()

    def _unqueue(self, waiter: _Waiter[T]) -> None:
        if self._queue is not None:
            with contextlib.suppress(ValueError):
                self._queue.remove(waiter)

    def _arm_timer(self, now: float) -> None:
        """Wake the queue when the first window resets (answers wake it before that)."""
        resets = [w.next_chance() for w in self._windows.values() if math.isfinite(w.resets_at)]
        if not resets:
            return
        at = min(resets)
        if self._timer is not None and self._timer_at <= at:
            return
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer_at = at
        # A hair late, so the window has certainly rolled when the timer runs.
        self._timer = loop.call_later(max(0.0, at - now) + 0.005, self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer, self._timer_at = None, math.inf
        self.release()

    def close(self) -> None:
        """Stop timers and growth; held requests are refused by their own timeouts."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_at = None, math.inf
        if self._growing is not None:
            self._growing.cancel()


def _wait_at(position: int, first_reset: float, capacity: int, length: float) -> float:
    """The wait of the request `position` places behind the front, by a window forecast."""
    if capacity <= 0:
        return math.inf
    return first_reset + (position // capacity) * length


async def _wait_for_lease(waiter: _Waiter[T]) -> None:
    """Wait for the waiter's lease; give it up and raise if the client hangs up meanwhile."""
    future = waiter.future
    if waiter.gone is None:
        await asyncio.shield(future)
        return
    while not future.done():
        await asyncio.wait((future,), timeout=GONE_POLL_SECONDS)
        if not future.done() and waiter.gone():
            future.cancel()
            raise ConnectionResetError("the client went away while its request was held")


class BudgetHolder(Protocol[T]):
    """What owns a budget: the tenant's table object (`proxy.tenants.table.Tenant`)."""

    id: str
    budget: TenantBudget[T] | None


class RateLimiter(Generic[T]):
    """The proxy's rate-limit policy: settings (reloadable), budgets made on tenants, metrics.

    A tenant's `TenantBudget` lives on its table object and goes with it; `budgets` lists the
    live ones, for a reload and for shutdown.
    """

    def __init__(
        self,
        settings: RateLimitSettings | None = None,
        *,
        clock: Clock = time.monotonic,
        observer: RateLimitObserver | None = None,
        budgets: Callable[[], Iterable[TenantBudget[T]]] = tuple,
    ) -> None:
        self.settings = settings or RateLimitSettings()
        self.clock = clock
        self._observer = observer
        self._budgets = budgets

    def reconfigure(self, config: Config) -> None:
        """Apply a reloaded `genesys.rate_limit` at once, to held requests too."""
        settings = RateLimitSettings.from_config(config)
        if settings != self.settings:
            log.info("rate-limit settings now %s", settings)
        self.settings = settings
        for budget in self._budgets():
            budget.release()

    def budget_of(self, holder: BudgetHolder[T]) -> TenantBudget[T]:
        """The holder's budget, made on first use."""
        budget = holder.budget
        if budget is None:
            budget = holder.budget = TenantBudget(holder.id, self)
        return budget

    def close(self) -> None:
        """Stop the budgets' timers and pool growth (shutdown)."""
        for budget in self._budgets():
            budget.close()

    # -- upstream 429s ---------------------------------------------------------------------------

    def replay_delay(self, headers: Mapping[str, str], attempt: int) -> float | None:
        """Seconds to wait before replaying a request Genesys answered 429, or None: pass it on.

        `attempt` counts the replays already made for the request.
        """
        settings = self.settings
        if not settings.holds or attempt >= settings.retries:
            return None
        seconds = parse_retry_after(headers.get("Retry-After"))
        if seconds is None or seconds > settings.max_wait:
            return None
        return seconds

    async def hold_for(self, tenant: str, seconds: float, gone: Callable[[], bool] | None) -> None:
        """Wait out a 429's Retry-After; `ConnectionResetError` if the client hangs up."""
        self.held(tenant, "retry_after")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while (left := deadline - loop.time()) > 0:
            await asyncio.sleep(min(left, GONE_POLL_SECONDS) if gone is not None else left)
            if gone is not None and gone():
                raise ConnectionResetError("the client went away while its request was held")

    # -- reporting -------------------------------------------------------------------------------

    def held(self, tenant: str, reason: HeldReason) -> None:
        if self._observer is not None:
            self._observer.ratelimit_held(tenant, reason)

    def rejected(self, tenant: str) -> None:
        if self._observer is not None:
            self._observer.ratelimit_rejected(tenant)

    def upstream_429(self, tenant: str, outcome: Upstream429Outcome) -> None:
        if self._observer is not None:
            self._observer.upstream_429(tenant, outcome)


def parse_ratelimit_headers(headers: Mapping[str, str]) -> tuple[int, int, float] | None:
    """(allowed, count, seconds to reset) from `inin-ratelimit-*`, or None if absent or garbled."""
    allowed = _non_negative_int(headers.get("inin-ratelimit-allowed"))
    count = _non_negative_int(headers.get("inin-ratelimit-count"))
    if allowed is None or count is None or allowed == 0:
        return None
    reset = _non_negative_int(headers.get("inin-ratelimit-reset"))
    return allowed, count, float(reset if reset is not None else 60)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds of a `Retry-After` in delta-seconds (what Genesys sends), None if absent or bad."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds


def _non_negative_int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        return None
    return number if number >= 0 else None
