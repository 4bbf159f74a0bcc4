"""deploy/monitoring: the Grafana dashboard and alert rules query only metrics the proxy exports."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import FakeClock, ProxyHarness
from tests.scrape import Scrape, scrape

MONITORING = Path(__file__).resolve().parent.parent / "deploy" / "monitoring"
METRIC = re.compile(r"\bgenesys_proxy_[a-z0-9_]+")
# `name{label="...", other=~"..."}`: the label names a selector filters on.
SELECTOR = re.compile(r"\b(genesys_proxy_[a-z0-9_]+)\{([^}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)")


def dashboard() -> dict[str, Any]:
    data = json.loads((MONITORING / "grafana-dashboard.json").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def dashboard_queries(data: dict[str, Any]) -> Iterator[str]:
    """Every PromQL text the dashboard runs: panel targets and template variable queries."""
    for panel in data["panels"]:
        for target in panel.get("targets", []):
            yield target["expr"]
    for variable in data["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            yield query["query"]


def alert_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load((MONITORING / "alerts.yaml").read_text(encoding="utf-8"))
    return [rule for group in data["groups"] for rule in group["rules"]]


@pytest.fixture
async def exported(harness: ProxyHarness) -> Scrape:
    """/metrics after traffic that gives every family a sample (a retry, a rejection, a change,
    429s)."""
    good = harness.add_tenant("good")
    bad = harness.add_tenant("bad", vault_secret="fake-wrong-secret-0042")
    clock = FakeClock()
    await harness.start(clock=clock)
    await harness.client.get("/api/v2/users", headers={"X-Tenant-ID": good.id})
    harness.sim.revoke_tokens(good.client_id)
    await harness.client.get("/api/v2/users", headers={"X-Tenant-ID": good.id})
    await harness.client.get("/api/v2/users", headers={"X-Tenant-ID": bad.id})
    # Bad's record fixed in Vault: the re-read after its ttl counts a rotation.
    harness.vault.put_tenant(bad.id, bad.client_id, bad.client_secret, "ap-south-1")
    clock.advance(301)
    await harness.client.get("/api/v2/users", headers={"X-Tenant-ID": bad.id})
    await harness.credentials.settled()
    # The rate-limit families: a 429 replayed after its Retry-After (held), a 429 whose reset
    # is beyond max_wait (passed), then the proxy's own 429 for the used-up window (refused).
    harness.sim.inject_api_fault(status=429, retry_after=1, client_id=good.client_id)
    await harness.client.get("/api/v2/users", headers={"X-Tenant-ID": good.id})
    harness.sim.set_rate_limit(1, window_seconds=60)
    for _ in range(2):
        await harness.client.get("/api/v2/users", headers={"X-Tenant-ID": good.id})
    return await scrape(harness)


def check_query(query: str, exported: Scrape, where: str) -> None:
    names = METRIC.findall(query)
    assert names, f"{where}: queries no genesys_proxy_ metric: {query}"
    for name in names:
        assert name in exported.sample_names(), f"{where}: {name} is not in /metrics"
    for name, matchers in SELECTOR.findall(query):
        labels = {label for s in exported.samples(name) for label in s.labels}
        for label in MATCHER.findall(matchers):
            assert label in labels, f"{where}: {name} has no label {label!r}"


async def test_every_metric_the_dashboard_queries_exists(exported: Scrape) -> None:
    data = dashboard()
    assert data["uid"] == "genesys-token-proxy"
    queries = list(dashboard_queries(data))
    assert len(queries) >= 10
    for query in queries:
        check_query(query, exported, "dashboard")
    # Between them the panels cover every metric of the contract.
    queried = {name for query in queries for name in METRIC.findall(query)}
    families = {
        name
        for name in exported.families
        if name.startswith("genesys_proxy_") and not name.endswith("_created")
    }
    missing = {family for family in families if not any(q.startswith(family) for q in queried)}
    assert not missing, f"the dashboard shows nothing of {sorted(missing)}"


def test_dashboard_panels_are_importable() -> None:
    data = dashboard()
    ids = [panel["id"] for panel in data["panels"]]
    assert len(ids) == len(set(ids))
    for panel in data["panels"]:
        assert panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


async def test_every_alert_rule_uses_exported_metrics(exported: Scrape) -> None:
    rules = alert_rules()
    assert len(rules) >= 4
    for rule in rules:
        assert re.fullmatch(r"GenesysProxy[A-Za-z]+", rule["alert"])
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]
        check_query(rule["expr"], exported, rule["alert"])
