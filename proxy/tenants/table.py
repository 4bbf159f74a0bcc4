"""The tenant table: one `Tenant` object per tenant, one bound, one way out.

Everything the proxy knows about a tenant lives on its `Tenant`: the credential record and when
it was read, its tokens, the state of its token fetches and backoffs, its rate-limit budget, its
counters and histograms. The credential store (`proxy.tenants.credentials`) and the token manager
(`proxy.tenants.tokens`) are policies over this table; the admin page and the metrics read it.

    TenantTable
    ├── tenants   LRUCache[id, Tenant]   bounded by tenant.max_tenants; least recently used out
    └── unknown   TLRUCache[id, message] ids Vault has no record for, for credentials.negative_ttl

Evicting a tenant (admin Evict, the bound) removes its object, and with it all of the above,
metric series included. Work in flight keeps the object it started with and checks
`table.holds(tenant)` and `tenant.generation` before writing back, so it never touches another
tenant and never resurrects an evicted or changed one.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cachetools import Cache, LRUCache, TLRUCache

if TYPE_CHECKING:
    from proxy.errors import GenesysAuthFailed, ProxyError
    from proxy.ops.metrics import TenantStats
    from proxy.tenants.ratelimit import TenantBudget
    from proxy.tenants.record import TenantCredentials
    from proxy.tenants.tokens import Token

log = logging.getLogger("proxy.tenants.table")

Clock = Callable[[], float]
_NO_TOKENS: tuple[Token, ...] = ()


@dataclass(slots=True, eq=False)
class FetchTrouble:
    """A tenant's failed token fetches; only tenants that ever failed carry one."""

    rejected: GenesysAuthFailed | None = None
    rejected_until: float = -math.inf
    failing: bool = False
    # Backoff after transient failures: no fetch starts before `retry_at`, and a request without
    # a usable token meanwhile gets `failure` again at once rather than waiting on a new fetch.
    failures: int = 0
    retry_at: float = -math.inf
    failure: ProxyError | None = None
    last_error_code: str | None = None
    last_error_message: str | None = None


@dataclass(slots=True, eq=False)
class RefusalBackoff:
    """Fresh tokens refused with 401 (an endpoint that refuses, not a stale token)."""

    refusals: int = 0
    # No 401-driven refetch before this (monotonic).
    refetch_after: float = -math.inf
    # The fresh token last counted as refused: the concurrent replays of one storm count once.
    counted: Token | None = None


class Tenant:
    """Everything about one tenant. Mutated only by the policies, on the event loop's thread."""

    __slots__ = (
        "budget",
        "fetches",
        "fresh_until",
        "generation",
        "id",
        "keep_until",
        "last_refresh",
        "read_at",
        "record",
        "record_fresh_until",
        "refusal",
        "stats",
        "token_fresh_until",
        "tokens",
        "trouble",
    )

    def __init__(self, tenant_id: str) -> None:
        self.id = tenant_id
        # Bumped whenever the tenant's tokens are dropped (a changed record, a refused token):
        # a fetch that started before must not cache what it got.
        self.generation = 0
        # The credential record, the monotonic time it was read, until when it is used without
        # a re-read, and until when at all (stale-if-error). None: no usable record.
        self.record: TenantCredentials | None = None
        self.read_at = -math.inf
        self.record_fresh_until = -math.inf
        self.keep_until = -math.inf
        # The tenant's tokens: the first one is refreshed ahead; the rate-limit pool adds more,
        # up to genesys.rate_limit.tokens_per_tenant, and the budget picks among them.
        self.tokens: tuple[Token, ...] = _NO_TOKENS
        # Until then the first token is served without a second look: min(refresh due, usable
        # until), or a short floor after a failed background refresh. -inf: no token.
        self.token_fresh_until = -math.inf
        # min(token_fresh_until, record_fresh_until): the one comparison of the hot path.
        self.fresh_until = -math.inf
        self.last_refresh: float | None = None  # wall-clock time of the last token fetched
        self.fetches = 0
        self.trouble: FetchTrouble | None = None
        self.refusal: RefusalBackoff | None = None
        # Its tokens' rate-limit windows and held requests (proxy.tenants.ratelimit).
        self.budget: TenantBudget[Token] | None = None
        self.stats: TenantStats | None = None  # counters and histograms, made by the metrics

    def __repr__(self) -> str:
        return f"Tenant({self.id!r}, generation={self.generation}, tokens={len(self.tokens)})"

    @property
    def token(self) -> Token | None:
        """The token requests get today: the first of the tenant's tokens."""
        tokens = self.tokens
        return tokens[0] if tokens else None

    def set_tokens(self, tokens: tuple[Token, ...], fresh_until: float) -> None:
        self.tokens = tokens
        self.token_fresh_until = fresh_until if tokens else -math.inf
        self.fresh_until = min(self.token_fresh_until, self.record_fresh_until)

    def set_token_fresh_until(self, fresh_until: float) -> None:
        self.token_fresh_until = fresh_until
        self.fresh_until = min(fresh_until, self.record_fresh_until)

    def set_record(
        self,
        record: TenantCredentials | None,
        *,
        read_at: float,
        fresh_until: float,
        keep_until: float,
    ) -> None:
        self.record = record
        self.read_at = read_at
        self.set_record_fresh_until(fresh_until, keep_until)

    def set_record_fresh_until(self, fresh_until: float, keep_until: float) -> None:
        self.record_fresh_until = fresh_until
        self.keep_until = keep_until
        self.fresh_until = min(self.token_fresh_until, fresh_until)

    def drop_tokens(self) -> tuple[Token, ...]:
        """Forget the tenant's tokens (returned, e.g. to revoke them); fetches under way too."""
        dropped = self.tokens
        self.generation += 1
        self.set_tokens(_NO_TOKENS, -math.inf)
        return dropped


