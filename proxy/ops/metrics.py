"""Prometheus metrics: the contract's `genesys_proxy_*` series, on an injected registry.

`Metrics` is the only place that names them. The proxy reports into it through small hooks
(token cache lookups and fetches, Vault requests, upstream answers, finished requests); the
per-tenant gauges (token expiry, rate-limit budget) are computed when Prometheus scrapes, so an
evicted tenant's gauge goes away with it. The per-tenant counters and histograms are plain
numbers (`TenantStats`, `DurationHistograms`) exposed at scrape time too: prometheus_client
keeps a value object with its own lock per series and per bucket, which came to 11 KB per tenant.
The event loop's thread is the only one that counts and scrapes, so they need no locks.

A tenant's own counters and histograms live on its `Tenant` in the tenant table
(`proxy.tenants.table`), and are read from there at scrape time: evicting the tenant removes its
series. Label cardinality is the table's bound: a tenant gets its own label value only while the
table holds it (its credential record was found); every other request counts under tenant "-".
`tenant_label=False` (config `metrics.tenant_label: false`) drops the tenant label altogether,
for very large fleets; the per-tenant gauges then report the most urgent tenant (earliest
expiry, smallest budget).
"""

from __future__ import annotations

import math
import time
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, cast

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from proxy.tenants.table import Tenant, TenantTable

if TYPE_CHECKING:
    from proxy.tenants.credentials import CredentialChange
    from proxy.tenants.tokens import FetchOutcome

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
CREDENTIAL_CHANGES = "genesys_proxy_credential_changes_total"
RATELIMIT_HELD = "genesys_proxy_ratelimit_held_total"
RATELIMIT_REJECTED = "genesys_proxy_ratelimit_rejected_total"
UPSTREAM_429 = "genesys_proxy_upstream_429_total"

# The labelled counters kept per tenant, by the first element of their keys in TenantStats.counts.
_REQUESTS, _FETCHES, _RETRIES, _CHANGES = "requests", "fetches", "retries", "changes"
_HELD, _REJECTED, _429 = "held", "rejected", "upstream_429"
_COUNTERS = {
    _REQUESTS: (
        REQUESTS,
        "Requests answered on the proxy listener, by final status.",
        ("method", "status"),
    ),
    _FETCHES: (FETCHES, "Token requests to the Genesys login service, by outcome.", ("outcome",)),
    _RETRIES: (
        UPSTREAM_RETRIES,
        "Requests sent to Genesys Cloud again, by reason (unauthorized: a refused token).",
        ("reason",),
    ),
    _CHANGES: (
        CREDENTIAL_CHANGES,
        "Credential records a re-read found changed (rotated), gone (removed), denied (forbidden).",
        ("change",),
    ),
    _HELD: (
        RATELIMIT_HELD,
        "Requests held for Genesys rate-limit budget, by reason (budget: the tokens' windows; "
        "retry_after: an upstream 429's Retry-After).",
        ("reason",),
    ),
    _REJECTED: (
        RATELIMIT_REJECTED,
        "Requests answered 429 rate_limited by the proxy, never sent to Genesys.",
        (),
    ),
    _429: (
        UPSTREAM_429,
        "429 answers from Genesys, by outcome (retried: waited out and replayed; passed: given "
        "to the app).",
        ("outcome",),
    ),
}
# One shared key tuple per distinct key: tens of thousands of tenants hold the same few.
_KEYS: dict[tuple[str, ...], tuple[str, ...]] = {}


def _key(*parts: str) -> tuple[str, ...]:
    key = _KEYS.get(parts)
    if key is None:
        key = _KEYS[parts] = parts
    return key


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


class TenantStats:
    """One tenant's counts: for the admin page, and its series of the labelled metrics."""

    __slots__ = ("counts", "durations", "errors", "label", "requests")

    def __init__(self, label: str, durations: DurationHistograms) -> None:
        self.label = label
        self.durations = durations
        self.requests = 0
        self.errors = 0
        # (counter, *label values) -> count; ints, since up to 256 they are shared objects.
        self.counts: dict[tuple[str, ...], int] = {}

    def inc(self, key: tuple[str, ...]) -> None:
        counts = self.counts
        counts[key] = counts.get(key, 0) + 1


