"""Tests of proxy.tenants.tokens: the token manager with fakes, the fetcher against real servers."""

from __future__ import annotations

import asyncio
import base64
import gc
import logging
import math
import secrets
import socket
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.errors import GenesysAuthFailed, ProxyError, TokenUnavailable, UnknownTenant
from proxy.simulator import GenesysSimulator
from proxy.tenants.credentials import TenantCredentials
from proxy.tenants.oauth import _parse_retry_after
from proxy.tenants.table import Tenant, TenantTable
from proxy.tenants.tokens import GenesysTokenFetcher, Token, TokenManager
from tests.conftest import FakeClock

SECRET = "fake-" + secrets.token_hex(12)  # made up per run, so a leak check cannot pass by luck
REGION = "mypurecloud.ie"


class FakeCredentials:
    """A credential provider over a dict, filling a tenant table; counts lookups per tenant."""

    def __init__(self, *tenants: str, table: TenantTable | None = None) -> None:
        self.table = table if table is not None else TenantTable()
        self.records = {t: TenantCredentials(t, f"client-{t}", SECRET, REGION) for t in tenants}
        self.lookups: Counter[str] = Counter()

    async def get(self, tenant: str) -> Tenant:
        self.lookups[tenant] += 1
        await asyncio.sleep(0)  # a real lookup yields; let concurrent callers pile up
        if tenant not in self.records:
            raise UnknownTenant(f"No credentials for tenant {tenant!r}.", tenant=tenant)
        entry = self.table.admit(tenant)
        entry.set_record(
            self.records[tenant], read_at=0.0, fresh_until=math.inf, keep_until=math.inf
        )
        return entry


class FakeFetcher:
    """A token fetcher that can be held at a gate and told to fail."""

    def __init__(self, clock: FakeClock, lifetime: float = 300.0) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.calls = 0
        self.gate: asyncio.Event | None = None
        self.errors: list[Exception] = []

    async def fetch(self, credentials: TenantCredentials) -> Token:
        self.calls += 1
        number = self.calls
        obtained_at = self.clock()
        if self.gate is not None:
            await self.gate.wait()
        if self.errors:
            raise self.errors.pop(0)
        return Token(
            value=f"token-{credentials.tenant}-{number}",
            tenant=credentials.tenant,
            domain=credentials.region,
            lifetime=self.lifetime,
            obtained_at=obtained_at,
            obtained_wall=1_700_000_000.0 + obtained_at,
        )


async def until(condition: Callable[[], bool], *, rounds: int = 1_000) -> None:
    """Let the event loop run until `condition` holds (no real-time sleeping)."""
    for _ in range(rounds):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never became true")


def state_of(manager: TokenManager, tenant: str) -> str | None:
    """The tenant's token state name as the admin page would show it."""
    state = manager.state(tenant)
    return None if state is None else state.state


def unavailable(tenant: str = "acme") -> TokenUnavailable:
    return TokenUnavailable("The Genesys token endpoint failed (HTTP 503).", tenant=tenant)


@pytest.fixture
def credentials() -> FakeCredentials:
    return FakeCredentials("acme", "globex", "initech", "umbrella")


@pytest.fixture
def fetcher(clock: FakeClock) -> FakeFetcher:
    return FakeFetcher(clock)


@pytest.fixture
async def manager(
    credentials: FakeCredentials, fetcher: FakeFetcher, clock: FakeClock
) -> AsyncIterator[TokenManager]:
    manager = TokenManager(
        credentials.table,
        credentials,
        fetcher,
        refresh_at=0.8,
        rejected_ttl=10.0,
        clock=clock,
        jitter=lambda: 0.0,
    )
    yield manager
    await manager.close()