class ReadWatch:
    """Set while a first read of a tenant's record is under way: was the tenant evicted?"""

    __slots__ = ("evicted",)

    def __init__(self) -> None:
        self.evicted = False


class _Tenants(LRUCache[str, Tenant]):
    """The bounded map; what falls off its end is logged (the tenant is simply gone)."""

    def popitem(self) -> tuple[str, Tenant]:
        tenant_id, tenant = super().popitem()
        log.info(
            "tenant %s dropped from the table (tenant.max_tenants reached)",
            tenant_id,
            extra={"tenant": tenant_id},
        )
        return tenant_id, tenant


class TenantTable:
    """The one owner of per-tenant state; see the module docstring."""

    def __init__(
        self,
        max_tenants: int = 10_000,
        *,
        negative_ttl: float = 30.0,
        clock: Clock = time.monotonic,
    ) -> None:
        if max_tenants < 1:
            raise ValueError(f"max_tenants must be at least 1, not {max_tenants}")
        self.max_tenants = max_tenants
        self.clock = clock
        self._tenants = _Tenants(maxsize=max_tenants)
        self._negative_ttl = negative_ttl
        self._unknown: TLRUCache[str, str] = TLRUCache(
            maxsize=max_tenants, ttu=self._unknown_until, timer=clock
        )
        # Ids whose record is being read with no object yet: an eviction meanwhile must keep
        # that read from caching what it got, without touching anyone else's read.
        self._watches: dict[str, ReadWatch] = {}

    def __len__(self) -> int:
        return len(self._tenants)

    def __iter__(self) -> Iterator[Tenant]:
        """The tenants, least recently used first (a copy: safe to evict while iterating)."""
        return iter(self._all())

    def __contains__(self, tenant_id: object) -> bool:
        return tenant_id in self._tenants

    def get(self, tenant_id: str) -> Tenant | None:
        """The tenant's object, marked as just used; None if the table has none."""
        return self._tenants.get(tenant_id)

    def peek(self, tenant_id: str) -> Tenant | None:
        """The tenant's object without marking it used (metrics, the admin page)."""
        try:
            # Cache.__getitem__ reads without touching the order (LRUCache's own moves it).
            tenant: Tenant = Cache.__getitem__(self._tenants, tenant_id)
        except KeyError:
            return None
        return tenant

    def admit(self, tenant_id: str) -> Tenant:
        """The tenant's object, created (and the least recently used one evicted) if needed."""
        tenant = self.get(tenant_id)
        if tenant is None:
            tenant = self._tenants[tenant_id] = Tenant(tenant_id)
            self._unknown.pop(tenant_id, None)
        return tenant

    def holds(self, tenant: Tenant) -> bool:
        """Whether `tenant` is still the table's object for its id (not evicted meanwhile)."""
        return self.peek(tenant.id) is tenant

    def evict(self, tenant_id: str) -> bool:
        """Remove everything about the tenant; False if the table held nothing about it."""
        tenant = self._tenants.pop(tenant_id, None)
        known = self._unknown.pop(tenant_id, None) is not None
        if tenant is not None:
            tenant.generation += 1  # work in flight for it must not write back
        watch = self._watches.get(tenant_id)
        if watch is not None:
            watch.evicted = known = True
        return tenant is not None or known

    def watch(self, tenant_id: str) -> ReadWatch:
        """Start watching `tenant_id` for evictions during a read (one read per id at a time)."""
        watch = self._watches[tenant_id] = ReadWatch()
        return watch

    def unwatch(self, tenant_id: str, watch: ReadWatch) -> None:
        if self._watches.get(tenant_id) is watch:
            del self._watches[tenant_id]

    def tenants(self) -> list[Tenant]:
        """Every tenant, sorted by id."""
        return sorted(self._all(), key=_by_id)

    # -- ids Vault has no record for ---------------------------------------------------------------

    def remember_unknown(self, tenant_id: str, message: str) -> None:
        self._unknown[tenant_id] = message

    def unknown(self, tenant_id: str) -> str | None:
        """Why the tenant is known to have no record, while that is remembered; else None."""
        return self._unknown.get(tenant_id)

    def forget_unknown(self, tenant_id: str) -> None:
        self._unknown.pop(tenant_id, None)

    def unknown_count(self) -> int:
        return len(self._unknown)

    def reconfigure(self, *, negative_ttl: float) -> None:
        """Apply a new negative ttl to ids remembered from now on."""
        self._negative_ttl = negative_ttl

    def _all(self) -> list[Tenant]:
        # Not .values(): that reads through LRUCache.__getitem__, marking every tenant used.
        tenants = self._tenants
        return [Cache.__getitem__(tenants, tenant_id) for tenant_id in list(tenants)]

    def _unknown_until(self, _key: str, _value: str, now: float) -> float:
        return now + self._negative_ttl


def _by_id(tenant: Tenant) -> str:
    return tenant.id
