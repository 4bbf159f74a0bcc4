"""Prometheus metrics: the contract's `genesys_proxy_*` series, on an injected registry.

`Metrics` is the only place that names them. The proxy reports into it through small hooks
(token cache lookups and fetches, Vault requests, upstream answers, finished requests); the
per-tenant gauges (token expiry, rate-limit budget) are computed when Prometheus scrapes, so an
evicted tenant's gauge goes away with it. The per-tenant counters and histograms are plain
numbers (`LabelledCounts`, `DurationHistograms`) exposed at scrape time too: prometheus_client
keeps a value object with its own lock per series and per bucket, which came to 11 KB per tenant.
The event loop's thread is the only one that counts and scrapes, so they need no locks.

Label cardinality stays bounded: a tenant gets its own label value only once its credential
record was found (the proxy asked Genesys for a token with it), and only for `max_tenants`
tenants; every other request counts under the tenant "-". `tenant_label=False` (config
`metrics.tenant_label: false`) drops the tenant label altogether, for very large fleets; the
per-tenant gauges then report the most urgent tenant (earliest expiry, smallest budget).
"""

from __future__ import annotations

import math
import time
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, cast

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from proxy.tenants.tokens import FetchOutcome, TenantTokenState

NO_TENANT = "-"
# Methods outside this set count as "other": the method label must not be client-controlled.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "other"
# From sub-millisecond cache hits to Genesys' slowest endpoints (the default timeout is 30 s).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BOUNDS = (*DURATION_BUCKETS, math.inf)
_BUCKET_COUNT = len(_BOUNDS)
# The `le` values prometheus_client's own Histogram writes ("0.005", "1.0", "+Inf").
_BUCKET_NAMES = tuple(cast(Callable[[float], str], floatToGoString)(b) for b in _BOUNDS)

REQUESTS = "genesys_proxy_requests_total"
REQUEST_DURATION = "genesys_proxy_request_duration_seconds"
UPSTREAM_DURATION = "genesys_proxy_upstream_duration_seconds"
FETCHES = "genesys_proxy_token_fetches_total"
CACHE_LOOKUPS = "genesys_proxy_token_cache_total"
EXPIRY = "genesys_proxy_token_expiry_timestamp_seconds"
UPSTREAM_RETRIES = "genesys_proxy_upstream_retries_total"
VAULT_REQUESTS = "genesys_proxy_vault_requests_total"
INFLIGHT = "genesys_proxy_inflight_requests"
RATELIMIT_REMAINING = "genesys_proxy_ratelimit_remaining"
RATELIMIT_HELD = "genesys_proxy_ratelimit_held_total"
RATELIMIT_REJECTED = "genesys_proxy_ratelimit_rejected_total"
UPSTREAM_429 = "genesys_proxy_upstream_429_total"


class TokenStates(Protocol):
    """What the scrape-time gauges read: the token manager's admin view."""

    def snapshot(self) -> list[TenantTokenState]: ...


class RateLimitStates(Protocol):
    """What the budget gauge reads: each tenant's requests left, over all its tokens."""

    def remaining(self) -> dict[str, int]: ...