# -- Token ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lifetime", "margin"),
    [(300.0, 30.0), (86_400.0, 30.0), (120.0, 12.0), (10.0, 1.0)],
)
def test_token_counts_as_expired_min_30s_or_10_percent_early(
    lifetime: float, margin: float
) -> None:
    token = Token("v", "acme", REGION, lifetime, obtained_at=100.0, obtained_wall=5.0)
    assert token.expires_at == 100.0 + lifetime
    assert token.usable_until == pytest.approx(100.0 + lifetime - margin)
    assert token.seconds_left(100.0) == pytest.approx(lifetime - margin)
    assert token.seconds_left(token.expires_at) == 0.0
    assert token.refresh_due(0.8) == pytest.approx(100.0 + 0.8 * lifetime)


def test_token_repr_hides_the_value() -> None:
    token = Token("very-secret-token", "acme", REGION, 300.0, obtained_at=1.0, obtained_wall=2.0)
    assert "very-secret-token" not in repr(token)
    assert "very-secret-token" not in str(token)


# -- TokenManager: caching and single-flight -----------------------------------------------------


async def test_cached_token_is_reused(manager: TokenManager, fetcher: FakeFetcher) -> None:
    first = await manager.get("acme")
    second = await manager.get("acme")
    assert second is first
    assert fetcher.calls == 1
    assert manager.fetches == 1


async def test_cached_token_is_returned_without_yielding_to_the_loop(
    manager: TokenManager,
) -> None:
    token = await manager.get("acme")
    coro = manager.get("acme")
    # The hot path finishes on the first step: no await reaches the event loop.
    with pytest.raises(StopIteration) as stop:
        coro.send(None)
    assert stop.value.value is token


async def test_concurrent_cold_requests_share_one_token_fetch(
    manager: TokenManager, fetcher: FakeFetcher, credentials: FakeCredentials
) -> None:
    fetcher.gate = asyncio.Event()
    callers = [asyncio.create_task(manager.get("acme")) for _ in range(200)]
    await until(lambda: fetcher.calls == 1)
    fetcher.gate.set()
    tokens = await asyncio.gather(*callers)
    assert {id(t) for t in tokens} == {id(tokens[0])}
    assert fetcher.calls == 1
    assert manager.fetches == 1


async def test_cold_requests_for_different_tenants_fetch_separately(
    manager: TokenManager, fetcher: FakeFetcher
) -> None:
    acme, globex = await asyncio.gather(manager.get("acme"), manager.get("globex"))
    assert (acme.tenant, globex.tenant) == ("acme", "globex")
    assert fetcher.calls == 2


async def test_cancelled_caller_does_not_strand_the_rest(
    manager: TokenManager, fetcher: FakeFetcher
) -> None:
    fetcher.gate = asyncio.Event()
    first = asyncio.create_task(manager.get("acme"))
    await until(lambda: fetcher.calls == 1)
    others = [asyncio.create_task(manager.get("acme")) for _ in range(5)]
    await asyncio.sleep(0)
    # The caller that started the fetch gives up; the fetch must go on for the others.
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    fetcher.gate.set()
    tokens = await asyncio.gather(*others)
    assert all(t is tokens[0] for t in tokens)
    assert fetcher.calls == 1


async def test_fetch_finishes_and_is_cached_even_if_every_caller_gave_up(
    manager: TokenManager, fetcher: FakeFetcher
) -> None:
    fetcher.gate = asyncio.Event()
    caller = asyncio.create_task(manager.get("acme"))
    await until(lambda: fetcher.calls == 1)
    caller.cancel()
    fetcher.gate.set()
    await until(lambda: state_of(manager, "acme") == "valid")
    await manager.get("acme")
    assert fetcher.calls == 1


async def test_failure_with_no_waiters_left_is_not_reported_as_unretrieved(
    manager: TokenManager, fetcher: FakeFetcher
) -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        fetcher.gate = asyncio.Event()
        fetcher.errors = [unavailable()]
        caller = asyncio.create_task(manager.get("acme"))
        await until(lambda: fetcher.calls == 1)
        caller.cancel()
        fetcher.gate.set()
        await until(lambda: state_of(manager, "acme") == "failing")
        for _ in range(3):
            await asyncio.sleep(0)
        gc.collect()
        assert reported == []
    finally:
        loop.set_exception_handler(None)


