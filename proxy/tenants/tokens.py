"""Per-tenant Genesys Cloud tokens: fetching them, caching them, refreshing them ahead of expiry.

`TokenManager.get(tenant)` is the one call the proxy makes per request. A valid cached token is a
dict lookup away; a tenant without one waits on a single shared fetch (single-flight); a token
past `refresh_at` of its life is refreshed in the background while the current one keeps serving.
`GenesysTokenFetcher` is the only code that talks to the Genesys login service.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import email.utils
import functools
import json
import logging
import math
import random
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import aiohttp

from proxy.errors import GenesysAuthFailed, ProxyError, TokenUnavailable, VaultUnavailable
from proxy.http.failures import describe_client_error, url_host
from proxy.tenants.credentials import TenantCredentials
from proxy.tenants.singleflight import SingleFlight

log = logging.getLogger("proxy.tenants.tokens")

Clock = Callable[[], float]
TokenStateName = Literal["valid", "refreshing", "expired", "failing"]
FetchOutcome = Literal["success", "rejected", "error"]

# The contract: a token counts as expired min(30 s, 10 % of its lifetime) before `expires_in`.
EXPIRY_MARGIN_SECONDS = 30.0
EXPIRY_MARGIN_FRACTION = 0.1

# After a failed fetch a tenant waits before the next one: full jitter between BACKOFF_BASE and
# a ceiling that doubles with each consecutive failure, up to BACKOFF_CAP (seconds).
BACKOFF_BASE = 1.0
BACKOFF_CAP = 30.0
# A token endpoint's Retry-After is honoured up to this: a broken header must not lock a tenant out.
RETRY_AFTER_CAP = 300.0

# OAuth error codes with which a token endpoint says the client itself is bad (RFC 6749 5.2).
_REJECTED_CLIENT_ERRORS = frozenset({"invalid_client", "unauthorized_client", "access_denied"})
# RFC 6749 sections 4.1.2.1 and 5.2: the only login error codes echoed into messages and logs.
OAUTH_ERROR_CODES = frozenset(
    {
        "invalid_request",
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
        "access_denied",
        "server_error",
        "temporarily_unavailable",
    }
)


@dataclass(frozen=True, slots=True)
class Token:
    """An access token for one tenant, bound to the region domain that issued it."""

    value: str = field(repr=False)
    tenant: str
    domain: str
    lifetime: float
    obtained_at: float
    obtained_wall: float
    # Precomputed: the hot path compares against it on every request.
    usable_until: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        margin = min(EXPIRY_MARGIN_SECONDS, EXPIRY_MARGIN_FRACTION * self.lifetime)
        object.__setattr__(self, "usable_until", self.expires_at - margin)

    @property
    def expires_at(self) -> float:
        """Monotonic time at which Genesys says the token expires."""
        return self.obtained_at + self.lifetime

    def refresh_due(self, refresh_at: float) -> float:
        """Monotonic time after which the token should be replaced in the background."""
        return self.obtained_at + refresh_at * self.lifetime

    def seconds_left(self, now: float) -> float:
        """Seconds the token may still be injected, never negative."""
        return max(0.0, self.usable_until - now)


class TokenFetcher(Protocol):
    """Gets a fresh token for a tenant's OAuth client."""

    async def fetch(self, credentials: TenantCredentials) -> Token: ...


class CredentialProvider(Protocol):
    """Looks up a tenant's OAuth client; raises proxy errors such as `UnknownTenant`."""

    async def get(self, tenant: str) -> TenantCredentials: ...


class TokenObserver(Protocol):
    """Told of every cache lookup and token request, e.g. to count them in metrics."""

    def cache_lookup(self, *, hit: bool) -> None: ...

    # Only for real token requests: the tenant's credential record was found.
    def token_fetch(self, tenant: str, outcome: FetchOutcome) -> None: ...


