"""A tenant is one object, and Vault is the truth within credentials.ttl (issue 12).

Functional: the real app, OpenBao (its audit log counts reads) and the Genesys simulator. The
records age by a fake clock (`harness.start(clock=...)`), so nothing here waits for a ttl to pass.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.app import OAUTH
from proxy.regions import resolve_region
from tests.conftest import FakeClock, OpenBao, ProxyHarness, relay_to_vault
from tests.scrape import scrape

ME = "/api/v2/organizations/me"
ECHO = "/api/v2/sim/echo"
TTL = 300


async def call(harness: ProxyHarness, tenant: str, path: str = ME) -> tuple[int, str | None]:
    response = await harness.client.get(path, headers={"X-Tenant-ID": tenant})
    await response.read()
    return response.status, response.headers.get("X-Proxy-Error")


async def echo_client(harness: ProxyHarness, tenant: str) -> str:
    """The OAuth client whose token the simulator saw on a request of `tenant`."""
    response = await harness.client.get(ECHO, headers={"X-Tenant-ID": tenant})
    assert response.status == 200, await response.text()
    client_id: str = (await response.json())["client_id"]
    return client_id


async def revalidated(
    harness: ProxyHarness, tenant: str, clock: FakeClock
) -> tuple[int, str | None]:
    """Age the tenant's record past its ttl; the request that finds it old is served meanwhile."""
    clock.advance(TTL + 1)
    answer = await call(harness, tenant)
    await harness.credentials.settled()
    assert harness.app is not None
    await harness.app[OAUTH].settled()  # dropped tokens are revoked in the background
    return answer


def delete_record(openbao: OpenBao, tenant: str) -> None:
    openbao.client().secrets.kv.v2.delete_metadata_and_all_versions(
        path=f"genesys/tenants/{tenant}", mount_point="secret"
    )


async def changes(harness: ProxyHarness, tenant: str, change: str) -> float | None:
    name = "genesys_proxy_credential_changes_total"
    return (await scrape(harness)).value(name, tenant=tenant, change=change)


# -- Vault is the truth ---------------------------------------------------------------------------


async def test_a_record_deleted_from_vault_cuts_the_tenant_off_and_revokes_its_token(
    harness: ProxyHarness, openbao: OpenBao
) -> None:
    acme = harness.add_tenant("acme")
    clock = FakeClock()
    await harness.start(clock=clock)
    assert await call(harness, acme.id) == (200, None)
    [token] = harness.sim.live_tokens(acme.client_id)

    delete_record(openbao, acme.id)
    # The request that finds the record old is served; the re-read behind it finds it gone.
    assert await revalidated(harness, acme.id, clock) == (200, None)
    assert await call(harness, acme.id) == (404, "unknown_tenant")
    assert harness.sim.token_revoked(token)
    assert harness.sim.live_tokens(acme.client_id) == []
    assert await changes(harness, acme.id, "removed") == 1


async def test_a_rotated_client_is_used_by_the_next_request_after_the_re_read(
    harness: ProxyHarness, openbao: OpenBao
) -> None:
    acme = harness.add_tenant("acme")
    clock = FakeClock()
    await harness.start(clock=clock)
    assert await echo_client(harness, acme.id) == acme.client_id
    [old_token] = harness.sim.live_tokens(acme.client_id)

    rotated_id, rotated_secret = f"{acme.client_id}-rotated", f"fake-{secrets.token_hex(8)}"
    harness.sim.add_client(rotated_id, rotated_secret, domain=acme.domain, org_name=acme.org_name)
    openbao.put_tenant(acme.id, rotated_id, rotated_secret, "ap-south-1")
    await revalidated(harness, acme.id, clock)

    assert await echo_client(harness, acme.id) == rotated_id
    assert harness.sim.token_revoked(old_token)
    assert await changes(harness, acme.id, "rotated") == 1


async def test_a_changed_secret_alone_drops_the_token_too(
    harness: ProxyHarness, openbao: OpenBao
) -> None:
    acme = harness.add_tenant("acme")
    clock = FakeClock()
    await harness.start(clock=clock)
    assert await call(harness, acme.id) == (200, None)
    fetches = harness.sim.token_requests(acme.client_id)

    new_secret = f"fake-{secrets.token_hex(8)}"
    harness.sim.add_client(acme.client_id, new_secret, domain=acme.domain, org_name=acme.org_name)
    openbao.put_tenant(acme.id, acme.client_id, new_secret, "ap-south-1")
    await revalidated(harness, acme.id, clock)

    assert await call(harness, acme.id) == (200, None)
    assert harness.sim.token_requests(acme.client_id) == fetches + 1


