"""The proxy under real outages: OpenBao stopped, sealed or failing; Genesys login down; 401 storms.

Vault is the real OpenBao: a dedicated dev server this module stops, restarts and seals (the
session's shared server is left alone), or the shared one behind a small fault-injecting
reverse proxy for 5xx answers. Genesys is the simulator, whose login faults are scripted.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.simulator import GenesysSimulator
from proxy.tenants.tokens import BACKOFF_BASE
from tests.conftest import (
    OpenBao,
    ProxyHarness,
    TenantInfo,
    relay_to_vault,
    start_openbao,
    stop_openbao,
)

REGION = "ap-south-1"
ME = "/api/v2/organizations/me"


@dataclass
class DedicatedBao:
    """An OpenBao dev server of this module's own, which tests may stop and start again."""

    home: Path
    current: OpenBao
    tenants: list[TenantInfo] = field(default_factory=list)

    def stop(self) -> None:
        stop_openbao(self.current)

    def restart(self) -> None:
        """Start it again on the same address; it comes back empty, so re-seed the tenants."""
        self.current = start_openbao(self.home, self.current.address)
        for tenant in self.tenants:
            self.current.put_tenant(tenant.id, tenant.client_id, tenant.client_secret, REGION)

    def unseal_key(self) -> str:
        match = re.search(r"Unseal Key: (\S+)", self.current.output())
        assert match is not None, "the dev server printed no unseal key"
        return match.group(1)


@pytest.fixture(scope="module")
def dedicated_bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DedicatedBao]:
    home = tmp_path_factory.mktemp("dedicated-openbao")
    bao = DedicatedBao(home, start_openbao(home))
    try:
        yield bao
    finally:
        stop_openbao(bao.current)


@pytest.fixture
def bao_harness(
    sim: GenesysSimulator, dedicated_bao: DedicatedBao, aiohttp_client: Any, tenant_prefix: str
) -> ProxyHarness:
    """A harness whose Vault is the dedicated server; its tenants are re-seeded on restart."""
    dedicated_bao.tenants.clear()
    return ProxyHarness(sim, dedicated_bao.current, aiohttp_client, prefix=tenant_prefix)


class VaultFaults:
    """A reverse proxy in front of a real OpenBao that answers 5xx itself while `status` is set."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.status: int | None = None
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self._handle)

    async def _handle(self, request: web.Request) -> web.Response:
        if self.status is not None:
            return web.json_response({"errors": ["simulated failure"]}, status=self.status)
        return await relay_to_vault(self.upstream, request)


@pytest.fixture
async def vault_faults(openbao: OpenBao) -> AsyncIterator[tuple[VaultFaults, str]]:
    faults = VaultFaults(openbao.address)
    server = TestServer(faults.app, host="127.0.0.1")
    await server.start_server()
    try:
        yield faults, str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


async def answer(harness: ProxyHarness, tenant: str, path: str = ME) -> tuple[int, str | None, int]:
    """(status, X-Proxy-Error, Retry-After or 0) of one proxied request."""
    response = await harness.client.get(path, headers={"X-Tenant-ID": tenant})
    await response.read()
    return (
        response.status,
        response.headers.get("X-Proxy-Error"),
        int(response.headers.get("Retry-After", "0")),
    )


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    """Wait until `check()` holds; a bound on waiting, not a timing assertion."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("the condition did not hold in time")
        await asyncio.sleep(0.1)


async def ride_through(
    harness: ProxyHarness,
    cached: list[TenantInfo],
    newcomer: TenantInfo,
    outage: Callable[[], Awaitable[None]],
    recovery: Callable[[], Awaitable[None]],
) -> None:
    """Keep traffic on `cached` through an outage; check `newcomer` is refused, then recovers."""
    for tenant in cached:
        assert await answer(harness, tenant.id) == (200, None, 0)
    errors: list[tuple[str, int, str | None]] = []
    stop = asyncio.Event()

    async def traffic() -> None:
        while not stop.is_set():
            for tenant in cached:
                status, code, _ = await answer(harness, tenant.id)
                if status != 200:
                    errors.append((tenant.id, status, code))
            await asyncio.sleep(0.02)

    running = asyncio.create_task(traffic())
    try:
        await outage()
        # Tokens live 2 s, records 1 s: each cached tenant needs a token refresh, hence its
        # credentials, while Vault is out; the stale records carry it.
        issued = harness.sim.tokens_issued()
        await eventually(lambda: _true(harness.sim.tokens_issued() >= issued + len(cached)))
        status, code, retry_after = await answer(harness, newcomer.id)
        assert (status, code) == (503, "vault_unavailable")
        assert retry_after >= 1
        # Still ready: cached tenants are served; the body and the gauge say Vault is out.
        readyz = await harness.admin.get("/readyz")
        assert (readyz.status, await readyz.json()) == (
            200,
            {"status": "ready", "vault": "unavailable"},
        )
        assert await _vault_up(harness) == 0

        await recovery()
        await eventually(lambda: _is_ok(harness, newcomer.id))
        readyz = await harness.admin.get("/readyz")
        assert await readyz.json() == {"status": "ready", "vault": "ok"}
        assert await _vault_up(harness) == 1
    finally:
        stop.set()
        await running
    assert errors == []
    assert harness.credentials.stale_served >= len(cached)


