"""Genesys rate limits, absorbed: the real app, real OpenBao, the simulator with short windows.

Nothing here times anything: windows are short, and the tests count what the app got and what
the simulator saw.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from tests.conftest import ProxyHarness, TenantInfo
from tests.scrape import scrape

PATH = "/api/v2/organizations/me"


def rate_limit(**settings: float) -> dict[str, Any]:
    return {"genesys": {"rate_limit": settings}}


async def get(
    harness: ProxyHarness, tenant: TenantInfo, path: str = PATH
) -> aiohttp.ClientResponse:
    response: aiohttp.ClientResponse = await harness.client.get(
        path, headers={"X-Tenant-ID": tenant.id}
    )
    await response.read()
    return response


async def burst(harness: ProxyHarness, tenant: TenantInfo, count: int) -> Counter[int]:
    answers = await asyncio.gather(*(get(harness, tenant) for _ in range(count)))
    return Counter(answer.status for answer in answers)


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for a state the proxy reaches by itself; a bound on waiting, not a timing assertion."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the condition did not hold in time")
        await asyncio.sleep(0.01)


def waiting(harness: ProxyHarness, tenant: TenantInfo) -> int:
    found = harness.table.peek(tenant.id)
    budget = None if found is None else found.budget
    return 0 if budget is None else budget.waiting


async def test_a_burst_over_one_tokens_budget_ends_all_200_with_at_most_one_429_per_window(
    harness: ProxyHarness,
) -> None:
    acme = harness.add_tenant("acme")
    harness.sim.set_rate_limit(10, window_seconds=1)
    await harness.start(rate_limit(max_wait=5))

    statuses = await burst(harness, acme, 25)  # two and a half windows' worth

    assert statuses == {200: 25}
    windows = 3
    assert harness.sim.rate_limited(acme.client_id) <= windows
    assert harness.sim.api_requests(acme.client_id) <= 25 + windows
    metrics = await scrape(harness)
    assert (
        metrics.value("genesys_proxy_ratelimit_held_total", tenant=acme.id, reason="budget") or 0
    ) >= 15
    assert metrics.value("genesys_proxy_ratelimit_rejected_total", tenant=acme.id) is None


async def test_a_max_wait_shorter_than_the_reset_gets_rate_limited_and_sends_nothing(
    harness: ProxyHarness,
) -> None:
    acme = harness.add_tenant("acme")
    harness.sim.set_rate_limit(3, window_seconds=30)
    await harness.start(rate_limit(max_wait=1))
    for _ in range(3):
        assert (await get(harness, acme)).status == 200

    refused = [await get(harness, acme) for _ in range(2)]

    for response in refused:
        assert response.status == 429
        assert response.headers["X-Proxy-Error"] == "rate_limited"
        assert 25 <= int(response.headers["Retry-After"]) <= 30
        body = await response.json()
        assert body["error"] == "rate_limited"
        assert body["tenant"] == acme.id
        assert "max_wait" in body["message"]
    assert harness.sim.api_requests(acme.client_id) == 3  # Genesys saw nothing more
    assert harness.sim.rate_limited() == 0
    metrics = await scrape(harness)
    assert metrics.value("genesys_proxy_ratelimit_rejected_total", tenant=acme.id) == 2
    assert metrics.value("genesys_proxy_ratelimit_remaining", tenant=acme.id) == 0


@pytest.mark.parametrize(("method", "body"), [("GET", None), ("POST", b'{"order": 66}' * 100)])
async def test_an_upstream_429_with_a_short_retry_after_is_replayed(
    harness: ProxyHarness, method: str, body: bytes | None
) -> None:
    acme = harness.add_tenant("acme")
    await harness.start()
    harness.sim.inject_api_fault(status=429, retry_after=1, client_id=acme.client_id)

    response = await harness.client.request(
        method, "/api/v2/sim/echo", data=body, headers={"X-Tenant-ID": acme.id}
    )

    assert response.status == 200
    echoed = await response.json()
    seen = [s for s in harness.sim.requests if s.path == "/api/v2/sim/echo"]
    assert [s.status for s in seen] == [429, 200]
    expected = hashlib.sha256(body or b"").hexdigest()
    assert {s.body_sha256 for s in seen} == {expected}
    assert echoed["method"] == method
    metrics = await scrape(harness)
    assert metrics.value("genesys_proxy_upstream_429_total", tenant=acme.id, outcome="retried") == 1
    held = metrics.value("genesys_proxy_ratelimit_held_total", tenant=acme.id, reason="retry_after")
    assert held == 1
    assert (
        metrics.value("genesys_proxy_upstream_retries_total", tenant=acme.id, reason="rate_limited")
        == 1
    )


async def test_a_429_for_a_window_an_app_used_up_with_the_raw_token_is_waited_out(
    harness: ProxyHarness,
) -> None:
    acme = harness.add_tenant("acme")
    harness.sim.set_rate_limit(3, window_seconds=2)
    await harness.start(rate_limit(max_wait=5))
    assert (await get(harness, acme)).status == 200  # the proxy knows the window now
    raw = await harness.client.get("/auth/token", headers={"X-Tenant-ID": acme.id})
    token = (await raw.json())["access_token"]
    async with aiohttp.ClientSession() as direct:
        url = harness.sim.api_url_template.format(domain=acme.domain) + PATH
        for _ in range(2):  # the app uses the rest of the window behind the proxy's back
            async with direct.get(url, headers={"Authorization": f"Bearer {token}"}) as answer:
                assert answer.status == 200

    response = await get(harness, acme)

    assert response.status == 200
    assert harness.sim.rate_limited(acme.client_id) == 1
    metrics = await scrape(harness)
    assert metrics.value("genesys_proxy_upstream_429_total", tenant=acme.id, outcome="retried") == 1


async def test_a_429_whose_retry_after_is_beyond_max_wait_passes_through_unchanged(
    harness: ProxyHarness,
) -> None:
    acme = harness.add_tenant("acme")
    await harness.start(rate_limit(max_wait=2))
    harness.sim.inject_api_fault(status=429, retry_after=30, client_id=acme.client_id)

    response = await get(harness, acme)

    assert response.status == 429
    assert response.headers["Retry-After"] == "30"
    assert "X-Proxy-Error" not in response.headers
    metrics = await scrape(harness)
    assert metrics.value("genesys_proxy_upstream_429_total", tenant=acme.id, outcome="passed") == 1


async def test_max_wait_zero_passes_genesys_429s_unchanged(harness: ProxyHarness) -> None:
    acme = harness.add_tenant("acme")
    harness.sim.set_rate_limit(2, window_seconds=30)
    await harness.start(rate_limit(max_wait=0))

    statuses = [(await get(harness, acme)).status for _ in range(4)]
    harness.sim.inject_api_fault(status=429, retry_after=1, client_id=acme.client_id)
    harness.sim.set_rate_limit(None)
    faulted = await get(harness, acme)

    assert statuses == [200, 200, 429, 429]
    assert harness.sim.rate_limited(acme.client_id) == 2  # every one reached Genesys
    last = [s for s in harness.sim.requests if s.client_id == acme.client_id][-2]
    assert last.status == 429
    assert faulted.status == 429
    assert "X-Proxy-Error" not in faulted.headers
    assert faulted.headers["Retry-After"] == "1"
    metrics = await scrape(harness)
    assert metrics.value("genesys_proxy_upstream_429_total", tenant=acme.id, outcome="passed") == 3
    assert (
        metrics.value("genesys_proxy_ratelimit_held_total", tenant=acme.id, reason="budget") is None
    )


async def test_genesys_429_body_reaches_the_app_unchanged_when_passed(
    harness: ProxyHarness,
) -> None:
    acme = harness.add_tenant("acme")
    harness.sim.set_rate_limit(1, window_seconds=30)
    await harness.start(rate_limit(max_wait=0))
    await get(harness, acme)

    response = await get(harness, acme)

    assert response.status == 429
    body = await response.json()
    assert body["code"] == "too.many.requests.retry.after"
    assert int(response.headers["Retry-After"]) > 0
    assert response.headers["inin-ratelimit-count"] == "1"


async def test_waiters_beyond_the_cap_are_refused_at_once(harness: ProxyHarness) -> None:
    acme = harness.add_tenant("acme")
    harness.sim.set_rate_limit(2, window_seconds=3)
    await harness.start(rate_limit(max_wait=5, max_waiting=2))
    for _ in range(2):
        assert (await get(harness, acme)).status == 200
    held = [asyncio.create_task(get(harness, acme)) for _ in range(2)]
    await until(lambda: waiting(harness, acme) == 2)

    refused = await get(harness, acme)

    assert refused.status == 429
    assert refused.headers["X-Proxy-Error"] == "rate_limited"
    assert "max_waiting" in (await refused.json())["message"]
    assert not any(task.done() for task in held)  # refused at once, while the others wait
    assert [(await task).status for task in held] == [200, 200]
    # The refused one never went out; an early try at the reset may have been one too soon.
    assert harness.sim.api_requests(acme.client_id) - harness.sim.rate_limited() == 4
    assert harness.sim.rate_limited() <= 1


async def test_a_held_client_that_hangs_up_costs_nothing(harness: ProxyHarness) -> None:
    acme = harness.add_tenant("acme")
    harness.sim.set_rate_limit(1, window_seconds=3)
    await harness.start(rate_limit(max_wait=5))
    assert (await get(harness, acme)).status == 200
    async with aiohttp.ClientSession() as impatient:
        leaving = asyncio.create_task(
            impatient.get(harness.base_url.rstrip("/") + PATH, headers={"X-Tenant-ID": acme.id})
        )
        await until(lambda: waiting(harness, acme) == 1)
        leaving.cancel()
        await asyncio.gather(leaving, return_exceptions=True)
    await until(lambda: waiting(harness, acme) == 0)

    after = await get(harness, acme)  # held until the window resets, then served

    assert after.status == 200
    seen = [s.status for s in harness.sim.requests if s.client_id == acme.client_id]
    # The first and the last (maybe after one early try at the reset, refused 429 and replayed):
    # the one that hung up never went out.
    assert seen in ([200, 200], [200, 429, 200])
    found = harness.table.peek(acme.id)
    assert found is not None
    budget = found.budget
    assert budget is not None
    assert budget.waiting == 0
    assert budget.in_flight == 0


async def test_a_pool_of_three_serves_three_budgets_worth_without_waiting_for_a_window(
    harness: ProxyHarness,
) -> None:
    acme = harness.add_tenant("acme")
    # A window far longer than max_wait: any request that needed a reset would be refused.
    harness.sim.set_rate_limit(10, window_seconds=60)
    await harness.start(rate_limit(max_wait=5, tokens_per_tenant=3))

    statuses = await burst(harness, acme, 30)

    assert statuses == {200: 30}
    assert harness.sim.tokens_issued(acme.client_id) == 3
    assert harness.sim.rate_limited(acme.client_id) == 0
    per_token = Counter(s.header("Authorization") for s in harness.sim.requests)
    assert sorted(per_token.values()) == [10, 10, 10]
    metrics = await scrape(harness)
    assert metrics.value("genesys_proxy_ratelimit_rejected_total", tenant=acme.id) is None
    assert metrics.value("genesys_proxy_ratelimit_remaining", tenant=acme.id) == 0
    assert (await get(harness, acme)).status == 429  # and a fourth budget's worth is refused


async def test_the_admin_page_and_its_json_show_each_tenants_pool_and_budgets(
    harness: ProxyHarness,
) -> None:
    acme = harness.add_tenant("acme")
    harness.sim.set_rate_limit(10, window_seconds=60)
    await harness.start(rate_limit(tokens_per_tenant=2))
    assert (await burst(harness, acme, 15)) == {200: 15}

    answer = await harness.admin.get("/admin/api/tenants")
    page = await (await harness.admin.get("/admin")).text()

    text = await answer.text()
    row = next(r for r in (await answer.json())["tenants"] if r["tenant"] == acme.id)
    assert row["ratelimit_remaining"] == 5
    assert row["ratelimit_waiting"] == 0
    assert [token["allowed"] for token in row["pool"]] == [10, 10]
    assert sorted(token["remaining"] for token in row["pool"]) == [0, 5]
    assert all(0 < token["resets_in"] <= 60 for token in row["pool"])
    assert "token 2: " in page
    for issued in harness.sim.issued_tokens():
        assert issued not in text
        assert issued not in page


async def test_one_token_serves_only_one_budget_where_a_pool_would_serve_three(
    harness: ProxyHarness,
) -> None:
    acme = harness.add_tenant("acme")
    harness.sim.set_rate_limit(10, window_seconds=60)
    await harness.start(rate_limit(max_wait=5))

    statuses = await burst(harness, acme, 30)

    assert statuses == {200: 10, 429: 20}
    assert harness.sim.rate_limited(acme.client_id) == 0  # refused by the proxy, not Genesys
    assert harness.sim.tokens_issued(acme.client_id) == 1


async def test_the_pool_grows_only_once_every_token_used_80_percent(
    harness: ProxyHarness,
) -> None:
    acme = harness.add_tenant("acme")
    harness.sim.set_rate_limit(10, window_seconds=60)
    await harness.start(rate_limit(tokens_per_tenant=3))

    for _ in range(7):
        assert (await get(harness, acme)).status == 200
    before = harness.sim.tokens_issued(acme.client_id)
    assert (await get(harness, acme)).status == 200  # the 8th of 10: 80 %
    await until(lambda: harness.sim.tokens_issued(acme.client_id) == 2)

    assert before == 1


async def test_auth_token_hands_out_the_pool_token_with_the_most_budget(
    harness: ProxyHarness,
) -> None:
    acme = harness.add_tenant("acme")
    harness.sim.set_rate_limit(10, window_seconds=60)
    await harness.start(rate_limit(tokens_per_tenant=2))
    for _ in range(9):
        assert (await get(harness, acme)).status == 200
    await until(lambda: harness.sim.tokens_issued(acme.client_id) == 2)
    used = Counter(s.header("Authorization") for s in harness.sim.requests)

    answer = await harness.client.get("/auth/token", headers={"X-Tenant-ID": acme.id})

    token = (await answer.json())["access_token"]
    least_used = min(used, key=lambda header: used[header])
    # The second token has had at most a couple of requests; the first nearly ten.
    assert f"Bearer {token}" == least_used or used[f"Bearer {token}"] == 0
    assert max(used.values()) >= 8


async def test_a_revoked_pool_token_is_dropped_and_the_request_replayed(
    harness: ProxyHarness,
) -> None:
    acme = harness.add_tenant("acme")
    harness.sim.set_rate_limit(20, window_seconds=5)
    await harness.start(rate_limit(max_wait=5, tokens_per_tenant=2))
    used: Counter[str | None] = Counter()
    while len(used) < 2:  # the first token's window used up, the second one in use
        assert (await get(harness, acme)).status == 200
        assert sum(used.values()) < 25
        used = Counter(s.header("Authorization") for s in harness.sim.requests)
    entry = harness.table.peek(acme.id)
    assert entry is not None
    first, pooled = entry.tokens
    async with aiohttp.ClientSession() as direct:  # the second token is revoked behind our back
        url = harness.sim.api_url_template.format(domain=acme.domain) + "/api/v2/tokens/me"
        headers = {"Authorization": f"Bearer {pooled.value}"}
        async with direct.delete(url, headers=headers) as answer:
            assert answer.status == 204

    response = await get(harness, acme)  # refused on the second, replayed on the first

    assert response.status == 200
    assert pooled not in entry.tokens
    assert entry.tokens[0] is first  # not refetched: only the refused pool token went
    statuses = [s.status for s in harness.sim.requests if s.path == PATH]
    assert statuses.count(401) == 1
