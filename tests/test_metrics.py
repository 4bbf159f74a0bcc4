"""The contract's metrics, scraped from the admin listener after real traffic."""

from __future__ import annotations

import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Histogram

from proxy.ops.metrics import DURATION_BUCKETS, DurationHistograms, Metrics
from proxy.tenants.ratelimit import RateLimiter
from tests.conftest import FakeClock, ProxyHarness
from tests.scrape import scrape

# The contract's table: name -> (type, label names).
CONTRACT = {
    "genesys_proxy_requests": ("counter", {"tenant", "method", "status"}),
    "genesys_proxy_request_duration_seconds": ("histogram", {"tenant"}),
    "genesys_proxy_upstream_duration_seconds": ("histogram", {"tenant"}),
    "genesys_proxy_token_fetches": ("counter", {"tenant", "outcome"}),
    "genesys_proxy_token_cache": ("counter", {"result"}),
    "genesys_proxy_token_expiry_timestamp_seconds": ("gauge", {"tenant"}),
    "genesys_proxy_upstream_retries": ("counter", {"tenant", "reason"}),
    "genesys_proxy_vault_requests": ("counter", {"operation", "outcome"}),
    "genesys_proxy_inflight_requests": ("gauge", set()),
    "genesys_proxy_ratelimit_remaining": ("gauge", {"tenant"}),
    "genesys_proxy_config_reloads": ("counter", {"outcome"}),
}


async def test_metrics_after_traffic_for_a_healthy_and_a_rejected_tenant(
    harness: ProxyHarness,
) -> None:
    good = harness.add_tenant("good")
    bad = harness.add_tenant("bad", vault_secret="fake-wrong-secret-3141")
    await harness.start()
    client = harness.client
    for _ in range(3):
        response = await client.get("/api/v2/users", headers={"X-Tenant-ID": good.id})
        assert response.status == 200
    # A revoked token: the proxy drops it, fetches another and replays (an upstream retry).
    harness.sim.revoke_tokens(good.client_id)
    last = await client.get("/api/v2/users", headers={"X-Tenant-ID": good.id})
    assert last.status == 200
    response = await client.get("/api/v2/users", headers={"X-Tenant-ID": bad.id})
    assert response.headers["X-Proxy-Error"] == "genesys_auth_failed"
    response = await client.get("/api/v2/users", headers={"X-Tenant-ID": f"{harness.prefix}nobody"})
    assert response.headers["X-Proxy-Error"] == "unknown_tenant"

    metrics = await scrape(harness)

    for name, (kind, labels) in CONTRACT.items():
        family = metrics.families.get(name)
        assert family is not None, f"{name} is missing from /metrics"
        assert family.type == kind, name
        assert family.samples, f"{name} has no samples"
        for sample in family.samples:
            extra = {"le"} if sample.name.endswith("_bucket") else set()
            assert set(sample.labels) == labels | extra, sample
    value = metrics.value
    # Requests by tenant and status; the unknown tenant counts under "-".
    assert value("genesys_proxy_requests_total", tenant=good.id, method="GET", status="200") == 4
    assert value("genesys_proxy_requests_total", tenant=bad.id, method="GET", status="502") == 1
    assert value("genesys_proxy_requests_total", tenant="-", method="GET", status="404") == 1
    assert value("genesys_proxy_request_duration_seconds_count", tenant=good.id) == 4
    # Four answers plus the refused attempt that was replayed.
    assert value("genesys_proxy_upstream_duration_seconds_count", tenant=good.id) == 5
    assert value("genesys_proxy_upstream_retries_total", tenant=good.id, reason="unauthorized") == 1
    # Token fetches: the first and the one after the revocation; the bad client is rejected.
    assert value("genesys_proxy_token_fetches_total", tenant=good.id, outcome="success") == 2
    assert value("genesys_proxy_token_fetches_total", tenant=bad.id, outcome="rejected") == 1
    assert value("genesys_proxy_token_fetches_total", tenant=bad.id, outcome="success") is None
    # Misses: good's first request, its replay, bad's and the unknown tenant's lookups.
    assert value("genesys_proxy_token_cache_total", result="hit") == 3
    # good's cold request and its replay, bad's fetch; nobody has no record, so no token lookup.
    assert value("genesys_proxy_token_cache_total", result="miss") == 3
    expiry = value("genesys_proxy_token_expiry_timestamp_seconds", tenant=good.id)
    assert expiry is not None
    assert time.time() + 86400 - 120 < expiry <= time.time() + 86400
    assert value("genesys_proxy_token_expiry_timestamp_seconds", tenant=bad.id) is None
    allowed = int(last.headers["inin-ratelimit-allowed"])
    count = int(last.headers["inin-ratelimit-count"])
    assert value("genesys_proxy_ratelimit_remaining", tenant=good.id) == allowed - count
    assert value("genesys_proxy_vault_requests_total", operation="read", outcome="success") == 2
    assert value("genesys_proxy_vault_requests_total", operation="read", outcome="not_found") == 1
    assert value("genesys_proxy_inflight_requests") == 0