async def test_a_changed_region_sends_the_tenant_to_the_new_region(
    harness: ProxyHarness, openbao: OpenBao
) -> None:
    acme = harness.add_tenant("acme", region="ap-south-1")
    clock = FakeClock()
    await harness.start(clock=clock)
    assert await call(harness, acme.id) == (200, None)
    assert harness.sim.requests[-1].domain == "aps1.pure.cloud"

    # The org moved to Frankfurt: its client now lives there, and so does its record's region.
    domain = resolve_region("eu-central-1")
    harness.sim.add_client(
        acme.client_id, acme.client_secret, domain=domain, org_name=acme.org_name
    )
    openbao.put_tenant(acme.id, acme.client_id, acme.client_secret, "eu-central-1")
    await revalidated(harness, acme.id, clock)

    assert await call(harness, acme.id) == (200, None)
    assert harness.sim.requests[-1].domain == domain


async def test_a_re_read_that_vault_denies_makes_the_tenant_forbidden(
    harness: ProxyHarness, openbao: OpenBao
) -> None:
    acme = harness.add_tenant("acme")
    root = openbao.client()
    policy = f"proxy-{acme.id}"
    allowed = f'path "secret/data/genesys/tenants/{acme.id}" {{ capabilities = ["read"] }}'
    root.sys.create_or_update_policy(name=policy, policy=allowed)
    token = root.auth.token.create(policies=[policy], ttl="1h")["auth"]["client_token"]
    clock = FakeClock()
    await harness.start({"vault": {"auth": {"token": token}}}, clock=clock)
    assert await call(harness, acme.id) == (200, None)
    [old_token] = harness.sim.live_tokens(acme.client_id)

    # The workload's role loses this tenant: its path is no longer in the policy.
    elsewhere = 'path "secret/data/genesys/tenants/someone-else" { capabilities = ["read"] }'
    root.sys.create_or_update_policy(name=policy, policy=elsewhere)
    await revalidated(harness, acme.id, clock)

    assert await call(harness, acme.id) == (403, "tenant_forbidden")
    assert harness.sim.token_revoked(old_token)
    assert await changes(harness, acme.id, "forbidden") == 1


# -- Re-validation: one read per tenant per ttl, in the background --------------------------------