class GenesysTokenFetcher:
    """Fetches client-credentials tokens from the login service of a tenant's Genesys region."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        login_url_template: str,
        *,
        timeout: float,
        connect_timeout: float,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
    ) -> None:
        self._session = session
        self._login_url_template = login_url_template
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=connect_timeout)
        self._clock = clock
        self._wall_clock = wall_clock

    async def fetch(self, credentials: TenantCredentials) -> Token:
        """POST the client-credentials grant and turn the answer into a `Token`."""
        tenant, region = credentials.tenant, credentials.region
        url = self._login_url_template.format(domain=region) + "/oauth/token"
        pair = f"{credentials.client_id}:{credentials.client_secret}".encode()
        headers = {
            "Authorization": "Basic " + base64.b64encode(pair).decode("ascii"),
            "Accept": "application/json",
            # Explicit: the proxy's session skips aiohttp's automatic Content-Type.
            "Content-Type": "application/x-www-form-urlencoded",
        }
        # Stamp before sending: the token's life cannot have started earlier than this.
        obtained_at, obtained_wall = self._clock(), self._wall_clock()
        where = f"for tenant {tenant!r} (region {region})"
        try:
            async with self._session.post(
                url,
                data={"grant_type": "client_credentials"},
                headers=headers,
                timeout=self._timeout,
                # A redirect would carry the client's Basic credentials to another URL.
                allow_redirects=False,
                # raise_for_status errors carry the request headers, Basic credentials included.
                raise_for_status=False,
            ) as response:
                status = response.status
                retry_after = _parse_retry_after(response.headers.get("Retry-After"), obtained_wall)
                body = await response.read()
        except TimeoutError as exc:
            raise TokenUnavailable(
                f"The Genesys token endpoint {where} did not answer in time ({url_host(url)}).",
                tenant=tenant,
            ) from exc
        except aiohttp.ClientError as exc:
            raise TokenUnavailable(
                f"The Genesys token endpoint {where} could not be reached "
                f"({describe_client_error(exc, url_host(url))}).",
                tenant=tenant,
            ) from exc

        if status == 200:
            value, lifetime = _parse_token_answer(body)
            if value is None or lifetime is None:
                raise TokenUnavailable(
                    f"The Genesys token endpoint {where} sent a malformed token answer.",
                    tenant=tenant,
                )
            return Token(
                value=value,
                tenant=tenant,
                domain=region,
                lifetime=lifetime,
                obtained_at=obtained_at,
                obtained_wall=obtained_wall,
            )
        error = _oauth_error(body)
        if status in (400, 401, 403) and error in _REJECTED_CLIENT_ERRORS:
            raise GenesysAuthFailed(
                f"The Genesys token endpoint {where} rejected the OAuth client ({error}).",
                tenant=tenant,
            )
        if status == 429:
            raise TokenUnavailable(
                f"The Genesys token endpoint {where} is rate-limiting the OAuth client.",
                tenant=tenant,
                retry_after=retry_after,
            )
        detail = f"HTTP {status}, {error}" if error else f"HTTP {status}"
        raise TokenUnavailable(
            f"The Genesys token endpoint {where} failed ({detail}).",
            tenant=tenant,
            retry_after=retry_after if status >= 500 else None,
        )


def _parse_token_answer(body: bytes) -> tuple[str | None, float | None]:
    """Return (access_token, expires_in) from a 200 answer, None for whichever is unusable."""
    data = _json_object(body)
    if data is None:
        return None, None
    value = data.get("access_token")
    lifetime = data.get("expires_in")
    if not isinstance(value, str) or not value:
        value = None
    if (
        isinstance(lifetime, bool)
        or not isinstance(lifetime, int | float)
        or not math.isfinite(lifetime)
        or lifetime <= 0
    ):
        lifetime = None
    return value, None if lifetime is None else float(lifetime)


def _oauth_error(body: bytes) -> str | None:
    """The OAuth `error` code of an error answer, if it is one RFC 6749 defines."""
    data = _json_object(body)
    error = data.get("error") if data is not None else None
    # Echoed into messages and logs: anything else may be whatever a broken login service
    # put there (it once answered {"error": "<the client secret>"}), so it is never shown.
    return error if isinstance(error, str) and error in OAUTH_ERROR_CODES else None


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _parse_retry_after(value: str | None, now_wall: float) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or HTTP-date), None when absent or bad."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, binascii.Error):
            return None
        seconds = when.timestamp() - now_wall
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


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


@dataclass(slots=True, eq=False)
class _TenantEntry:
    """The manager's bookkeeping for one tenant."""

    token: Token | None = None
    # Until then `get` returns `token` without a second look: min(refresh due, usable until),
    # or a short floor after a failed background refresh. -inf when there is no token.
    fresh_until: float = -math.inf
    rejected: GenesysAuthFailed | None = None
    rejected_until: float = -math.inf
    failing: bool = False
    # Backoff after transient failures: no fetch starts before `retry_at`, and a request without
    # a usable token meanwhile gets `failure` again at once rather than waiting on a new fetch.
    failures: int = 0
    retry_at: float = -math.inf
    failure: ProxyError | None = None
    last_refresh: float | None = None
    last_error_code: str | None = None
    last_error_message: str | None = None
    fetches: int = 0