async def test_only_tenants_with_a_credential_record_get_their_own_label(
    harness: ProxyHarness,
) -> None:
    good = harness.add_tenant("good")
    await harness.start()
    await harness.client.get("/api/v2/users", headers={"X-Tenant-ID": good.id})
    for n in range(5):
        await harness.client.get("/x", headers={"X-Tenant-ID": f"{harness.prefix}ghost{n}"})
    for hostile in ("../etc", "a" * 200, "bad id"):
        response = await harness.client.get("/x", headers={"X-Tenant-ID": hostile})
        assert response.status == 400
    await harness.client.get("/api/v2/users")  # no tenant at all
    await harness.client.request("PROPFIND", "/x", headers={"X-Tenant-ID": good.id})

    metrics = await scrape(harness)

    assert metrics.label_values("tenant") == {good.id, "-"}
    assert metrics.label_values("method") == {"GET", "other"}
    assert (
        metrics.value("genesys_proxy_requests_total", tenant="-", method="GET", status="404") == 5
    )
    assert (
        metrics.value("genesys_proxy_requests_total", tenant="-", method="GET", status="400") == 4
    )


async def test_tenant_label_off_keeps_one_series_per_metric(harness: ProxyHarness) -> None:
    first, second = harness.add_tenant("first"), harness.add_tenant("second")
    await harness.start({"metrics": {"tenant_label": False}})
    for tenant in (first, second, first):
        response = await harness.client.get("/api/v2/users", headers={"X-Tenant-ID": tenant.id})
        assert response.status == 200

    metrics = await scrape(harness)

    assert metrics.label_values("tenant") == set()
    assert "tenant=" not in metrics.text
    assert metrics.value("genesys_proxy_requests_total", method="GET", status="200") == 3
    assert metrics.value("genesys_proxy_token_fetches_total", outcome="success") == 2
    # The per-tenant gauges report the tenant that needs attention first.
    expiries = [s.value for s in metrics.samples("genesys_proxy_token_expiry_timestamp_seconds")]
    states = harness.tokens.snapshot()
    assert expiries == [min(s.expires_at for s in states if s.expires_at is not None)]
    assert len(metrics.samples("genesys_proxy_ratelimit_remaining")) == 1
    # The admin page still counts per tenant.
    stats = harness.metrics.tenant_stats(first.id)
    assert stats is not None
    assert stats.requests == 2


async def test_evicted_tenant_loses_its_expiry_gauge(harness: ProxyHarness) -> None:
    good = harness.add_tenant("good")
    await harness.start()
    await harness.client.get("/api/v2/users", headers={"X-Tenant-ID": good.id})
    name = "genesys_proxy_token_expiry_timestamp_seconds"
    assert (await scrape(harness)).value(name, tenant=good.id) is not None
    response = await harness.admin.delete(f"/admin/api/tenants/{good.id}")
    assert response.status == 200
    assert (await scrape(harness)).value(name, tenant=good.id) is None


def limited(clock: FakeClock) -> tuple[Metrics, RateLimiter[str], Any]:
    """Metrics, a limiter reporting into them, and the budget of tenant acme on the table."""
    metrics = Metrics(CollectorRegistry(), clock=clock)
    limiter: RateLimiter[str] = RateLimiter(clock=clock, observer=metrics)
    tenant = metrics.table.admit("acme")
    metrics.token_fetch(tenant, "success")
    return metrics, limiter, limiter.budget_of(tenant)


async def test_ratelimit_budget_is_full_again_after_genesys_reset_time(clock: FakeClock) -> None:
    metrics, _, budget = limited(clock)
    headers = {
        "inin-ratelimit-allowed": "300",
        "inin-ratelimit-count": "280",
        "inin-ratelimit-reset": "42",
    }
    (await budget.acquire(lambda: ("token",))).answered(200, headers)
    name = "genesys_proxy_ratelimit_remaining"
    assert metrics.registry.get_sample_value(name, {"tenant": "acme"}) == 20
    clock.advance(41)
    assert metrics.registry.get_sample_value(name, {"tenant": "acme"}) == 20
    clock.advance(1)
    assert metrics.registry.get_sample_value(name, {"tenant": "acme"}) == 300