async def test_failure_reaches_every_waiter_then_the_next_call_retries_after_the_backoff(
    manager: TokenManager, fetcher: FakeFetcher, clock: FakeClock
) -> None:
    fetcher.gate = asyncio.Event()
    fetcher.errors = [unavailable()]
    callers = [asyncio.create_task(manager.get("acme")) for _ in range(10)]
    await until(lambda: fetcher.calls == 1)
    fetcher.gate.set()
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert all(isinstance(r, TokenUnavailable) for r in results)
    assert fetcher.calls == 1

    clock.advance(1.0)  # the backoff floor with this fixture's jitter of 0
    token = await manager.get("acme")
    assert token.value == "token-acme-2"
    assert fetcher.calls == 2


async def test_credential_errors_propagate_unchanged(
    manager: TokenManager, fetcher: FakeFetcher
) -> None:
    with pytest.raises(UnknownTenant) as caught:
        await manager.get("nobody")
    assert caught.value.tenant == "nobody"
    assert fetcher.calls == 0
    # A tenant without credentials takes no place in the bounded bookkeeping.
    assert manager.state("nobody") is None


# -- TokenManager: refresh ahead and expiry ------------------------------------------------------


async def test_refresh_ahead_happens_in_the_background_at_refresh_at(
    manager: TokenManager, fetcher: FakeFetcher, clock: FakeClock
) -> None:
    old = await manager.get("acme")
    clock.advance(0.8 * 300 - 1)
    assert await manager.get("acme") is old
    await asyncio.sleep(0)
    assert fetcher.calls == 1

    clock.advance(1)
    fetcher.gate = asyncio.Event()
    # The caller gets the current token at once, though the refresh is still held at the gate.
    assert await manager.get("acme") is old
    await until(lambda: fetcher.calls == 2)
    assert state_of(manager, "acme") == "refreshing"
    # More requests during the refresh neither wait nor start another one.
    assert await manager.get("acme") is old
    fetcher.gate.set()
    await until(lambda: state_of(manager, "acme") == "valid")

    new = await manager.get("acme")
    assert new is not old
    assert new.value == "token-acme-2"
    assert fetcher.calls == 2


@pytest.mark.parametrize(("lifetime", "margin"), [(300.0, 30.0), (86_400.0, 30.0), (120.0, 12.0)])
async def test_token_expired_by_the_margin_is_never_returned(
    credentials: FakeCredentials, clock: FakeClock, lifetime: float, margin: float
) -> None:
    fetcher = FakeFetcher(clock, lifetime=lifetime)
    # refresh_at=1.0: no refresh ahead, so only the expiry margin decides.
    manager = TokenManager(credentials.table, credentials, fetcher, refresh_at=1.0, clock=clock)
    try:
        old = await manager.get("acme")
        clock.advance(lifetime - margin - 0.001)
        assert await manager.get("acme") is old
        assert fetcher.calls == 1

        clock.advance(0.001)
        fetcher.gate = asyncio.Event()
        caller = asyncio.create_task(manager.get("acme"))
        await until(lambda: fetcher.calls == 2)
        assert not caller.done()  # it waits for the new token rather than take the old one
        fetcher.gate.set()
        assert (await caller).value == "token-acme-2"
    finally:
        await manager.close()


async def test_expired_token_is_not_returned_when_the_fetch_fails(
    manager: TokenManager, fetcher: FakeFetcher, clock: FakeClock
) -> None:
    await manager.get("acme")
    clock.advance(270)
    fetcher.errors = [unavailable()]
    with pytest.raises(TokenUnavailable):
        await manager.get("acme")
    assert state_of(manager, "acme") == "failing"