class Metrics:
    """The proxy's metrics: hooks for the hot path, families built from the table at scrape time."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        table: TenantTable | None = None,
        tenant_label: bool = True,
        max_tenants: int = 10_000,
        uses_vault: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.table = table if table is not None else TenantTable(max_tenants)
        self.tenant_label = tenant_label
        self._clock = clock
        self.token_cache = Counter(
            CACHE_LOOKUPS,
            "Token cache lookups: hit (a valid token) or miss (a fetch was needed).",
            ["result"],
            registry=registry,
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
        registry.register(_ScrapeTimeGauges(self))

        self._cache_hit = self.token_cache.labels("hit")
        self._cache_miss = self.token_cache.labels("miss")
        # Requests of no (known) tenant; without the tenant label, every tenant's series.
        self._unlabelled = TenantStats(NO_TENANT, DurationHistograms())
        self._vault_children: dict[tuple[str, str], Counter] = {}

    # -- hooks: the token manager and the credential store ---------------------------------------

    def cache_lookup(self, *, hit: bool) -> None:
        (self._cache_hit if hit else self._cache_miss).inc()

    def token_fetch(self, tenant: Tenant, outcome: FetchOutcome) -> None:
        self._series(self._stats_of(tenant)).inc(_key(_FETCHES, outcome))

    def credential_changed(self, tenant: Tenant, change: CredentialChange) -> None:
        self._series(self._stats_of(tenant)).inc(_key(_CHANGES, change))

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
        series = self._series(stats)
        series.inc(_key(_REQUESTS, method, _status_text(status)))
        series.durations.observe_request(seconds)

    def upstream_answered(self, tenant: str, headers: Mapping[str, str], seconds: float) -> None:
        """Time one upstream attempt (its rate-limit headers are the limiter's business)."""
        self._series(self._stats_for(tenant)).durations.observe_upstream(seconds)

    def upstream_retry(self, tenant: str, reason: str) -> None:
        self._series(self._stats_for(tenant)).inc(_key(_RETRIES, reason))

    # -- hooks: the rate limiter (proxy.tenants.ratelimit.RateLimitObserver) ----------------------

    def ratelimit_held(self, tenant: str, reason: str) -> None:
        self._series(self._stats_for(tenant)).inc(_key(_HELD, reason))

    def ratelimit_rejected(self, tenant: str) -> None:
        self._series(self._stats_for(tenant)).inc(_key(_REJECTED))

    def upstream_429(self, tenant: str, outcome: str) -> None:
        self._series(self._stats_for(tenant)).inc(_key(_429, outcome))

    # -- reading ---------------------------------------------------------------------------------

    def tenant_stats(self, tenant: str) -> TenantStats | None:
        """The tenant's counts, while the table holds the tenant."""
        found = self.table.peek(tenant)
        return None if found is None else found.stats

    # -- internals -------------------------------------------------------------------------------

    def _stats_for(self, tenant: str | None) -> TenantStats:
        found = self.table.peek(tenant) if tenant is not None else None
        return self._unlabelled if found is None else self._stats_of(found)

    def _stats_of(self, tenant: Tenant) -> TenantStats:
        stats = tenant.stats
        if stats is None:
            # Without the tenant label, the tenant's series are the shared unlabelled ones.
            durations = DurationHistograms() if self.tenant_label else self._unlabelled.durations
            stats = tenant.stats = TenantStats(tenant.id, durations)
        return stats

    def _series(self, stats: TenantStats) -> TenantStats:
        """Where `stats`' labelled series are counted: its own, or all tenants' together."""
        return stats if self.tenant_label else self._unlabelled

    def _labelled(self) -> list[TenantStats]:
        if not self.tenant_label:
            return [self._unlabelled]
        labelled = [self._unlabelled]
        labelled.extend(tenant.stats for tenant in self.table if tenant.stats is not None)
        return labelled

    def _scrape_gauges(self) -> Iterable[Metric]:
        labels = ["tenant"] if self.tenant_label else []
        expiry = GaugeMetricFamily(
            EXPIRY,
            "Unix time at which the cached token of a tenant expires (Genesys' expires_in).",
            labels=labels,
        )
        budget = GaugeMetricFamily(
            RATELIMIT_REMAINING,
            "API requests left in the current Genesys rate-limit windows of the tenant's tokens.",
            labels=labels,
        )
        expiries: dict[str, float] = {}
        budgets: dict[str, int] = {}
        for tenant in self.table:
            token = tenant.token
            if token is not None:
                expiries[tenant.id] = token.obtained_wall + token.lifetime
            if tenant.budget is not None and (left := tenant.budget.remaining()) is not None:
                budgets[tenant.id] = left
        if self.tenant_label:
            for tenant_id, value in expiries.items():
                expiry.add_metric([tenant_id], value)
            for tenant_id, remaining in budgets.items():
                budget.add_metric([tenant_id], remaining)
        else:
            # One series each: the tenant that needs attention first.
            if expiries:
                expiry.add_metric([], min(expiries.values()))
            if budgets:
                budget.add_metric([], min(budgets.values()))
        labelled = self._labelled()
        return [
            expiry,
            budget,
            *self._scrape_counters(labelled),
            *self._scrape_histograms(labelled),
        ]

    def _scrape_counters(self, labelled: list[TenantStats]) -> Iterable[Metric]:
        tenant = ["tenant"] if self.tenant_label else []
        families = {
            kind: CounterMetricFamily(name, documentation, labels=[*tenant, *names])
            for kind, (name, documentation, names) in _COUNTERS.items()
        }
        for stats in labelled:
            prefix = [stats.label] if self.tenant_label else []
            for key, value in stats.counts.items():
                families[key[0]].add_metric([*prefix, *key[1:]], float(value))
        return list(families.values())

    def _scrape_histograms(self, labelled: list[TenantStats]) -> Iterable[Metric]:
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
        for entry in labelled:
            labels = [entry.label] if self.tenant_label else []
            durations = entry.durations
            request.add_metric(labels, durations.request_buckets(), durations.request_total)
            upstream.add_metric(labels, durations.upstream_buckets(), durations.upstream_total)
        return [request, upstream]


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
            CounterMetricFamily(CREDENTIAL_CHANGES, ""),
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