class LabelledCounts:
    """A counter's values by label values, exposed as one counter family."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = list(labels)
        # Ints: up to 256 they are CPython's shared small ints, where a float is 24 bytes each.
        self.counts: dict[tuple[str, ...], int] = {}

    def inc(self, key: tuple[str, ...]) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    def family(self) -> CounterMetricFamily:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        for key, value in self.counts.items():
            family.add_metric(key, float(value))
        return family


class DurationHistograms:
    """One tenant's series of both duration histograms: counts per bucket and their sums.

    Both histograms' counts share one array of machine integers (request buckets first): a list
    per histogram and an object around each cost about 200 bytes more per tenant.
    """

    __slots__ = ("counts", "request_total", "upstream_total")

    def __init__(self) -> None:
        # Per bucket, not cumulative: one addition per observation.
        self.counts = array("Q", bytes(2 * _BUCKET_COUNT * 8))
        self.request_total = 0.0
        self.upstream_total = 0.0

    # Only the event loop's thread observes and scrapes: no lock needed.
    def observe_request(self, seconds: float) -> None:
        self.counts[bisect_left(_BOUNDS, seconds)] += 1
        self.request_total += seconds

    def observe_upstream(self, seconds: float) -> None:
        self.counts[_BUCKET_COUNT + bisect_left(_BOUNDS, seconds)] += 1
        self.upstream_total += seconds

    def request_buckets(self) -> list[tuple[str, float]]:
        """The request histogram's cumulative counts by `le`, as the exposition format wants."""
        return self._cumulative(0)

    def upstream_buckets(self) -> list[tuple[str, float]]:
        """The upstream histogram's cumulative counts by `le`."""
        return self._cumulative(_BUCKET_COUNT)

    def _cumulative(self, start: int) -> list[tuple[str, float]]:
        running, cumulative = 0, []
        counts = self.counts[start : start + _BUCKET_COUNT]
        for name, count in zip(_BUCKET_NAMES, counts, strict=True):
            running += count
            cumulative.append((name, float(running)))
        return cumulative


@dataclass(slots=True, eq=False)
class TenantStats:
    """One labelled tenant: request counts for the admin page, its duration histograms."""

    label: str
    durations: DurationHistograms
    requests: int = 0
    errors: int = 0


