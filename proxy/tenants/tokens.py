"""Per-tenant Genesys Cloud tokens: caching, single-flight fetching, refresh-ahead, backoff.

A policy over the tenant table (`proxy.tenants.table`): the tokens, backoff and refusal state it
keeps are slots of each tenant's `Tenant`. `TokenManager.lookup(tenant)` is the one call a
request makes: it returns the tenant's object and the token to inject. A valid cached token is
one table lookup away; a tenant without one waits on a single shared fetch (single-flight); a
token past `refresh_at` of its life is refreshed in the background while it keeps serving. The
login client itself is `proxy.tenants.oauth`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from proxy.backoff import backoff_delay
from proxy.config import Config
from proxy.errors import GenesysAuthFailed, ProxyError, TokenUnavailable, VaultUnavailable
from proxy.tasks import BackgroundTasks
from proxy.tenants.oauth import (
    EXPIRY_MARGIN_FRACTION,
    EXPIRY_MARGIN_SECONDS,
    GenesysTokenFetcher,
    Token,
)
from proxy.tenants.record import TenantCredentials
from proxy.tenants.singleflight import SingleFlight
from proxy.tenants.table import FetchTrouble, RefusalBackoff, Tenant, TenantTable

__all__ = [
    "EXPIRY_MARGIN_FRACTION",
    "EXPIRY_MARGIN_SECONDS",
    "GenesysTokenFetcher",
    "TenantTokenState",
    "Token",
    "TokenManager",
]

log = logging.getLogger("proxy.tenants.tokens")

Clock = Callable[[], float]
TokenStateName = Literal["valid", "refreshing", "expired", "failing"]
FetchOutcome = Literal["success", "rejected", "error"]

# After a failed fetch a tenant waits before the next one: jittered, doubling with each
# consecutive failure from BACKOFF_BASE up to BACKOFF_CAP (seconds).
BACKOFF_BASE = 1.0
BACKOFF_CAP = 30.0
# A token endpoint's Retry-After is honoured up to this: a broken header must not lock a tenant out.
RETRY_AFTER_CAP = 300.0
# The contract's 401 storm rule: once a fresh token is refused too, the tenant's next 401-driven
# refetch waits this long, doubling while fresh tokens keep being refused.
REFUSAL_BACKOFF_BASE = 10.0
REFUSAL_BACKOFF_CAP = 300.0


class TokenFetcher(Protocol):
    """Gets a fresh token for a tenant's OAuth client."""

    async def fetch(self, credentials: TenantCredentials) -> Token: ...


class CredentialProvider(Protocol):
    """The tenant's table object with a usable record; raises e.g. `UnknownTenant`."""

    async def get(self, tenant: str) -> Tenant: ...


class TokenObserver(Protocol):
    """Told of every cache lookup and token request, e.g. to count them in metrics."""

    def cache_lookup(self, *, hit: bool) -> None: ...

    # Only for real token requests: the tenant's credential record was found.
    def token_fetch(self, tenant: Tenant, outcome: FetchOutcome) -> None: ...


@dataclass(frozen=True)
class TenantTokenState:
    """What the admin page shows about one tenant's token; never the token itself."""

    tenant: str
    state: TokenStateName
    domain: str | None
    seconds_left: float
    last_refresh: float | None
    last_error_code: str | None
    last_error_message: str | None
    fetches: int
    # Wall-clock time at which Genesys said the cached token expires; None without a token.
    expires_at: float | None = None