async def _true(value: bool) -> bool:
    return value


async def _is_ok(harness: ProxyHarness, tenant: str) -> bool:
    return (await answer(harness, tenant))[0] == 200


async def _vault_up(harness: ProxyHarness) -> float:
    text = await (await harness.admin.get("/metrics")).text()
    match = re.search(r"^genesys_proxy_vault_up (\S+)$", text, re.MULTILINE)
    assert match is not None, "no genesys_proxy_vault_up gauge"
    return float(match.group(1))


def short_lived(harness: ProxyHarness, names: list[str]) -> list[TenantInfo]:
    tenants = [harness.add_tenant(name, region=REGION) for name in names]
    for tenant in tenants:
        harness.sim.set_token_lifetime(tenant.client_id, 2)
    return tenants


# -- Vault outages ---------------------------------------------------------------------------------


async def test_vault_stopped_and_restarted_mid_traffic(
    bao_harness: ProxyHarness, dedicated_bao: DedicatedBao
) -> None:
    harness = bao_harness
    cached = short_lived(harness, ["a", "b", "c"])
    newcomer = harness.add_tenant("newcomer", region=REGION)
    dedicated_bao.tenants += [*cached, newcomer]
    # A dev server comes back empty and is re-seeded: the proxy reaches it through a relay that
    # keeps answering 503 until the data is back, as a real Vault (whose storage survives a
    # restart) would look. Otherwise a re-read in the empty moment rightly cuts tenants off.
    faults = VaultFaults(dedicated_bao.current.address)
    relay = TestServer(faults.app, host="127.0.0.1")
    await relay.start_server()
    address = str(relay.make_url("")).rstrip("/")
    await harness.start({"credentials": {"ttl": 1}, "vault": {"address": address}})

    async def outage() -> None:
        await asyncio.to_thread(dedicated_bao.stop)
        faults.status = 503

    async def recovery() -> None:
        await asyncio.to_thread(dedicated_bao.restart)
        faults.status = None

    try:
        await ride_through(harness, cached, newcomer, outage, recovery)
    finally:
        await relay.close()


async def test_sealed_vault_is_an_outage_until_unsealed(
    bao_harness: ProxyHarness, dedicated_bao: DedicatedBao
) -> None:
    harness = bao_harness
    cached = short_lived(harness, ["a", "b"])
    newcomer = harness.add_tenant("newcomer", region=REGION)
    await harness.start({"credentials": {"ttl": 1}})
    client = dedicated_bao.current.client()

    async def outage() -> None:
        await asyncio.to_thread(client.sys.seal)

    async def recovery() -> None:
        await asyncio.to_thread(client.sys.submit_unseal_key, dedicated_bao.unseal_key())

    await ride_through(harness, cached, newcomer, outage, recovery)


@pytest.mark.parametrize("status", [500, 503])
async def test_vault_answering_5xx_is_an_outage(
    harness: ProxyHarness, vault_faults: tuple[VaultFaults, str], status: int
) -> None:
    faults, address = vault_faults
    cached = short_lived(harness, ["a", "b"])
    newcomer = harness.add_tenant("newcomer", region=REGION)
    await harness.start({"credentials": {"ttl": 1}, "vault": {"address": address}})

    async def outage() -> None:
        faults.status = status

    async def recovery() -> None:
        faults.status = None

    await ride_through(harness, cached, newcomer, outage, recovery)


# -- Genesys login outages -------------------------------------------------------------------------