class Metrics:
    """The proxy's metrics; hot-path hooks use label children cached per tenant."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        tenant_label: bool = True,
        max_tenants: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.tenant_label = tenant_label
        self._max_tenants = max_tenants
        self._clock = clock
        tenant: tuple[str, ...] = ("tenant",) if tenant_label else ()
        self.requests = LabelledCounts(
            REQUESTS,
            "Requests answered on the proxy listener, by final status.",
            [*tenant, "method", "status"],
        )
        # Without the tenant label, every tenant observes into these.
        self._durations = DurationHistograms()
        self.token_fetches = LabelledCounts(
            FETCHES,
            "Token requests to the Genesys login service, by outcome.",
            [*tenant, "outcome"],
        )
        self.token_cache = Counter(
            CACHE_LOOKUPS,
            "Token cache lookups: hit (a valid token) or miss (a fetch was needed).",
            ["result"],
            registry=registry,
        )
        self.upstream_retries = LabelledCounts(
            UPSTREAM_RETRIES,
            "Requests sent to Genesys Cloud again, by reason (unauthorized: a refused token).",
            [*tenant, "reason"],
        )
        self.ratelimit_held_counts = LabelledCounts(
            RATELIMIT_HELD,
            "Requests held for Genesys rate-limit budget, by reason (budget: the tokens' windows; "
            "retry_after: an upstream 429's Retry-After).",
            [*tenant, "reason"],
        )
        self.ratelimit_rejected_counts = LabelledCounts(
            RATELIMIT_REJECTED,
            "Requests answered 429 rate_limited by the proxy, never sent to Genesys.",
            tenant,
        )
        self.upstream_429_counts = LabelledCounts(
            UPSTREAM_429,
            "429 answers from Genesys, by outcome (retried: waited out and replayed; passed: "
            "given to the app).",
            [*tenant, "outcome"],
        )
        self.vault_requests = Counter(
            VAULT_REQUESTS,
            "Requests to Vault, by operation (login, read, lookup) and outcome.",
            ["operation", "outcome"],
            registry=registry,
        )
        self._inflight = 0
        self.inflight = Gauge(
            INFLIGHT, "Requests being handled on the proxy listener.", registry=registry
        )
        # Read at scrape time: the hot path only moves a plain integer.
        self.inflight.set_function(lambda: self._inflight)
        self._tokens: TokenStates | None = None
        self._ratelimit: RateLimitStates | None = None
        registry.register(_ScrapeTimeGauges(self))

        self._cache_hit = self.token_cache.labels("hit")
        self._cache_miss = self.token_cache.labels("miss")
        self._tenants: dict[str, TenantStats] = {}
        self._unlabelled = self._new_stats(NO_TENANT)
        self._vault_children: dict[tuple[str, str], Counter] = {}

    # -- wiring ----------------------------------------------------------------------------------

    def track_tokens(self, tokens: TokenStates | None) -> None:
        """Read token expiries from `tokens` at scrape time (None: stop)."""
        self._tokens = tokens

    def track_ratelimit(self, budgets: RateLimitStates | None) -> None:
        """Read the tenants' rate-limit budgets from `budgets` at scrape time (None: stop)."""
        self._ratelimit = budgets

    # -- hooks: the rate limiter (proxy.tenants.ratelimit.RateLimitObserver) ----------------------

    def ratelimit_held(self, tenant: str, reason: str) -> None:
        self.ratelimit_held_counts.inc(self._labels(self._stats_for(tenant).label, reason))

    def ratelimit_rejected(self, tenant: str) -> None:
        self.ratelimit_rejected_counts.inc(self._labels(self._stats_for(tenant).label))

    def upstream_429(self, tenant: str, outcome: str) -> None:
        self.upstream_429_counts.inc(self._labels(self._stats_for(tenant).label, outcome))

    # -- hooks: the token manager (proxy.tenants.tokens.TokenObserver) ----------------------------

    def cache_lookup(self, *, hit: bool) -> None:
        (self._cache_hit if hit else self._cache_miss).inc()

    def token_fetch(self, tenant: str, outcome: FetchOutcome) -> None:
        # Called only once the tenant's credential record was found: the tenant exists.
        stats = self._stats_for(tenant, create=True)
        self.token_fetches.inc(self._labels(stats.label, outcome))

    # -- hooks: Vault (proxy.vault.RequestObserver) ----------------------------------------------

    def vault_request(self, operation: str, outcome: str) -> None:
        key = (operation, outcome)
        child = self._vault_children.get(key)
        if child is None:
            child = self._vault_children[key] = self.vault_requests.labels(*key)
        child.inc()

    # -- hooks: requests and their upstream answers ----------------------------------------------

    def request_started(self) -> None:
        self._inflight += 1

    def request_finished(
        self, tenant: str | None, method: str, status: int, seconds: float, *, failed: bool
    ) -> None:
        """Count a finished request; `failed`: a proxy error or a 5xx, for the admin page."""
        self._inflight -= 1
        stats = self._stats_for(tenant)
        stats.requests += 1
        stats.errors += failed
        if method not in KNOWN_METHODS:
            method = OTHER_METHOD
        self.requests.inc(self._labels(stats.label, method, _status_text(status)))
        stats.durations.observe_request(seconds)

    def upstream_answered(self, tenant: str, headers: Mapping[str, str], seconds: float) -> None:
        """Time one upstream attempt (its rate-limit headers are the limiter's business)."""
        self._stats_for(tenant).durations.observe_upstream(seconds)

    def upstream_retry(self, tenant: str, reason: str) -> None:
        self.upstream_retries.inc(self._labels(self._stats_for(tenant).label, reason))

    # -- reading ---------------------------------------------------------------------------------

    def tenant_stats(self, tenant: str) -> TenantStats | None:
        """The tenant's counts, if it is one of the labelled (existing) tenants."""
        return self._tenants.get(tenant)

    # -- internals -------------------------------------------------------------------------------

    def _stats_for(self, tenant: str | None, *, create: bool = False) -> TenantStats:
        if tenant is None:
            return self._unlabelled
        stats = self._tenants.get(tenant)
        if stats is not None:
            return stats
        if not create or len(self._tenants) >= self._max_tenants:
            return self._unlabelled
        stats = self._tenants[tenant] = self._new_stats(tenant)
        return stats

    def _new_stats(self, tenant: str) -> TenantStats:
        if not self.tenant_label:
            return TenantStats(NO_TENANT, self._durations)
        return TenantStats(tenant, DurationHistograms())

    def _labels(self, tenant_label: str, *values: str) -> tuple[str, ...]:
        return (tenant_label, *values) if self.tenant_label else values

    def _scrape_gauges(self) -> Iterable[Metric]:
        labels = ["tenant"] if self.tenant_label else []
        expiry = GaugeMetricFamily(
            EXPIRY,
            "Unix time at which the cached token of a tenant expires (Genesys' expires_in).",
            labels=labels,
        )
        budget = GaugeMetricFamily(
            RATELIMIT_REMAINING,
            "API requests left in the tenant's current Genesys rate-limit window.",
            labels=labels,
        )
        expiries = self._expiries()
        budgets = self._budgets()
        if self.tenant_label:
            for tenant, value in expiries.items():
                expiry.add_metric([tenant], value)
            for tenant, remaining in budgets.items():
                budget.add_metric([tenant], remaining)
        else:
            # One series each: the tenant that needs attention first.
            if expiries:
                expiry.add_metric([], min(expiries.values()))
            if budgets:
                budget.add_metric([], min(budgets.values()))
        counters = (
            self.requests,
            self.token_fetches,
            self.upstream_retries,
            self.ratelimit_held_counts,
            self.ratelimit_rejected_counts,
            self.upstream_429_counts,
        )
        return [expiry, budget, *(c.family() for c in counters), *self._scrape_histograms()]

    def _scrape_histograms(self) -> Iterable[Metric]:
        request = HistogramMetricFamily(
            REQUEST_DURATION,
            "Time from receiving a request to the last byte of its answer.",
            labels=["tenant"] if self.tenant_label else None,
        )
        upstream = HistogramMetricFamily(
            UPSTREAM_DURATION,
            "Time from sending a request to Genesys Cloud to its response headers, per attempt.",
            labels=["tenant"] if self.tenant_label else None,
        )
        if not self.tenant_label:
            stats = [self._unlabelled]  # every tenant shares its histograms
        else:
            stats = [self._unlabelled, *self._tenants.values()]
        for entry in stats:
            labels = [entry.label] if self.tenant_label else []
            durations = entry.durations
            request.add_metric(labels, durations.request_buckets(), durations.request_total)
            upstream.add_metric(labels, durations.upstream_buckets(), durations.upstream_total)
        return [request, upstream]

    def _budgets(self) -> dict[str, int]:
        if self._ratelimit is None:
            return {}
        tenants = self._tenants
        return {t: left for t, left in self._ratelimit.remaining().items() if t in tenants}

    def _expiries(self) -> dict[str, float]:
        if self._tokens is None:
            return {}
        return {
            state.tenant: state.expires_at
            for state in self._tokens.snapshot()
            if state.expires_at is not None and state.tenant in self._tenants
        }


class _ScrapeTimeGauges:
    """The registry's view of the gauges and histograms computed at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterable[Metric]:
        # Names only, so the registry can refuse a duplicate; no snapshot at registration.
        return [
            GaugeMetricFamily(EXPIRY, ""),
            GaugeMetricFamily(RATELIMIT_REMAINING, ""),
            CounterMetricFamily(REQUESTS, ""),
            CounterMetricFamily(FETCHES, ""),
            CounterMetricFamily(UPSTREAM_RETRIES, ""),
            CounterMetricFamily(RATELIMIT_HELD, ""),
            CounterMetricFamily(RATELIMIT_REJECTED, ""),
            CounterMetricFamily(UPSTREAM_429, ""),
            HistogramMetricFamily(REQUEST_DURATION, ""),
            HistogramMetricFamily(UPSTREAM_DURATION, ""),
        ]

    def collect(self) -> Iterable[Metric]:
        return self._metrics._scrape_gauges()


# One shared string per status code, rather than a new one in every tenant's label set.
_STATUS_TEXT = {status: str(status) for status in range(100, 600)}


def _status_text(status: int) -> str:
    text = _STATUS_TEXT.get(status)
    return str(status) if text is None else text
