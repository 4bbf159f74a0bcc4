"""Short-lived tokens: refreshed ahead of expiry, never injected expired."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.conftest import ProxyHarness


@pytest.mark.slow
async def test_requests_over_several_short_token_lifetimes_never_see_a_401(
    harness: ProxyHarness,
) -> None:
    acme = harness.add_tenant("acme")
    harness.sim.set_token_lifetime(acme.client_id, 2)
    await harness.start()
    deadline = time.monotonic() + 7  # three and a half lifetimes
    statuses = []
    while time.monotonic() < deadline:
        response = await harness.client.get("/api/v2/users", headers={"X-Tenant-ID": acme.id})
        statuses.append(response.status)
        response.release()
        await asyncio.sleep(0.05)
    assert set(statuses) == {200}
    assert harness.sim.api_401s() == 0
    # Refreshed ahead, not on demand after expiry: one token per ~1.6 s of life, give or take.
    assert 4 <= harness.sim.tokens_issued(acme.client_id) <= 7