async def test_ratelimit_remaining_sums_the_tenants_tokens(clock: FakeClock) -> None:
    metrics, _, budget = limited(clock)
    probes = [await budget.acquire(lambda: ("one", "two")) for _ in range(2)]
    for probe, count in zip(probes, ("10", "45"), strict=True):
        probe.answered(200, {"inin-ratelimit-allowed": "50", "inin-ratelimit-count": count})
    value = metrics.registry.get_sample_value(
        "genesys_proxy_ratelimit_remaining", {"tenant": "acme"}
    )
    assert value == 40 + 5


async def test_garbled_ratelimit_headers_leave_the_budget_alone(clock: FakeClock) -> None:
    metrics, _, budget = limited(clock)
    good = {"inin-ratelimit-allowed": "300", "inin-ratelimit-count": "1"}
    (await budget.acquire(lambda: ("token",))).answered(200, good)
    for garbled in ({"inin-ratelimit-allowed": "lots", "inin-ratelimit-count": "1"}, {}):
        (await budget.acquire(lambda: ("token",))).answered(200, garbled)
    value = metrics.registry.get_sample_value(
        "genesys_proxy_ratelimit_remaining", {"tenant": "acme"}
    )
    # Answers without usable headers are counted as spent, never as a new budget.
    assert value == 297


def test_ratelimit_counters_are_exposed_per_tenant_and_reason(clock: FakeClock) -> None:
    metrics, _, _ = limited(clock)
    metrics.ratelimit_held("acme", "budget")
    metrics.ratelimit_held("acme", "retry_after")
    metrics.ratelimit_rejected("acme")
    metrics.upstream_429("acme", "retried")
    metrics.upstream_429("acme", "passed")
    metrics.upstream_429("acme", "passed")
    sample = metrics.registry.get_sample_value
    assert sample("genesys_proxy_ratelimit_held_total", {"tenant": "acme", "reason": "budget"}) == 1
    assert sample("genesys_proxy_ratelimit_rejected_total", {"tenant": "acme"}) == 1
    assert sample("genesys_proxy_upstream_429_total", {"tenant": "acme", "outcome": "passed"}) == 2


def test_labelled_tenants_are_the_tables_and_leave_with_it() -> None:
    metrics = Metrics(CollectorRegistry(), max_tenants=2)
    for tenant in ("a", "b", "c"):
        metrics.token_fetch(metrics.table.admit(tenant), "success")
    metrics.request_finished("nobody", "GET", 404, 0.001, failed=True)
    registry = metrics.registry
    name = "genesys_proxy_token_fetches_total"
    # "a" fell off the end of the table (max_tenants 2): its series went with it.
    assert registry.get_sample_value(name, {"tenant": "a", "outcome": "success"}) is None
    assert registry.get_sample_value(name, {"tenant": "b", "outcome": "success"}) == 1
    assert registry.get_sample_value(name, {"tenant": "c", "outcome": "success"}) == 1
    requests = "genesys_proxy_requests_total"
    labels = {"tenant": "-", "method": "GET", "status": "404"}
    assert registry.get_sample_value(requests, labels) == 1


def test_duration_histogram_matches_prometheus_clients_own() -> None:
    # The proxy keeps its duration histograms as plain counts (4 KB less per tenant and
    # histogram); the exposed buckets must be what prometheus_client's Histogram would write.
    observations = [0.0, 0.005, 0.0051, 0.01, 0.2, 0.25, 1.0, 29.9, 30.0, 31.0, 1e9]
    reference = Histogram("reference", "", buckets=DURATION_BUCKETS, registry=CollectorRegistry())
    ours = DurationHistograms()
    for seconds in observations:
        reference.observe(seconds)
        ours.observe_request(seconds)
        ours.observe_upstream(seconds / 2)  # the other histogram in the same array
    [family] = reference.collect()
    expected = [
        (sample.labels["le"], sample.value)
        for sample in family.samples
        if sample.name == "reference_bucket"
    ]
    assert ours.request_buckets() == expected
    assert ours.request_total == pytest.approx(sum(observations))
    assert ours.upstream_buckets() != expected
    assert ours.upstream_total == pytest.approx(sum(observations) / 2)
