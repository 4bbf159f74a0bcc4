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
VAULT_UP = "genesys_proxy_vault_up"
CONFIG_RELOADS = "genesys_proxy_config_reloads_total"


class TokenStates(Protocol):
    """What the scrape-time gauges read: the token manager's admin view."""

    def snapshot(self) -> list[TenantTokenState]: ...


@dataclass(slots=True)
class RateLimitBudget:
    """The last `inin-ratelimit-*` headers Genesys sent for a tenant."""

    remaining: int
    allowed: int
    resets_at: float  # monotonic; the full budget is back after it

    def remaining_at(self, now: float) -> int:
        return self.allowed if now >= self.resets_at else self.remaining


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
    ratelimit: RateLimitBudget | None = None


class Metrics:
    """The proxy's metrics; hot-path hooks use label children cached per tenant."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        tenant_label: bool = True,
        max_tenants: int = 10_000,
        uses_vault: bool = True,
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
        self.vault_requests = Counter(
            VAULT_REQUESTS,
            "Requests to Vault, by operation (login, read, lookup) and outcome.",
            ["operation", "outcome"],
            registry=registry,
        )
        # Set from the Vault session's findings (proxy.ops.health.Readiness), never by asking.
        # Absent with the file source: a 0 there would page someone about a Vault nobody uses.
        self.vault_up: Gauge | None = None
        if uses_vault:
            self.vault_up = Gauge(
                VAULT_UP,
                "1 while Vault answers the proxy, 0 while it is unavailable or not reached yet.",
                registry=registry,
            )
        self.config_reloads = Counter(
            CONFIG_RELOADS,
            "Config reloads (SIGHUP or a changed --config file), by outcome (success, error).",
            ["outcome"],
            registry=registry,
        )
        for outcome in ("success", "error"):
            self.config_reloads.labels(outcome)  # both series from the start, at 0
        self._inflight = 0
        self.inflight = Gauge(
            INFLIGHT, "Requests being handled on the proxy listener.", registry=registry
        )
        # Read at scrape time: the hot path only moves a plain integer.
        self.inflight.set_function(lambda: self._inflight)
        self._tokens: TokenStates | None = None
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

    def vault_state(self, up: bool) -> None:
        if self.vault_up is not None:
            self.vault_up.set(1 if up else 0)

    # -- hooks: the reloader (proxy.reload.Reloader) ---------------------------------------------

    def config_reload(self, outcome: str) -> None:
        self.config_reloads.labels(outcome).inc()

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
        """Time one upstream attempt and remember the rate-limit budget Genesys reported."""
        stats = self._stats_for(tenant)
        stats.durations.observe_upstream(seconds)
        allowed = _header_int(headers, "inin-ratelimit-allowed")
        count = _header_int(headers, "inin-ratelimit-count")
        if allowed is None or count is None or stats is self._unlabelled:
            return
        reset = _header_int(headers, "inin-ratelimit-reset")
        resets_at = math.inf if reset is None else self._clock() + reset
        stats.ratelimit = RateLimitBudget(max(0, allowed - count), allowed, resets_at)

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
        now = self._clock()
        budgets = {
            tenant: stats.ratelimit.remaining_at(now)
            for tenant, stats in self._tenants.items()
            if stats.ratelimit is not None
        }
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
        counters = (self.requests, self.token_fetches, self.upstream_retries)
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


def _header_int(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        return None
    return number if number >= 0 else None