LOGIN_FAULTS = {
    "http-500": {"status": 500},
    "http-429-retry-after": {"status": 429, "retry_after": 3},
    "timeout": {"status": 200, "delay": 2.0},
    "empty-body": {"status": 200, "body": b""},
    "html": {"status": 200, "body": b"<html>maintenance</html>", "content_type": "text/html"},
    "no-expires-in": {"status": 200, "body": b'{"access_token": "x", "token_type": "bearer"}'},
}


@pytest.mark.parametrize("fault", LOGIN_FAULTS.values(), ids=LOGIN_FAULTS.keys())
async def test_login_outage_keeps_valid_tokens_and_fails_fast_without_one(
    harness: ProxyHarness, fault: dict[str, Any]
) -> None:
    warm = harness.add_tenant("warm")
    cold = harness.add_tenant("cold")
    await harness.start({"genesys": {"timeout": 0.5}})
    assert await answer(harness, warm.id) == (200, None, 0)
    harness.sim.inject_login_fault(**fault, count=10_000)
    least_retry_after = max(1, fault.get("retry_after", 1))

    started = time.monotonic()
    burst = await asyncio.gather(
        *(answer(harness, cold.id) for _ in range(40)),
        *(answer(harness, warm.id) for _ in range(40)),
    )
    after = [await answer(harness, cold.id) for _ in range(20)]
    elapsed = time.monotonic() - started

    cold_answers, warm_answers = burst[:40] + after, burst[40:]
    assert warm_answers == [(200, None, 0)] * 40
    for status, code, retry_after in cold_answers:
        assert (status, code) == (503, "token_unavailable")
        assert retry_after >= least_retry_after
    # The bound: one token request per backoff window, and no window is shorter than the
    # 1 s base; sixty app requests do not make sixty token requests.
    requests = harness.sim.token_requests(cold.client_id)
    assert 1 <= requests <= 1 + int(elapsed / BACKOFF_BASE)
    assert harness.sim.token_requests(warm.client_id) == 1

    harness.sim.clear_faults()
    await eventually(lambda: _is_ok(harness, cold.id))
    assert harness.sim.tokens_issued(cold.client_id) == 1


async def test_a_rejected_client_is_remembered_not_hammered(harness: ProxyHarness) -> None:
    bad = harness.add_tenant("bad", vault_secret="fake-wrong-secret")
    await harness.start()
    answers = [await answer(harness, bad.id) for _ in range(20)]
    assert {(status, code) for status, code, _ in answers} == {(502, "genesys_auth_failed")}
    assert harness.sim.token_requests(bad.client_id) == 1


# -- Upstream trouble ------------------------------------------------------------------------------


async def test_a_401_storm_under_concurrent_revocations_costs_one_refetch_each(
    harness: ProxyHarness,
) -> None:
    victim = harness.add_tenant("victim")
    bystander = harness.add_tenant("bystander")
    await harness.start()
    for tenant in (victim, bystander):
        assert await answer(harness, tenant.id) == (200, None, 0)

    async def post(tenant: TenantInfo, n: int) -> int:
        response = await harness.client.post(
            "/api/v2/sim/echo", data=f'{{"n": {n}}}'.encode(), headers={"X-Tenant-ID": tenant.id}
        )
        await response.read()
        return int(response.status)

    rounds = 5
    for _ in range(rounds):
        assert harness.sim.revoke_tokens(victim.client_id) == 1
        statuses = await asyncio.gather(
            *(post(victim, n) for n in range(30)),
            *(answer(harness, victim.id) for _ in range(30)),
            *(post(bystander, n) for n in range(10)),
        )
        assert [s if isinstance(s, int) else s[0] for s in statuses] == [200] * 70
    # Each revocation: one refetch, however many requests hit the 401 at once.
    assert harness.sim.token_requests(victim.client_id) == 1 + rounds
    assert harness.sim.token_requests(bystander.client_id) == 1
    assert harness.sim.api_401s() >= rounds


async def test_upstream_timeouts_are_not_retried(harness: ProxyHarness) -> None:
    acme = harness.add_tenant("acme")
    await harness.start({"genesys": {"timeout": 0.3}})
    answers = [await answer(harness, acme.id, "/api/v2/sim/slow?seconds=2") for _ in range(3)]
    assert {(status, code) for status, code, _ in answers} == {(504, "upstream_timeout")}
    # One upstream attempt per app request: a timeout is reported, not multiplied.
    assert harness.sim.api_requests(acme.client_id) == 3
    # The bound comes from the config: genesys.timeout is the upstream read timeout.
    timeout = harness.forwarder.settings.timeout
    assert (timeout.sock_read, timeout.sock_connect) == (0.3, 2)