class TokenManager:
    """Caches one token per tenant, fetches it single-flight and refreshes it ahead of expiry."""

    def __init__(
        self,
        credentials: CredentialProvider,
        fetcher: TokenFetcher,
        *,
        refresh_at: float = 0.8,
        max_tenants: int = 10_000,
        rejected_ttl: float = 10.0,
        backoff_base: float = BACKOFF_BASE,
        backoff_cap: float = BACKOFF_CAP,
        clock: Clock = time.monotonic,
        observer: TokenObserver | None = None,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        if not 0.0 < refresh_at <= 1.0:
            raise ValueError(f"refresh_at must be in (0, 1], not {refresh_at}")
        if max_tenants < 1:
            raise ValueError(f"max_tenants must be at least 1, not {max_tenants}")
        if not 0.0 < backoff_base <= backoff_cap:
            raise ValueError(
                f"need 0 < backoff_base <= backoff_cap, not {backoff_base}, {backoff_cap}"
            )
        self._credentials = credentials
        self._fetcher = fetcher
        self._refresh_at = refresh_at
        self._max_tenants = max_tenants
        self._rejected_ttl = rejected_ttl
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._clock = clock
        self._observer = observer
        self._jitter = jitter
        # Least recently used first; tokens and all per-tenant bookkeeping share this one bound.
        self._entries: OrderedDict[str, _TenantEntry] = OrderedDict()
        self._flights: SingleFlight[str, Token] = SingleFlight("token-fetch")
        self._background: set[asyncio.Task[None]] = set()
        self._closed = False
        self._evictions = 0
        self.fetches = 0

    async def get(self, tenant: str) -> Token:
        """Return a valid token for `tenant`, fetching one if there is none."""
        entry = self._entries.get(tenant)
        if entry is not None:
            token = entry.token
            if token is not None and self._clock() < entry.fresh_until:
                self._entries.move_to_end(tenant)
                if self._observer is not None:
                    self._observer.cache_lookup(hit=True)
                return token
        return await self._get_slow(tenant, entry)

    async def _get_slow(self, tenant: str, entry: _TenantEntry | None) -> Token:
        now = self._clock()
        if entry is not None:
            self._entries.move_to_end(tenant)
            token = entry.token
            if token is not None and now < token.usable_until:
                self._refresh_in_background(tenant, entry, now)
                if self._observer is not None:
                    self._observer.cache_lookup(hit=True)
                return token
            if entry.rejected is not None and now < entry.rejected_until:
                # A fresh exception each time: re-raising one instance keeps growing its traceback.
                raise GenesysAuthFailed(entry.rejected.message, tenant=tenant)
            if entry.failure is not None and now < entry.retry_at:
                # Backing off: answer at once instead of piling requests onto a failing endpoint.
                raise _again(entry.failure, tenant, entry.retry_at - now)
        if self._observer is not None:
            self._observer.cache_lookup(hit=False)
        return await self._flights.do(tenant, functools.partial(self._fetch, tenant))

    async def refresh(self, tenant: str) -> Token:
        """Fetch a new token now, ignoring the cached one and a remembered rejection."""
        return await self._flights.do(tenant, functools.partial(self._fetch, tenant))

    def invalidate(self, tenant: str, token: Token | None = None) -> bool:
        """Drop the cached token; with `token`, only if it is still the cached one."""
        entry = self._entries.get(tenant)
        if entry is None or entry.token is None:
            return False
        if token is not None and entry.token is not token:
            return False
        entry.token = None
        entry.fresh_until = -math.inf
        log.info("cached token of tenant %s dropped", tenant, extra={"tenant": tenant})
        return True

    def evict(self, tenant: str) -> None:
        """Forget everything about `tenant`: token, rejection, counters."""
        # A fetch already under way finishes for its waiters but is not cached (see `_fetch`).
        self._evictions += 1
        self._entries.pop(tenant, None)

    def state(self, tenant: str) -> TenantTokenState | None:
        """The admin view of one tenant, or None if the manager knows nothing about it."""
        entry = self._entries.get(tenant)
        return None if entry is None else self._describe(tenant, entry, self._clock())

    def snapshot(self) -> list[TenantTokenState]:
        """The admin view of every known tenant, sorted by tenant id."""
        now = self._clock()
        return [self._describe(t, e, now) for t, e in sorted(self._entries.items())]

    async def close(self) -> None:
        """Cancel background refreshes and fetches under way, and wait for them to end."""
        self._closed = True
        background = list(self._background)
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await self._flights.close()

    def _refresh_in_background(self, tenant: str, entry: _TenantEntry, now: float) -> None:
        if self._closed or self._flights.in_flight(tenant):
            return
        if (entry.rejected is not None and now < entry.rejected_until) or now < entry.retry_at:
            return
        task = asyncio.create_task(self._background_refresh(tenant), name=f"token-refresh:{tenant}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _background_refresh(self, tenant: str) -> None:
        # `_fetch` has recorded and logged any failure; the current token stays in use meanwhile.
        with contextlib.suppress(Exception):
            await self._flights.do(tenant, functools.partial(self._fetch, tenant))

    def _refresh_retry_delay(self, tenant: str, exc: Exception, failures: int) -> float:
        """Seconds before the next fetch after `failures` consecutive failed ones."""
        # Full jitter spreads tenants that failed together (a login outage) over the window, so
        # they do not come back in lockstep; the floor keeps a tenant from retrying at once.
        ceiling = min(self._backoff_cap, self._backoff_base * 2.0 ** min(failures - 1, 32))
        delay = max(self._backoff_base, self._jitter() * ceiling)
        asked = exc.requested_retry_after if isinstance(exc, TokenUnavailable) else None
        if asked is not None:
            delay = max(delay, min(asked, RETRY_AFTER_CAP))
        return delay

    async def _fetch(self, tenant: str) -> Token:
        """One credential lookup and one token request; runs inside the single-flight task."""
        evictions = self._evictions
        entry = self._entries.get(tenant)
        try:
            credentials = await self._credentials.get(tenant)
        except Exception as exc:
            if entry is not None:
                self._fetch_failed(tenant, entry, exc)
            raise
        entry = self._entry_for(tenant)
        entry.fetches += 1
        self.fetches += 1
        try:
            token = await self._fetcher.fetch(credentials)
        except Exception as exc:
            if self._observer is not None:
                rejected = isinstance(exc, GenesysAuthFailed)
                self._observer.token_fetch(tenant, "rejected" if rejected else "error")
            self._fetch_failed(tenant, entry, exc)
            raise
        if self._observer is not None:
            self._observer.token_fetch(tenant, "success")
        # After an `evict` the caller still gets the token, but it is not cached.
        if self._evictions == evictions and self._entries.get(tenant) is entry:
            entry.token = token
            entry.fresh_until = min(token.refresh_due(self._refresh_at), token.usable_until)
        entry.rejected = None
        entry.rejected_until = -math.inf
        entry.failing = False
        entry.failures = 0
        entry.retry_at = -math.inf
        entry.failure = None
        entry.last_refresh = token.obtained_wall
        log.info(
            "token fetched for tenant %s (region %s, lifetime %.0fs)",
            tenant,
            token.domain,
            token.lifetime,
            extra={"tenant": tenant, "outcome": "success"},
        )
        return token

    def _fetch_failed(self, tenant: str, entry: _TenantEntry, exc: Exception) -> None:
        """Record a failed lookup or fetch, and hold off the next background refresh."""
        now = self._clock()
        entry.failing = True
        if isinstance(exc, ProxyError):
            entry.last_error_code, entry.last_error_message = exc.code, exc.message
        else:
            # Not a proxy error, so its text is unvetted: keep only the type name.
            entry.last_error_code = "internal_error"
            entry.last_error_message = f"Unexpected {type(exc).__name__} while fetching a token."
        outcome = "error"
        delay: float | None = None
        if isinstance(exc, GenesysAuthFailed):
            entry.rejected = exc
            entry.rejected_until = now + self._rejected_ttl
            outcome = "rejected"
        elif _transient(exc):
            # Set here, as the fetch fails, so no request slips in to start another one at once.
            entry.failures += 1
            delay = self._refresh_retry_delay(tenant, exc, entry.failures)
            entry.retry_at = now + delay
            entry.failure = exc if isinstance(exc, ProxyError) else None
            if isinstance(exc, TokenUnavailable | VaultUnavailable):
                exc.retry_after = delay  # the callers of this fetch learn when to come back
        unexpected = not isinstance(exc, ProxyError)
        extra = {"tenant": tenant, "outcome": outcome}
        retry = f"; next attempt in {delay:.1f}s" if delay is not None else ""
        token = entry.token
        if token is None or now >= token.usable_until:
            log.warning(
                "token fetch for tenant %s failed%s: %s",
                tenant,
                retry,
                entry.last_error_message,
                extra=extra,
                exc_info=unexpected,
            )
            return
        entry.fresh_until = min(now + (delay or BACKOFF_BASE), token.usable_until)
        log.warning(
            "token fetch for tenant %s failed, keeping the current token (%.0fs left)%s: %s",
            tenant,
            token.seconds_left(now),
            retry,
            entry.last_error_message,
            extra=extra,
            exc_info=unexpected,
        )

    def _entry_for(self, tenant: str) -> _TenantEntry:
        entry = self._entries.get(tenant)
        if entry is None:
            entry = self._entries[tenant] = _TenantEntry()
            if len(self._entries) > self._max_tenants:
                self._entries.popitem(last=False)
        return entry

    def _describe(self, tenant: str, entry: _TenantEntry, now: float) -> TenantTokenState:
        token = entry.token
        usable = token is not None and now < token.usable_until
        state: TokenStateName
        if self._flights.in_flight(tenant):
            state = "refreshing"
        elif entry.failing:
            state = "failing"
        else:
            state = "valid" if usable else "expired"
        return TenantTokenState(
            tenant=tenant,
            state=state,
            domain=token.domain if token is not None else None,
            seconds_left=token.seconds_left(now) if token is not None else 0.0,
            last_refresh=entry.last_refresh,
            last_error_code=entry.last_error_code,
            last_error_message=entry.last_error_message,
            fetches=entry.fetches,
            expires_at=token.obtained_wall + token.lifetime if token is not None else None,
        )


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