async def test_failed_background_refresh_keeps_the_old_token(
    manager: TokenManager,
    fetcher: FakeFetcher,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="proxy.tenants.tokens")
    old = await manager.get("acme")
    clock.advance(240)
    fetcher.errors = [unavailable(), unavailable()]
    assert await manager.get("acme") is old
    await until(lambda: state_of(manager, "acme") == "failing")
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "keeping the current token" in warning.getMessage()
    assert fetcher.calls == 2

    # Within the retry floor no new refresh starts.
    clock.advance(0.5)
    assert await manager.get("acme") is old
    await asyncio.sleep(0)
    assert fetcher.calls == 2

    clock.advance(0.6)
    assert await manager.get("acme") is old
    await until(lambda: fetcher.calls == 3)
    await until(lambda: state_of(manager, "acme") == "failing")

    clock.advance(1.1)
    assert await manager.get("acme") is old
    await until(lambda: state_of(manager, "acme") == "valid")
    new = await manager.get("acme")
    assert new.value == "token-acme-4"
    assert all(
        old.value not in r.getMessage() and SECRET not in r.getMessage() for r in caplog.records
    )


async def test_unexpected_error_in_background_refresh_is_logged_and_floored(
    manager: TokenManager,
    fetcher: FakeFetcher,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    old = await manager.get("acme")
    clock.advance(240)
    fetcher.errors = [RuntimeError("bug with " + SECRET)]
    assert await manager.get("acme") is old
    await until(lambda: state_of(manager, "acme") == "failing")
    [record] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "Unexpected RuntimeError" in record.getMessage()
    assert record.exc_info is not None  # a bug: keep its traceback
    state = manager.state("acme")
    assert state is not None
    assert state.last_error_code == "internal_error"
    assert SECRET not in repr(state)
    assert await manager.get("acme") is old
    await asyncio.sleep(0)
    assert fetcher.calls == 2


# -- TokenManager: rejection, invalidation, eviction ---------------------------------------------


async def test_rejected_client_is_remembered_for_rejected_ttl(
    manager: TokenManager, fetcher: FakeFetcher, clock: FakeClock
) -> None:
    fetcher.errors = [GenesysAuthFailed("The token endpoint rejected the client.", tenant="acme")]
    with pytest.raises(GenesysAuthFailed):
        await manager.get("acme")
    clock.advance(9.9)
    for _ in range(5):
        with pytest.raises(GenesysAuthFailed) as caught:
            await manager.get("acme")
        assert caught.value.tenant == "acme"
    assert fetcher.calls == 1
    state = manager.state("acme")
    assert state is not None
    assert (state.state, state.last_error_code) == ("failing", "genesys_auth_failed")

    clock.advance(0.1)
    token = await manager.get("acme")
    assert fetcher.calls == 2
    assert state_of(manager, "acme") == "valid"
    assert token.value == "token-acme-2"


async def test_admin_refresh_bypasses_a_remembered_rejection(
    manager: TokenManager, fetcher: FakeFetcher
) -> None:
    fetcher.errors = [GenesysAuthFailed("The token endpoint rejected the client.", tenant="acme")]
    with pytest.raises(GenesysAuthFailed):
        await manager.get("acme")
    token = await manager.refresh("acme")
    assert fetcher.calls == 2
    assert await manager.get("acme") is token


async def test_admin_refresh_fetches_a_new_token_now(
    manager: TokenManager, fetcher: FakeFetcher
) -> None:
    old = await manager.get("acme")
    fetcher.gate = asyncio.Event()
    refreshes = [asyncio.create_task(manager.refresh("acme")) for _ in range(3)]
    await until(lambda: fetcher.calls == 2)
    fetcher.gate.set()
    new = await asyncio.gather(*refreshes)
    assert all(t is new[0] for t in new)
    assert new[0] is not old
    assert await manager.get("acme") is new[0]
    assert fetcher.calls == 2


async def test_invalidate_is_compare_and_drop(manager: TokenManager, fetcher: FakeFetcher) -> None:
    stale = await manager.get("acme")
    fetcher.gate = asyncio.Event()
    dropped: list[bool] = []

    async def handle_401() -> Token:
        # What the forwarder does when Genesys answers 401 to a request sent with `stale`.
        await asyncio.sleep(0)
        dropped.append(manager.invalidate("acme", stale))
        return await manager.get("acme")

    handlers = [asyncio.create_task(handle_401()) for _ in range(20)]
    await until(lambda: fetcher.calls == 2)
    fetcher.gate.set()
    tokens = await asyncio.gather(*handlers)
    assert dropped.count(True) == 1
    assert fetcher.calls == 2
    assert all(t is tokens[0] and t is not stale for t in tokens)
    # A late 401 for the stale token leaves the new one alone.
    assert manager.invalidate("acme", stale) is False
    assert await manager.get("acme") is tokens[0]


async def test_invalidate_without_a_token_drops_whatever_is_cached(
    manager: TokenManager, fetcher: FakeFetcher
) -> None:
    assert manager.invalidate("acme") is False
    await manager.get("acme")
    assert manager.invalidate("acme") is True
    assert manager.invalidate("acme") is False
    await manager.get("acme")
    assert fetcher.calls == 2


async def test_evict_forgets_token_and_rejection(
    manager: TokenManager, fetcher: FakeFetcher
) -> None:
    await manager.get("acme")
    manager.evict("acme")
    assert manager.state("acme") is None
    await manager.get("acme")
    assert fetcher.calls == 2

    fetcher.errors = [GenesysAuthFailed("rejected", tenant="globex")]
    with pytest.raises(GenesysAuthFailed):
        await manager.get("globex")
    manager.evict("globex")
    await manager.get("globex")
    assert fetcher.calls == 4


async def test_token_fetched_across_an_evict_is_not_cached(
    manager: TokenManager, fetcher: FakeFetcher
) -> None:
    await manager.get("acme")
    fetcher.gate = asyncio.Event()
    refresh = asyncio.create_task(manager.refresh("acme"))
    await until(lambda: fetcher.calls == 2)
    manager.evict("acme")
    fetcher.gate.set()
    assert (await refresh).value == "token-acme-2"  # its caller still gets it
    assert manager.state("acme") is None


async def test_token_cache_is_bounded_least_recently_used_first(
    credentials: FakeCredentials, fetcher: FakeFetcher, clock: FakeClock
) -> None:
    credentials.table = TenantTable(3)  # the table's bound is the one bound
    manager = TokenManager(credentials.table, credentials, fetcher, clock=clock)
    try:
        for tenant in ("acme", "globex", "initech"):
            await manager.get(tenant)
        await manager.get("acme")  # now globex is the least recently used
        await manager.get("umbrella")
        assert [s.tenant for s in manager.snapshot()] == ["acme", "initech", "umbrella"]
        assert fetcher.calls == 4
        await manager.get("acme")
        assert fetcher.calls == 4
        await manager.get("globex")
        assert fetcher.calls == 5
        assert len(manager.snapshot()) == 3
    finally:
        await manager.close()


async def test_rejections_are_bounded_too(
    credentials: FakeCredentials, fetcher: FakeFetcher, clock: FakeClock
) -> None:
    credentials.table = TenantTable(2)  # the table's bound is the one bound
    manager = TokenManager(credentials.table, credentials, fetcher, clock=clock)
    try:
        for tenant in ("acme", "globex", "initech", "umbrella"):
            fetcher.errors = [GenesysAuthFailed("rejected", tenant=tenant)]
            with pytest.raises(GenesysAuthFailed):
                await manager.get(tenant)
        assert [s.tenant for s in manager.snapshot()] == ["initech", "umbrella"]
    finally:
        await manager.close()


# -- TokenManager: admin view and shutdown -------------------------------------------------------


async def test_snapshot_describes_each_tenant_without_the_token(
    manager: TokenManager, fetcher: FakeFetcher, clock: FakeClock
) -> None:
    acme = await manager.get("acme")
    fetcher.errors = [unavailable("globex")]
    with pytest.raises(TokenUnavailable):
        await manager.get("globex")
    await manager.get("initech")
    clock.advance(100)

    states = {s.tenant: s for s in manager.snapshot()}
    assert set(states) == {"acme", "globex", "initech"}
    assert states["acme"].state == "valid"
    assert states["acme"].domain == REGION
    assert states["acme"].seconds_left == pytest.approx(170.0)
    assert states["acme"].last_refresh == acme.obtained_wall
    assert states["acme"].fetches == 1
    assert states["globex"].state == "failing"
    assert states["globex"].last_error_code == "token_unavailable"
    assert states["globex"].last_error_message
    assert states["globex"].seconds_left == 0.0

    clock.advance(200)
    assert state_of(manager, "acme") == "expired"
    assert acme.value not in repr(manager.snapshot())
    assert SECRET not in repr(manager.snapshot())


async def test_close_cancels_background_refreshes_and_leaves_no_tasks(
    credentials: FakeCredentials, fetcher: FakeFetcher, clock: FakeClock
) -> None:
    manager = TokenManager(credentials.table, credentials, fetcher, clock=clock)
    await manager.get("acme")
    await manager.get("globex")
    clock.advance(250)
    fetcher.gate = asyncio.Event()
    await manager.get("acme")
    await manager.get("globex")
    cold = asyncio.create_task(manager.get("initech"))
    await until(lambda: fetcher.calls == 5)

    await manager.close()
    with pytest.raises(asyncio.CancelledError):
        await cold
    assert asyncio.all_tasks() == {asyncio.current_task()}
    # After close, requests still get the valid tokens but start no background work.
    await manager.get("acme")
    assert asyncio.all_tasks() == {asyncio.current_task()}


def test_manager_rejects_nonsense_settings(
    credentials: FakeCredentials, fetcher: FakeFetcher
) -> None:
    with pytest.raises(ValueError, match="refresh_at"):
        TokenManager(credentials.table, credentials, fetcher, refresh_at=0)
    with pytest.raises(ValueError, match="max_tenants"):
        TenantTable(0)


# -- GenesysTokenFetcher against the simulator ---------------------------------------------------


def assert_no_secrets(exc: BaseException, *secrets: str) -> None:
    """Neither the error nor anything it chains to may show a secret in str() or repr()."""
    seen: BaseException | None = exc
    while seen is not None:
        for text in (str(seen), repr(seen), *(str(a) for a in seen.args)):
            for secret in secrets:
                assert secret not in text
        seen = seen.__cause__ or seen.__context__


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def sim() -> AsyncIterator[GenesysSimulator]:
    simulator = GenesysSimulator()
    simulator.add_client("client-acme", SECRET, domain=REGION, token_lifetime=600)
    async with simulator.running() as running:
        yield running


def make_fetcher(
    session: aiohttp.ClientSession, template: str, *, timeout: float = 5.0
) -> GenesysTokenFetcher:
    return GenesysTokenFetcher(
        session,
        template,
        timeout=timeout,
        connect_timeout=timeout,
        clock=lambda: 42.0,
        wall_clock=lambda: 1_700_000_000.0,
    )


ACME = TenantCredentials("acme", "client-acme", SECRET, REGION)


async def test_fetcher_gets_a_token_from_the_login_service(
    sim: GenesysSimulator, session: aiohttp.ClientSession
) -> None:
    token = await make_fetcher(session, sim.login_url_template).fetch(ACME)
    assert token.value in sim.issued_tokens()
    assert (token.tenant, token.domain, token.lifetime) == ("acme", REGION, 600.0)
    assert (token.obtained_at, token.obtained_wall) == (42.0, 1_700_000_000.0)
    assert sim.token_requests("client-acme") == 1


@pytest.mark.parametrize(
    "credentials",
    [
        TenantCredentials("acme", "client-acme", "wrong-" + SECRET, REGION),
        TenantCredentials("acme", "client-unknown", SECRET, REGION),
        TenantCredentials("acme", "client-acme", SECRET, "mypurecloud.de"),
    ],
    ids=["wrong-secret", "unknown-client", "wrong-region"],
)
async def test_fetcher_reports_a_rejected_client(
    sim: GenesysSimulator, session: aiohttp.ClientSession, credentials: TenantCredentials
) -> None:
    with pytest.raises(GenesysAuthFailed) as caught:
        await make_fetcher(session, sim.login_url_template).fetch(credentials)
    assert "acme" in caught.value.message
    assert credentials.region in caught.value.message
    assert "invalid_client" in caught.value.message
    assert caught.value.tenant == "acme"
    assert_no_secrets(caught.value, credentials.client_secret)


async def test_fetcher_reports_rate_limiting_with_retry_after(
    sim: GenesysSimulator, session: aiohttp.ClientSession
) -> None:
    sim.inject_login_fault(status=429, retry_after=17)
    with pytest.raises(TokenUnavailable) as caught:
        await make_fetcher(session, sim.login_url_template).fetch(ACME)
    assert caught.value.retry_after == 17.0
    assert_no_secrets(caught.value, SECRET)


async def test_fetcher_reports_the_real_token_rate_limit(session: aiohttp.ClientSession) -> None:
    simulator = GenesysSimulator(token_requests_per_minute=1)
    simulator.add_client("client-acme", SECRET, domain=REGION)
    async with simulator.running() as sim:
        fetcher = make_fetcher(session, sim.login_url_template)
        await fetcher.fetch(ACME)
        with pytest.raises(TokenUnavailable) as caught:
            await fetcher.fetch(ACME)
    assert caught.value.retry_after is not None
    assert 0 < caught.value.retry_after <= 60


@pytest.mark.parametrize(
    ("status", "body", "content_type"),
    [
        (503, None, "application/json"),
        (500, b"", "application/json"),
        (502, b"<html><body>Bad Gateway</body></html>", "text/html"),
        (504, b"upstream timed out", "text/plain"),
    ],
)
async def test_fetcher_reports_server_errors_as_token_unavailable(
    sim: GenesysSimulator,
    session: aiohttp.ClientSession,
    status: int,
    body: bytes | None,
    content_type: str,
) -> None:
    sim.inject_login_fault(status=status, body=body, content_type=content_type, retry_after=3)
    with pytest.raises(TokenUnavailable) as caught:
        await make_fetcher(session, sim.login_url_template).fetch(ACME)
    assert f"HTTP {status}" in caught.value.message
    assert caught.value.retry_after == 3.0
    assert_no_secrets(caught.value, SECRET)


async def test_fetcher_times_out(sim: GenesysSimulator, session: aiohttp.ClientSession) -> None:
    sim.inject_login_fault(status=200, delay=0.3)
    with pytest.raises(TokenUnavailable, match="did not answer in time") as caught:
        await make_fetcher(session, sim.login_url_template, timeout=0.05).fetch(ACME)
    assert isinstance(caught.value.__cause__, TimeoutError)
    assert_no_secrets(caught.value, SECRET)


async def test_fetcher_reports_connection_refused(session: aiohttp.ClientSession) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    template = f"http://127.0.0.1:{port}/login/{{domain}}"
    with pytest.raises(TokenUnavailable, match="could not be reached") as caught:
        await make_fetcher(session, template).fetch(ACME)
    assert isinstance(caught.value.__cause__, aiohttp.ClientError)
    assert_no_secrets(caught.value, SECRET)


# -- GenesysTokenFetcher against a scripted login service ----------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def login_service() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    """Serve one handler at /login/{domain}/oauth/token; returns the login URL template."""
    servers: list[TestServer] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_post("/login/{domain}/oauth/token", handler)
        app.router.add_route("*", "/elsewhere", handler)
        server = TestServer(app)
        await server.start_server()
        servers.append(server)
        return f"http://{server.host}:{server.port}/login/{{domain}}"

    yield start
    for server in servers:
        await server.close()


async def test_fetcher_sends_exactly_what_genesys_expects(
    login_service: Callable[[Handler], Awaitable[str]], session: aiohttp.ClientSession
) -> None:
    seen: list[tuple[str, str, dict[str, str], bytes]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append((request.method, request.path, dict(request.headers), await request.read()))
        return web.json_response(
            {"access_token": "tok", "token_type": "bearer", "expires_in": 86400}
        )

    template = await login_service(handler)
    token = await make_fetcher(session, template).fetch(ACME)
    assert token.lifetime == 86400.0

    [(method, path, headers, body)] = seen
    assert (method, path) == ("POST", f"/login/{REGION}/oauth/token")
    expected = base64.b64encode(f"client-acme:{SECRET}".encode()).decode()
    assert headers["Authorization"] == f"Basic {expected}"
    assert headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert body == b"grant_type=client_credentials"


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"<html><body>Sign in</body></html>", "text/html"),
        (b"", "application/json"),
        (b"not json", "application/json"),
        (b'["access_token"]', "application/json"),
        (b'{"access_token": "tok-Zq9", "token_type": "bearer"}', "application/json"),
        (b'{"access_token": "tok-Zq9", "expires_in": 0}', "application/json"),
        (b'{"access_token": "tok-Zq9", "expires_in": -5}', "application/json"),
        (b'{"access_token": "tok-Zq9", "expires_in": "300"}', "application/json"),
        (b'{"access_token": "tok-Zq9", "expires_in": true}', "application/json"),
        (b'{"access_token": "tok-Zq9", "expires_in": NaN}', "application/json"),
        (b'{"access_token": "", "expires_in": 300}', "application/json"),
        (b'{"access_token": 12345, "expires_in": 300}', "application/json"),
        (b'{"expires_in": 300}', "application/json"),
    ],
    ids=[
        "html",
        "empty",
        "not-json",
        "array",
        "no-expires_in",
        "zero-expires_in",
        "negative-expires_in",
        "string-expires_in",
        "bool-expires_in",
        "nan-expires_in",
        "empty-token",
        "number-token",
        "no-token",
    ],
)
async def test_fetcher_reports_a_malformed_answer(
    login_service: Callable[[Handler], Awaitable[str]],
    session: aiohttp.ClientSession,
    body: bytes,
    content_type: str,
) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=content_type)

    template = await login_service(handler)
    with pytest.raises(TokenUnavailable, match="malformed") as caught:
        await make_fetcher(session, template).fetch(ACME)
    assert caught.value.tenant == "acme"
    assert_no_secrets(caught.value, SECRET, "tok-Zq9")


