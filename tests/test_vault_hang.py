"""A Vault that hangs (OpenBao frozen with SIGSTOP) is not a queue (issue 10, item 5).

The reproduction: with OpenBao frozen, 64 requests for uncached tenants waited 5-40 s each and
`/readyz` took 44 s. Now each waits at most `vault.timeout`, then Vault is known down: later
requests for uncached tenants get 503 `vault_unavailable` at once while one probe a second checks
whether it is back; cached tenants and `/readyz` never wait on it.

The OpenBao here is this module's own (the session's shared server is never frozen); every test
resumes it (SIGCONT) before it ends, by pid.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from proxy.simulator import GenesysSimulator
from proxy.tenants.credentials import VaultCredentialSource
from proxy.vault.session import DEFAULT_WORKERS, VaultSession
from tests.conftest import OpenBao, ProxyHarness, start_openbao, stop_openbao

ME = "/api/v2/organizations/me"
COLD_TENANTS = 64
# Small, so the test is quick; the assertions are on counts and states, not on durations.
VAULT_TIMEOUT = 2


@pytest.fixture(scope="module")
def frozen_bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBao]:
    bao = start_openbao(tmp_path_factory.mktemp("frozen-openbao"))
    try:
        yield bao
    finally:
        os.kill(bao.process.pid, signal.SIGCONT)  # a stopped process ignores SIGTERM
        stop_openbao(bao)


class Freezer:
    """SIGSTOP / SIGCONT one OpenBao by pid; always resumed at the end of the test."""

    def __init__(self, bao: OpenBao) -> None:
        self.pid = bao.process.pid
        self.frozen = False

    def freeze(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        os.kill(self.pid, signal.SIGCONT)
        self.frozen = False


@pytest.fixture
def freezer(frozen_bao: OpenBao) -> Iterator[Freezer]:
    freezer = Freezer(frozen_bao)
    try:
        yield freezer
    finally:
        if freezer.frozen:
            freezer.thaw()


@pytest.fixture
def hang_harness(
    sim: GenesysSimulator, frozen_bao: OpenBao, aiohttp_client: Any, tenant_prefix: str
) -> ProxyHarness:
    return ProxyHarness(sim, frozen_bao, aiohttp_client, prefix=tenant_prefix)


def session_of(harness: ProxyHarness) -> VaultSession:
    source = harness.source
    assert isinstance(source, VaultCredentialSource)
    return source.session


async def answer(harness: ProxyHarness, tenant: str) -> tuple[int, str | None, bool]:
    """(status, X-Proxy-Error, whether Retry-After was set) of one proxied request."""
    response = await harness.client.get(ME, headers={"X-Tenant-ID": tenant})
    await response.read()
    return response.status, response.headers.get("X-Proxy-Error"), "Retry-After" in response.headers


async def readyz(harness: ProxyHarness) -> tuple[int, Any]:
    response = await harness.admin.get("/readyz")
    return response.status, await response.json()


async def metric(harness: ProxyHarness, pattern: str) -> float:
    """The sum of every sample of /metrics whose line matches `pattern` (0 if none)."""
    text = await (await harness.admin.get("/metrics")).text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if not line.startswith("#") and re.match(pattern, line)
    )


def vault_reads(harness: ProxyHarness) -> Any:
    return metric(harness, r'genesys_proxy_vault_requests_total\{operation="read"')


async def until(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Wait for an event (bounded; not a timing assertion)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, f"{what} did not happen"
        await asyncio.sleep(0.02)


async def test_frozen_vault_answers_64_cold_requests_each_within_the_timeout_not_a_queue(
    hang_harness: ProxyHarness, freezer: Freezer
) -> None:
    harness = hang_harness
    cached = harness.add_tenant("cached")
    cold = [harness.add_tenant(f"cold{n}") for n in range(COLD_TENANTS)]
    await harness.start({"vault": {"timeout": VAULT_TIMEOUT}})
    session = session_of(harness)
    assert await answer(harness, cached.id) == (200, None, False)
    reads_before = await vault_reads(harness)

    freezer.freeze()
    requests = [asyncio.create_task(answer(harness, tenant.id)) for tenant in cold]
    # Every cold request is now waiting on the frozen Vault (or on a worker to ask it).
    await until(lambda: session.calls_in_flight >= COLD_TENANTS, "64 Vault calls in flight")
    # Readiness answers from state, at once: before any of the 64 has given up.
    assert await readyz(harness) == (200, {"status": "ready", "vault": "ok"})
    assert not any(request.done() for request in requests)
    # So do cached tenants: their record and token need no Vault.
    assert await answer(harness, cached.id) == (200, None, False)
    assert not any(request.done() for request in requests)

    answers = await asyncio.gather(*requests)
    assert answers == [(503, "vault_unavailable", True)] * COLD_TENANTS
    # Only the calls that got a worker reached Vault; the rest gave up in the queue and were
    # dropped from it, never sent.
    reached = await vault_reads(harness) - reads_before
    assert 1 <= reached <= DEFAULT_WORKERS
    assert not session.available

    # Vault is known down: cold requests are answered at once, without another Vault read.
    probes = session.probes
    again = await asyncio.gather(*(answer(harness, tenant.id) for tenant in cold[:16]))
    assert again == [(503, "vault_unavailable", True)] * 16
    assert await vault_reads(harness) - reads_before == reached
    assert session.calls_in_flight <= 1  # at most the one probe
    assert session.probes <= probes + 1
    assert await answer(harness, cached.id) == (200, None, False)
    assert await readyz(harness) == (200, {"status": "ready", "vault": "unavailable"})
    assert await metric(harness, r"genesys_proxy_vault_up ") == 0

    freezer.thaw()
    # One probe finds Vault back: normal service resumes without a restart.
    await until(lambda: session.available, "the probe to find Vault back")
    assert await answer(harness, cold[0].id) == (200, None, False)
    assert await readyz(harness) == (200, {"status": "ready", "vault": "ok"})
    assert await metric(harness, r"genesys_proxy_vault_up ") == 1
    # OpenBao's own audit log: the 64 cold tenants cost at most a worker pool's worth of
    # reads while it was frozen (plus the one after it came back).
    assert sum(harness.vault.reads_of(tenant.id) for tenant in cold) <= DEFAULT_WORKERS + 1


async def test_a_proxy_started_against_a_frozen_vault_is_starting_until_it_answers(
    hang_harness: ProxyHarness, freezer: Freezer
) -> None:
    harness = hang_harness
    acme = harness.add_tenant("acme")
    freezer.freeze()
    # Startup's first probe gives up after vault.timeout: the proxy starts, not ready.
    await harness.start({"vault": {"timeout": VAULT_TIMEOUT}})
    session = session_of(harness)
    assert await readyz(harness) == (503, {"status": "starting"})
    assert await answer(harness, acme.id) == (503, "vault_unavailable", True)
    assert session.calls_in_flight <= 1

    freezer.thaw()
    # No request is needed: the probe loop logs in and looks the token up by itself, which is
    # what a startup probe on /readyz waits for.
    await until(lambda: session.worked, "the probe to reach Vault")
    assert await readyz(harness) == (200, {"status": "ready", "vault": "ok"})
    assert await answer(harness, acme.id) == (200, None, False)