class GatedVault:
    """A relay in front of OpenBao that holds reads of one path until released (then 503s)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.hold: str | None = None
        self.held = asyncio.Event()
        self.release = asyncio.Event()
        self.fail_held = False
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self._handle)

    async def _handle(self, request: web.Request) -> web.Response:
        if self.hold is not None and request.path.endswith(self.hold):
            self.held.set()
            await self.release.wait()
            if self.fail_held:
                return web.json_response({"errors": ["simulated outage"]}, status=503)
        return await relay_to_vault(self.upstream, request)


@pytest.fixture
async def gated_vault(openbao: OpenBao) -> AsyncIterator[tuple[GatedVault, str]]:
    gate = GatedVault(openbao.address)
    server = TestServer(gate.app, host="127.0.0.1")
    await server.start_server()
    try:
        yield gate, str(server.make_url("")).rstrip("/")
    finally:
        gate.release.set()
        await server.close()


async def test_revalidation_reads_once_per_tenant_per_ttl_and_serves_meanwhile(
    harness: ProxyHarness, openbao: OpenBao, gated_vault: tuple[GatedVault, str]
) -> None:
    gate, address = gated_vault
    busy, idle = harness.add_tenant("busy"), harness.add_tenant("idle")
    clock = FakeClock()
    await harness.start({"vault": {"address": address}}, clock=clock)
    assert await call(harness, busy.id) == (200, None)
    assert await call(harness, idle.id) == (200, None)
    assert (openbao.reads_of(busy.id), openbao.reads_of(idle.id)) == (1, 1)

    for ttls in (1, 2):
        clock.advance(TTL + 1)
        gate.hold, gate.release = busy.id, asyncio.Event()
        gate.held.clear()
        # 100 concurrent requests while the one re-read is held at the relay: all answered.
        answers = await asyncio.gather(*(call(harness, busy.id) for _ in range(100)))
        assert answers == [(200, None)] * 100
        async with asyncio.timeout(30):  # a bound: a proxy that never re-reads fails here
            await gate.held.wait()
        gate.release.set()
        await harness.credentials.settled()
        assert openbao.reads_of(busy.id) == 1 + ttls
    assert openbao.reads_of(idle.id) == 1  # an idle tenant costs nothing


async def test_evicting_b_during_as_re_read_in_an_outage_leaves_a_its_stale_record(
    harness: ProxyHarness, gated_vault: tuple[GatedVault, str]
) -> None:
    gate, address = gated_vault
    a, b = harness.add_tenant("a"), harness.add_tenant("b")
    clock = FakeClock()
    await harness.start({"vault": {"address": address}}, clock=clock)
    assert await call(harness, a.id) == (200, None)
    assert await call(harness, b.id) == (200, None)

    clock.advance(TTL + 1)
    gate.hold, gate.fail_held = a.id, True
    assert await call(harness, a.id) == (200, None)  # starts A's re-read, held at the relay
    async with asyncio.timeout(30):
        await gate.held.wait()
    response = await harness.admin.delete(f"/admin/api/tenants/{b.id}")
    assert response.status == 200
    gate.release.set()  # A's re-read now finds Vault unavailable
    await harness.credentials.settled()

    assert harness.credentials.stale_served == 1
    assert harness.credentials.cached(a.id) is not None
    assert await call(harness, a.id) == (200, None)


async def test_evicting_b_during_as_token_fetch_costs_a_no_second_fetch(
    harness: ProxyHarness,
) -> None:
    a, b = harness.add_tenant("a"), harness.add_tenant("b")
    await harness.start()
    assert await call(harness, b.id) == (200, None)
    # A's token request is held at the login service until B is evicted.
    harness.sim.inject_login_fault(status=200, delay=0.5, client_id=a.client_id)
    first = asyncio.create_task(call(harness, a.id))
    while harness.sim.token_requests(a.client_id) == 0:  # noqa: ASYNC110 (the sim has no event)
        await asyncio.sleep(0.01)
    response = await harness.admin.delete(f"/admin/api/tenants/{b.id}")
    assert response.status == 200
    assert await first == (200, None)
    assert await call(harness, a.id) == (200, None)
    assert harness.sim.token_requests(a.client_id) == 1


async def test_evicting_a_tenant_removes_all_its_series_from_metrics(
    harness: ProxyHarness,
) -> None:
    acme, other = harness.add_tenant("acme"), harness.add_tenant("other")
    await harness.start()
    for tenant in (acme, other):
        assert await call(harness, tenant.id) == (200, None)
    before = await scrape(harness)
    assert acme.id in before.label_values("tenant")

    response = await harness.admin.delete(f"/admin/api/tenants/{acme.id}")
    assert response.status == 200
    after = await scrape(harness)
    assert acme.id not in after.label_values("tenant")
    assert other.id in after.label_values("tenant")


# -- The 401 storm --------------------------------------------------------------------------------


async def test_a_401_storm_costs_at_most_one_refetch_and_the_tenant_keeps_working(
    harness: ProxyHarness,
) -> None:
    acme = harness.add_tenant("acme")
    await harness.start()
    assert await call(harness, acme.id) == (200, None)
    gate = asyncio.Semaphore(50)

    async def refused() -> tuple[int, str | None]:
        async with gate:
            return await call(harness, acme.id, "/api/v2/sim/status/401")

    # 250: within one token's rate-limit window (300 a minute), so every answer is the 401.
    answers = await asyncio.gather(*(refused() for _ in range(250)))
    # Genesys' own 401 reaches the app (no X-Proxy-Error): the endpoint refuses, not the token.
    assert answers == [(401, None)] * 250
    assert harness.sim.token_requests(acme.client_id) <= 2
    assert await call(harness, acme.id) == (200, None)
    assert await call(harness, acme.id, "/api/v2/users") == (200, None)
    assert harness.sim.token_requests(acme.client_id) <= 2


async def test_a_revoked_token_is_still_replaced_after_an_endpoint_refused(
    harness: ProxyHarness,
) -> None:
    acme = harness.add_tenant("acme")
    await harness.start()
    assert await call(harness, acme.id, "/api/v2/sim/status/401") == (401, None)
    # The backoff holds 401-driven refetches only: a plain request still works meanwhile.
    assert await call(harness, acme.id) == (200, None)


# -- Admin Refresh and the login service's Retry-After --------------------------------------------


async def test_admin_refresh_answers_the_backoff_while_the_login_service_asks_to_wait(
    harness: ProxyHarness,
) -> None:
    acme = harness.add_tenant("acme")
    await harness.start()
    harness.sim.inject_login_fault(status=429, retry_after=60, client_id=acme.client_id)
    assert await call(harness, acme.id) == (503, "token_unavailable")
    logins = harness.sim.token_requests(acme.client_id)

    response = await harness.admin.post(f"/admin/api/tenants/{acme.id}/refresh")
    body: dict[str, Any] = await response.json()
    assert (response.status, body["error"]) == (503, "token_unavailable")
    assert int(response.headers["Retry-After"]) >= 50
    assert harness.sim.token_requests(acme.client_id) == logins