@pytest.mark.parametrize(
    ("status", "error", "expected"),
    [
        (401, "invalid_client", GenesysAuthFailed),
        (403, "unauthorized_client", GenesysAuthFailed),
        (400, "invalid_request", TokenUnavailable),
        (401, None, TokenUnavailable),
        (404, None, TokenUnavailable),
    ],
)
async def test_fetcher_tells_a_bad_client_from_other_client_errors(
    login_service: Callable[[Handler], Awaitable[str]],
    session: aiohttp.ClientSession,
    status: int,
    error: str | None,
    expected: type[ProxyError],
) -> None:
    async def handler(request: web.Request) -> web.Response:
        if error is None:
            return web.Response(status=status, text="nope")
        return web.json_response({"error": error, "error_description": SECRET}, status=status)

    template = await login_service(handler)
    with pytest.raises(ProxyError) as caught:
        await make_fetcher(session, template).fetch(ACME)
    assert type(caught.value) is expected
    assert_no_secrets(caught.value, SECRET)


async def test_fetcher_does_not_follow_redirects(
    login_service: Callable[[Handler], Awaitable[str]], session: aiohttp.ClientSession
) -> None:
    paths: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        paths.append(request.path)
        raise web.HTTPFound("/elsewhere")

    template = await login_service(handler)
    with pytest.raises(TokenUnavailable, match="HTTP 302"):
        await make_fetcher(session, template).fetch(ACME)
    assert paths == [f"/login/{REGION}/oauth/token"]


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    now = 1_700_000_000.0
    assert _parse_retry_after("17", now) == 17.0
    assert _parse_retry_after("Tue, 14 Nov 2023 22:13:40 GMT", now) == 20.0
    assert _parse_retry_after("Tue, 14 Nov 2023 22:00:00 GMT", now) == 0.0
    assert _parse_retry_after(None, now) is None
    assert _parse_retry_after("soon", now) is None
    assert _parse_retry_after("inf", now) is None
