"""Short-lived tokens: refreshed ahead of expiry, never injected expired."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.conftest import ProxyHarness
from tests.scrape import scrape


@pytest.mark.slow
async def test_requests_over_several_short_token_lifetimes_never_see_a_401(
    harness: ProxyHarness,
) -> None:
    acme = harness.add_tenant("acme")
    harness.sim.set_token_lifetime(acme.client_id, 2)
    # Refresh at half the life (1 s), usable until 1.8 s: room for a refresh on a busy machine.
    await harness.start({"genesys": {"refresh_at": 0.5}})
    statuses = []
    deadline = time.monotonic() + 60  # a bound on waiting, not a timing assertion
    while harness.sim.tokens_issued(acme.client_id) < 4:  # three refreshes
        assert time.monotonic() < deadline, "the token was not refreshed three times"
        response = await harness.client.get("/api/v2/users", headers={"X-Tenant-ID": acme.id})
        statuses.append(response.status)
        response.release()
        await asyncio.sleep(0.05)
    assert set(statuses) == {200}
    assert harness.sim.api_401s() == 0
    # Refreshed ahead, not on demand after expiry: only the very first request missed the
    # cache; every later token came from a background refresh while the old one served.
    misses = (await scrape(harness)).value("genesys_proxy_token_cache_total", result="miss")
    assert misses == 1
