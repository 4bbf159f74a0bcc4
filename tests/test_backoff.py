"""The token manager under a failing token endpoint: per-tenant capped exponential backoff."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable

import pytest

from proxy.errors import TokenUnavailable, VaultUnavailable
from proxy.tenants.tokens import RETRY_AFTER_CAP, TokenManager
from tests.conftest import FakeClock
from tests.test_tokens import FakeCredentials, FakeFetcher, state_of, unavailable, until


def manager_with(
    credentials: FakeCredentials,
    fetcher: FakeFetcher,
    clock: FakeClock,
    jitter: Callable[[], float],
    **options: float,
) -> TokenManager:
    return TokenManager(
        credentials.table, credentials, fetcher, clock=clock, jitter=jitter, **options
    )  # type: ignore[arg-type]


@pytest.fixture
def credentials() -> FakeCredentials:
    return FakeCredentials("acme", "globex")


@pytest.fixture
def fetcher(clock: FakeClock) -> FakeFetcher:
    return FakeFetcher(clock)


@pytest.fixture
async def manager(
    credentials: FakeCredentials, fetcher: FakeFetcher, clock: FakeClock
) -> AsyncIterator[TokenManager]:
    # Jitter pinned to its top, so each window is exactly the ceiling: 1, 2, 4, 8, 8, ...
    manager = manager_with(
        credentials, fetcher, clock, lambda: 1.0, backoff_base=1.0, backoff_cap=8.0
    )
    yield manager
    await manager.close()


async def fail_once(manager: TokenManager, fetcher: FakeFetcher, error: Exception) -> float:
    """Make the next fetch fail with `error`; return the Retry-After its callers were given."""
    fetcher.errors = [error]
    calls = fetcher.calls
    with pytest.raises(type(error)) as caught:
        await manager.get("acme")
    assert fetcher.calls == calls + 1
    assert isinstance(caught.value, TokenUnavailable | VaultUnavailable)
    assert caught.value.retry_after is not None
    return caught.value.retry_after


async def test_requests_without_a_token_fail_fast_during_the_backoff_window(
    manager: TokenManager, fetcher: FakeFetcher, clock: FakeClock
) -> None:
    assert await fail_once(manager, fetcher, unavailable()) == 1.0
    clock.advance(0.5)
    for _ in range(100):
        with pytest.raises(TokenUnavailable) as caught:
            await manager.get("acme")
        # The remaining window, so the app knows when to come back.
        assert caught.value.retry_after == pytest.approx(0.5)
        assert caught.value.tenant == "acme"
    assert fetcher.calls == 1  # a hundred requests, no new token request
    assert state_of(manager, "acme") == "failing"

    clock.advance(0.5)
    assert (await manager.get("acme")).value == "token-acme-2"
    assert fetcher.calls == 2


async def test_backoff_doubles_per_consecutive_failure_up_to_the_cap(
    manager: TokenManager, fetcher: FakeFetcher, clock: FakeClock
) -> None:
    windows = []
    for _ in range(6):
        window = await fail_once(manager, fetcher, unavailable())
        windows.append(window)
        clock.advance(window - 0.01)
        with pytest.raises(TokenUnavailable):
            await manager.get("acme")  # still inside the window: no fetch
        clock.advance(0.01)
    assert windows == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert fetcher.calls == 6

    # One success resets the backoff.
    assert (await manager.get("acme")).value == "token-acme-7"
    manager.invalidate("acme")
    assert await fail_once(manager, fetcher, unavailable()) == 1.0


async def test_jitter_is_half_fixed_half_drawn(
    credentials: FakeCredentials, fetcher: FakeFetcher, clock: FakeClock
) -> None:
    draws = iter([0.0, 0.25, 0.1, 0.9])
    manager = manager_with(credentials, fetcher, clock, lambda: next(draws), backoff_cap=30.0)
    try:
        windows = []
        for _ in range(4):
            windows.append(await fail_once(manager, fetcher, unavailable()))
            clock.advance(windows[-1])
        # Ceilings 1, 2, 4, 8: half of each fixed, the other half times the draws 0, .25, .1, .9.
        assert windows == [0.5, 1.25, pytest.approx(2.2), pytest.approx(7.6)]
    finally:
        await manager.close()


async def test_tenants_that_failed_together_come_back_spread_out(
    fetcher: FakeFetcher, clock: FakeClock
) -> None:
    tenants = [f"tenant-{n}" for n in range(50)]
    credentials = FakeCredentials(*tenants)
    manager = manager_with(credentials, fetcher, clock, random.Random(7).random, backoff_cap=30.0)
    try:
        retry_afters = []
        for failure in range(4):  # the fourth failure has an 8 s ceiling to spread over
            fetcher.errors = [unavailable(t) for t in tenants]
            for tenant in tenants:
                with pytest.raises(TokenUnavailable) as caught:
                    await manager.get(tenant)
                assert caught.value.retry_after is not None
                if failure == 3:
                    retry_afters.append(caught.value.retry_after)
            clock.advance(8.0)
        assert all(1.0 <= r <= 8.0 for r in retry_afters)
        assert len({round(r, 3) for r in retry_afters}) > 40  # not in lockstep
    finally:
        await manager.close()


@pytest.mark.parametrize(("asked", "window"), [(20.0, 20.0), (0.5, 1.0), (1e9, RETRY_AFTER_CAP)])
async def test_retry_after_of_the_token_endpoint_is_honoured_within_a_cap(
    manager: TokenManager, fetcher: FakeFetcher, clock: FakeClock, asked: float, window: float
) -> None:
    limited = TokenUnavailable("rate-limited (HTTP 429)", tenant="acme", retry_after=asked)
    assert await fail_once(manager, fetcher, limited) == window
    clock.advance(window - 0.01)
    with pytest.raises(TokenUnavailable):
        await manager.get("acme")
    clock.advance(0.01)
    await manager.get("acme")
    assert fetcher.calls == 2


async def test_background_refresh_backs_off_while_the_valid_token_keeps_serving(
    manager: TokenManager, fetcher: FakeFetcher, clock: FakeClock
) -> None:
    old = await manager.get("acme")  # lifetime 300: refresh due at 240, usable until 270
    clock.advance(240)
    fetcher.errors = [unavailable() for _ in range(100)]
    served = 0
    # Thirty seconds of a request every 100 ms while the token endpoint is down.
    for _ in range(300):
        assert await manager.get("acme") is old
        served += 1
        await asyncio.sleep(0)
        clock.advance(0.1)
    # Windows of 1, 2, 4, 8, 8, 8 s fit in 30 s: at most 7 refresh attempts, not 300.
    assert 5 <= fetcher.calls - 1 <= 7
    assert served == 300


async def test_an_expired_token_is_not_served_while_backing_off(
    manager: TokenManager, fetcher: FakeFetcher, clock: FakeClock
) -> None:
    await manager.get("acme")
    clock.advance(269.5)
    fetcher.errors = [unavailable() for _ in range(10)]
    await manager.get("acme")  # still usable; starts a refresh that fails (backoff 1 s)
    await until(lambda: fetcher.calls == 2)
    await until(lambda: manager.state("acme").state == "failing")  # type: ignore[union-attr]
    clock.advance(0.6)  # now past usable_until (270), inside the backoff window (until 270.5)
    with pytest.raises(TokenUnavailable):
        await manager.get("acme")
    assert fetcher.calls == 2


async def test_vault_outage_for_a_known_tenant_backs_off_as_vault_unavailable(
    manager: TokenManager,
    credentials: FakeCredentials,
    fetcher: FakeFetcher,
    clock: FakeClock,
) -> None:
    await manager.get("acme")
    manager.invalidate("acme")
    records = credentials.records
    credentials.records = {}
    lookups = credentials.lookups["acme"]

    async def vault_down(tenant: str) -> None:
        credentials.lookups[tenant] += 1
        raise VaultUnavailable("Vault at http://127.0.0.1:1 is sealed or unavailable")

    credentials.get = vault_down  # type: ignore[assignment,method-assign]
    with pytest.raises(VaultUnavailable):
        await manager.get("acme")
    for _ in range(20):
        with pytest.raises(VaultUnavailable) as caught:
            await manager.get("acme")
        assert caught.value.retry_after == 1.0
    assert credentials.lookups["acme"] == lookups + 1
    del credentials.get
    credentials.records = records
    clock.advance(1.0)
    assert (await manager.get("acme")).value == "token-acme-2"


async def test_admin_refresh_ignores_the_backoff_window(
    manager: TokenManager, fetcher: FakeFetcher
) -> None:
    await fail_once(manager, fetcher, unavailable())
    assert (await manager.refresh("acme")).value == "token-acme-2"
    assert (await manager.get("acme")).value == "token-acme-2"


def test_backoff_settings_are_checked(credentials: FakeCredentials, fetcher: FakeFetcher) -> None:
    with pytest.raises(ValueError, match="backoff"):
        TokenManager(credentials.table, credentials, fetcher, backoff_base=0)
    with pytest.raises(ValueError, match="backoff"):
        TokenManager(credentials.table, credentials, fetcher, backoff_base=5, backoff_cap=1)