class TokenManager:
    """Caches each tenant's token on its table object, fetches it single-flight, refreshes ahead."""

    def __init__(
        self,
        table: TenantTable,
        credentials: CredentialProvider,
        fetcher: TokenFetcher,
        *,
        refresh_at: float = 0.8,
        pool_size: int = 1,
        rejected_ttl: float = 10.0,
        backoff_base: float = BACKOFF_BASE,
        backoff_cap: float = BACKOFF_CAP,
        clock: Clock = time.monotonic,
        observer: TokenObserver | None = None,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        _check_refresh_at(refresh_at)
        if not 0.0 < backoff_base <= backoff_cap:
            raise ValueError(
                f"need 0 < backoff_base <= backoff_cap, not {backoff_base}, {backoff_cap}"
            )
        self._table = table
        self._credentials = credentials
        self._fetcher = fetcher
        self._refresh_at = refresh_at
        # genesys.rate_limit.tokens_per_tenant: how many tokens a tenant's pool may hold.
        self._pool_size = max(1, pool_size)
        self._rejected_ttl = rejected_ttl
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._clock = clock
        self._observer = observer
        self._jitter = jitter
        # Keyed by the tenant's object: a tenant evicted and seen again gets a flight of its own.
        self._flights: SingleFlight[Tenant, Token] = SingleFlight("token-fetch")
        # The pool's own fetches (another token, or a pool token's refresh): one at a time.
        self._pool_flights: SingleFlight[Tenant, Token | None] = SingleFlight("token-pool")
        self._background = BackgroundTasks()
        self._closed = False
        self.fetches = 0

    @property
    def table(self) -> TenantTable:
        return self._table

    def reconfigure(self, config: Config) -> None:
        """Apply `genesys.refresh_at` and the pool size at once, to cached tokens too."""
        refresh_at = config.genesys.refresh_at
        _check_refresh_at(refresh_at)
        self._refresh_at = refresh_at
        self._pool_size = config.genesys.rate_limit.tokens_per_tenant
        for tenant in self._table:
            token = tenant.token
            if token is not None:
                tenant.set_token_fresh_until(min(token.refresh_due(refresh_at), token.usable_until))

    async def lookup(self, tenant_id: str) -> tuple[Tenant, Token]:
        """The tenant's object and a valid token for it, fetching one if there is none."""
        tenant = self._table.get(tenant_id)
        if tenant is not None:
            tokens = tenant.tokens
            if tokens and self._clock() < tenant.fresh_until:
                if self._observer is not None:
                    self._observer.cache_lookup(hit=True)
                return tenant, tokens[0]
        return await self._lookup_slow(tenant_id)

    async def get(self, tenant_id: str) -> Token:
        """A valid token for `tenant_id` (the local token endpoint's call)."""
        return (await self.lookup(tenant_id))[1]

    async def _lookup_slow(self, tenant_id: str) -> tuple[Tenant, Token]:
        known = self._table.get(tenant_id)
        trouble = known.trouble if known is not None else None
        if (
            known is not None
            and trouble is not None
            and isinstance(trouble.failure, VaultUnavailable)
        ):
            # Its record could not be read back lately: do not ask Vault again before the
            # backoff ends. (Other failures wait below, after the record's own check: a record
            # fixed in Vault must be picked up even while its old client's rejection lasts.)
            self._check_backoff(known, self._clock())
        # The record may be old (re-read in the background meanwhile) or missing (read now).
        try:
            tenant = await self._credentials.get(tenant_id)
        except VaultUnavailable as exc:
            # A known tenant whose record could not be read back: back off like a failed fetch.
            if known is not None and self._table.holds(known):
                self._fetch_failed(known, exc)
            raise
        now = self._clock()
        token = tenant.token
        if token is not None and now < token.usable_until:
            if now >= tenant.token_fresh_until:
                self._refresh_in_background(tenant, now)
            if self._observer is not None:
                self._observer.cache_lookup(hit=True)
            return tenant, token
        self._check_backoff(tenant, now)
        if self._observer is not None:
            self._observer.cache_lookup(hit=False)
        return tenant, await self._flights.do(tenant, functools.partial(self._fetch, tenant))

    def _check_backoff(self, tenant: Tenant, now: float) -> None:
        """Raise the tenant's remembered failure while it has no usable token and backs off."""
        trouble = tenant.trouble
        if trouble is None:
            return
        token = tenant.token
        if token is not None and now < token.usable_until:
            return
        if trouble.rejected is not None and now < trouble.rejected_until:
            # A fresh exception each time: re-raising one instance keeps growing its traceback.
            raise GenesysAuthFailed(trouble.rejected.message, tenant=tenant.id)
        if trouble.failure is not None and now < trouble.retry_at:
            # Backing off: answer at once instead of piling requests onto a failing endpoint.
            raise _again(trouble.failure, tenant.id, trouble.retry_at - now)

    async def refresh(self, tenant_id: str) -> Token:
        """Fetch a new token now (admin Refresh), ignoring the cached one and a rejection.

        While the login service has asked the tenant to back off (its Retry-After), the answer
        is the tenant's backoff error with that Retry-After: an operator's click must not be
        the request that gets the OAuth client throttled harder.
        """
        tenant = await self._credentials.get(tenant_id)
        trouble = tenant.trouble
        now = self._clock()
        if (
            trouble is not None
            and isinstance(trouble.failure, TokenUnavailable)
            and trouble.failure.requested_retry_after is not None
            and now < trouble.retry_at
        ):
            raise _again(trouble.failure, tenant_id, trouble.retry_at - now)
        return await self._flights.do(tenant, functools.partial(self._fetch, tenant))

    # -- the token pool (genesys.rate_limit.tokens_per_tenant) -----------------------------------

    @property
    def pool_size(self) -> int:
        return self._pool_size

    def pool(self, tenant: Tenant) -> tuple[Token, ...]:
        """The tenant's tokens that may be injected now, at most `pool_size` of them.

        The first is refreshed ahead by `lookup`; a pool token past `refresh_at` of its life is
        replaced in the background here, one at a time, and stays in use meanwhile.
        """
        tokens = tenant.tokens
        now = self._clock()
        if len(tokens) == 1:
            return tokens if now < tokens[0].usable_until else ()
        usable = tuple(t for t in tokens[: self._pool_size] if now < t.usable_until)
        for token in usable[1:]:
            if now >= token.refresh_due(self._refresh_at):
                self._pool_fetch_in_background(tenant, token)
                break
        return usable

    async def grow(self, tenant: Tenant) -> Token | None:
        """Fetch one more token into the tenant's pool (the rate limiter's call); None: no room,
        or the tenant is backing off its token endpoint."""
        if len(self.pool(tenant)) >= self._pool_size or self._backing_off(tenant):
            return None
        return await self._pool_flights.do(tenant, functools.partial(self._fetch_extra, tenant))

    def _pool_fetch_in_background(self, tenant: Tenant, old: Token) -> None:
        if self._closed or self._pool_flights.in_flight(tenant) or self._backing_off(tenant):
            return
        self._background.start(self._pool_refresh(tenant, old), f"token-pool-refresh:{tenant.id}")

    async def _pool_refresh(self, tenant: Tenant, old: Token) -> None:
        # `_fetch_extra` has recorded and logged any failure; `old` serves until it expires.
        with contextlib.suppress(Exception):
            await self._pool_flights.do(tenant, functools.partial(self._fetch_extra, tenant, old))

    def _backing_off(self, tenant: Tenant) -> bool:
        trouble = tenant.trouble
        now = self._clock()
        return trouble is not None and (
            (trouble.rejected is not None and now < trouble.rejected_until)
            or now < trouble.retry_at
        )

    async def _fetch_extra(self, tenant: Tenant, old: Token | None = None) -> Token | None:
        """One token for the pool: in place of `old` (its refresh), or added to it."""
        generation = tenant.generation
        record = tenant.record
        if record is None:
            return None
        token = await self._request_token(tenant, record)
        if not self._table.holds(tenant) or tenant.generation != generation:
            return token  # evicted or its record changed meanwhile: not pooled
        now = self._clock()
        kept = tuple(t for t in tenant.tokens if t is not old and now < t.usable_until)
        if not kept:
            fresh_until = min(token.refresh_due(self._refresh_at), token.usable_until)
            tenant.set_tokens((token,), fresh_until)
        elif len(kept) < self._pool_size:
            # The first token, and with it the hot path's `fresh_until`, stays as it was.
            tenant.set_tokens((*kept, token), tenant.token_fresh_until)
        log.info(
            "token %s the pool of tenant %s (%d of at most %d)",
            "refreshed in" if old is not None else "added to",
            tenant.id,
            len(tenant.tokens),
            self._pool_size,
            extra={"tenant": tenant.id, "outcome": "success"},
        )
        return token

    def _drop_from_pool(self, tenant: Tenant, refused: Token) -> bool:
        """Drop a refused token that is not the first of the tenant's tokens."""
        tokens = tenant.tokens
        if refused not in tokens[1:]:
            return False
        tenant.set_tokens(tuple(t for t in tokens if t is not refused), tenant.token_fresh_until)
        log.info(
            "upstream refused a pool token of tenant %s; dropped it",
            tenant.id,
            extra={"tenant": tenant.id},
        )
        return True

    # -- upstream 401s (the forwarder's calls) ----------------------------------------------------

    async def replacement(self, tenant: Tenant, refused: Token) -> Token | None:
        """The token to replay a request with after Genesys answered `refused` with 401.

        None means "pass the 401 to the app": a fresh token was refused recently, so it is the
        endpoint that refuses, and refetching would only burn tokens (the 401 storm rule).
        """
        now = self._clock()
        refusal = tenant.refusal
        if refusal is not None and now < refusal.refetch_after:
            return None
        self._drop_from_pool(tenant, refused)
        current = tenant.token
        if current is not None and current is not refused and now < current.usable_until:
            return current  # another request has replaced it already: one refetch per storm
        if current is refused:
            # Not `drop_tokens`: a fetch under way (a refresh) is for the same client; keep it.
            tenant.set_tokens((), -math.inf)
            log.info(
                "upstream refused the token of tenant %s", tenant.id, extra={"tenant": tenant.id}
            )
        if self._observer is not None:
            self._observer.cache_lookup(hit=False)
        return await self._flights.do(tenant, functools.partial(self._fetch, tenant))

    def refused_again(self, tenant: Tenant, fresh: Token) -> None:
        """The replay with `fresh` got 401 too: keep the token, back the next refetch off."""
        refusal = tenant.refusal
        if refusal is None:
            refusal = tenant.refusal = RefusalBackoff()
        if refusal.counted is fresh:
            return  # the other replays of the same storm
        refusal.counted = fresh
        refusal.refusals += 1
        delay = min(
            REFUSAL_BACKOFF_CAP, REFUSAL_BACKOFF_BASE * 2.0 ** min(refusal.refusals - 1, 32)
        )
        refusal.refetch_after = self._clock() + delay
        log.warning(
            "a fresh token of tenant %s was refused too (401): the endpoint refuses, not the "
            "token; no 401-driven refetch for %.0fs",
            tenant.id,
            delay,
            extra={"tenant": tenant.id},
        )

    def accepted(self, tenant: Tenant) -> None:
        """A replay with a fresh token was not refused: the refusal backoff starts over."""
        tenant.refusal = None

    def discard(self, tenant: Tenant, refused: Token) -> bool:
        """Drop `refused` if it is still the tenant's token and no refusal backoff holds."""
        refusal = tenant.refusal
        if refusal is not None and self._clock() < refusal.refetch_after:
            return False
        if self._drop_from_pool(tenant, refused):
            return True
        if tenant.token is not refused:
            return False
        tenant.set_tokens((), -math.inf)
        return True

    # -- admin and tests --------------------------------------------------------------------------

    def invalidate(self, tenant_id: str, token: Token | None = None) -> bool:
        """Drop the cached token; with `token`, only if it is still the cached one."""
        tenant = self._table.peek(tenant_id)
        if tenant is None or tenant.token is None:
            return False
        if token is not None and tenant.token is not token:
            return False
        tenant.set_tokens((), -math.inf)
        log.info("cached token of tenant %s dropped", tenant_id, extra={"tenant": tenant_id})
        return True

    def evict(self, tenant_id: str) -> bool:
        """Forget everything about `tenant_id` (the table's one eviction path)."""
        # A fetch already under way finishes for its waiters but is not cached (see `_fetch`).
        return self._table.evict(tenant_id)

    def describe(self, tenant: Tenant, now: float | None = None) -> TenantTokenState:
        """The admin view of one tenant's token; never the token itself."""
        now = self._clock() if now is None else now
        token = tenant.token
        usable = token is not None and now < token.usable_until
        trouble = tenant.trouble
        state: TokenStateName
        if self._flights.in_flight(tenant):
            state = "refreshing"
        elif trouble is not None and trouble.failing:
            state = "failing"
        else:
            state = "valid" if usable else "expired"
        return TenantTokenState(
            tenant=tenant.id,
            state=state,
            domain=token.domain if token is not None else None,
            seconds_left=token.seconds_left(now) if token is not None else 0.0,
            last_refresh=tenant.last_refresh,
            last_error_code=trouble.last_error_code if trouble is not None else None,
            last_error_message=trouble.last_error_message if trouble is not None else None,
            fetches=tenant.fetches,
            expires_at=token.obtained_wall + token.lifetime if token is not None else None,
        )

    def state(self, tenant_id: str) -> TenantTokenState | None:
        """The admin view of one tenant, or None if it never had a token fetched or tried."""
        tenant = self._table.peek(tenant_id)
        if tenant is None or (tenant.fetches == 0 and not self._flights.in_flight(tenant)):
            return None
        return self.describe(tenant)

    def snapshot(self) -> list[TenantTokenState]:
        """The admin view of every tenant that had a token fetched or tried, sorted by id."""
        now = self._clock()
        return [
            self.describe(tenant, now)
            for tenant in self._table.tenants()
            if tenant.fetches or self._flights.in_flight(tenant)
        ]

    async def close(self) -> None:
        """Cancel background refreshes and fetches under way, and wait for them to end."""
        self._closed = True
        await self._background.close()
        await self._flights.close()
        await self._pool_flights.close()

    # -- internals --------------------------------------------------------------------------------

    def _refresh_in_background(self, tenant: Tenant, now: float) -> None:
        if self._closed or self._flights.in_flight(tenant):
            return
        trouble = tenant.trouble
        if trouble is not None and (
            (trouble.rejected is not None and now < trouble.rejected_until)
            or now < trouble.retry_at
        ):
            return
        self._background.start(self._background_refresh(tenant), f"token-refresh:{tenant.id}")

    async def _background_refresh(self, tenant: Tenant) -> None:
        # `_fetch` has recorded and logged any failure; the current token stays in use meanwhile.
        with contextlib.suppress(Exception):
            await self._flights.do(tenant, functools.partial(self._fetch, tenant))

    def _retry_delay(self, exc: Exception, failures: int) -> float:
        """Seconds before the next fetch after `failures` consecutive failed ones."""
        delay = backoff_delay(
            failures, self._jitter, base=self._backoff_base, cap=self._backoff_cap
        )
        asked = exc.requested_retry_after if isinstance(exc, TokenUnavailable) else None
        if asked is not None:
            delay = max(delay, min(asked, RETRY_AFTER_CAP))
        return delay

    async def _fetch(self, tenant: Tenant) -> Token:
        """One token request for the tenant's current record; runs inside the single-flight task."""
        generation = tenant.generation
        record = tenant.record
        if record is None:
            # The record was dropped (removed, denied) since the caller looked: ask again, so the
            # caller gets the reason.
            record = (await self._credentials.get(tenant.id)).record
            if record is None:  # pragma: no cover - get() raises instead
                raise VaultUnavailable(f"no credential record for tenant {tenant.id!r}")
        token = await self._request_token(tenant, record)
        # Evicted meanwhile, or its record changed: the caller still gets the token, but it is
        # not cached (the next request fetches from the tenant's current client).
        if self._table.holds(tenant) and tenant.generation == generation:
            # The first token is replaced; the rest of the pool stays while it is usable.
            now = self._clock()
            rest = tuple(t for t in tenant.tokens[1:] if now < t.usable_until)
            tenant.set_tokens(
                (token, *rest), min(token.refresh_due(self._refresh_at), token.usable_until)
            )
        trouble = tenant.trouble
        if trouble is not None:
            trouble.rejected = None
            trouble.rejected_until = -math.inf
            trouble.failing = False
            trouble.failures = 0
            trouble.retry_at = -math.inf
            trouble.failure = None
        tenant.last_refresh = token.obtained_wall
        log.info(
            "token fetched for tenant %s (region %s, lifetime %.0fs)",
            tenant.id,
            token.domain,
            token.lifetime,
            extra={"tenant": tenant.id, "outcome": "success"},
        )
        return token

    async def _request_token(self, tenant: Tenant, record: TenantCredentials) -> Token:
        """One token request for `tenant`, counted and reported; a failure is recorded."""
        tenant.fetches += 1
        self.fetches += 1
        try:
            token = await self._fetcher.fetch(record)
        except Exception as exc:
            if self._observer is not None:
                rejected = isinstance(exc, GenesysAuthFailed)
                self._observer.token_fetch(tenant, "rejected" if rejected else "error")
            self._fetch_failed(tenant, exc)
            raise
        if self._observer is not None:
            self._observer.token_fetch(tenant, "success")
        return token

    def _fetch_failed(self, tenant: Tenant, exc: Exception) -> None:
        """Record a failed fetch, and hold off the next background refresh."""
        now = self._clock()
        trouble = tenant.trouble
        if trouble is None:
            trouble = tenant.trouble = FetchTrouble()
        trouble.failing = True
        if isinstance(exc, ProxyError):
            trouble.last_error_code, trouble.last_error_message = exc.code, exc.message
        else:
            # Not a proxy error, so its text is unvetted: keep only the type name.
            trouble.last_error_code = "internal_error"
            trouble.last_error_message = f"Unexpected {type(exc).__name__} while fetching a token."
        outcome = "error"
        delay: float | None = None
        if isinstance(exc, GenesysAuthFailed):
            trouble.rejected = exc
            trouble.rejected_until = now + self._rejected_ttl
            outcome = "rejected"
        elif _transient(exc):
            # Set here, as the fetch fails, so no request slips in to start another one at once.
            trouble.failures += 1
            delay = self._retry_delay(exc, trouble.failures)
            trouble.retry_at = now + delay
            trouble.failure = exc if isinstance(exc, ProxyError) else None
            if isinstance(exc, TokenUnavailable | VaultUnavailable):
                exc.retry_after = delay  # the callers of this fetch learn when to come back
        unexpected = not isinstance(exc, ProxyError)
        extra = {"tenant": tenant.id, "outcome": outcome}
        retry = f"; next attempt in {delay:.1f}s" if delay is not None else ""
        token = tenant.token
        if token is None or now >= token.usable_until:
            log.warning(
                "token fetch for tenant %s failed%s: %s",
                tenant.id,
                retry,
                trouble.last_error_message,
                extra=extra,
                exc_info=unexpected,
            )
            return
        tenant.set_token_fresh_until(min(now + (delay or BACKOFF_BASE), token.usable_until))
        log.warning(
            "token fetch for tenant %s failed, keeping the current token (%.0fs left)%s: %s",
            tenant.id,
            token.seconds_left(now),
            retry,
            trouble.last_error_message,
            extra=extra,
            exc_info=unexpected,
        )


def _check_refresh_at(refresh_at: float) -> None:
    if not 0.0 < refresh_at <= 1.0:
        raise ValueError(f"refresh_at must be in (0, 1], not {refresh_at}")


def _transient(exc: Exception) -> bool:
    """Whether a failed fetch may succeed later by itself: an outage or a bug, not an answer."""
    if isinstance(exc, ProxyError):
        return isinstance(exc, TokenUnavailable | VaultUnavailable)
    return True


def _again(failure: ProxyError | None, tenant: str, retry_after: float) -> ProxyError:
    """A fresh copy of a remembered failure (re-raising one instance grows its traceback)."""
    if isinstance(failure, VaultUnavailable):
        return VaultUnavailable(failure.message, tenant=tenant, retry_after=retry_after)
    message = failure.message if failure is not None else "the last token fetch failed"
    return TokenUnavailable(
        f"{message} (backing off; next attempt in {retry_after:.0f}s)",
        tenant=tenant,
        retry_after=retry_after,
    )
