"""The token pool of genesys.rate_limit.tokens_per_tenant, on the token manager with fakes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from proxy.tenants.tokens import TokenManager
from tests.conftest import FakeClock
from tests.test_tokens import FakeCredentials, FakeFetcher, until


@pytest.fixture
def credentials() -> FakeCredentials:
    return FakeCredentials("acme")


@pytest.fixture
def fetcher(clock: FakeClock) -> FakeFetcher:
    return FakeFetcher(clock, lifetime=1000.0)


@pytest.fixture
async def manager(
    credentials: FakeCredentials, fetcher: FakeFetcher, clock: FakeClock
) -> AsyncIterator[TokenManager]:
    manager = TokenManager(
        credentials.table,
        credentials,
        fetcher,
        refresh_at=0.8,
        pool_size=3,
        clock=clock,
        jitter=lambda: 0.0,
    )
    yield manager
    await manager.close()


async def test_the_pool_grows_one_token_at_a_time_up_to_its_size(
    manager: TokenManager, fetcher: FakeFetcher
) -> None:
    tenant, first = await manager.lookup("acme")

    second = await manager.grow(tenant)
    third = await manager.grow(tenant)
    fourth = await manager.grow(tenant)

    assert manager.pool(tenant) == (first, second, third)
    assert fourth is None
    assert fetcher.calls == 3


async def test_refreshing_the_first_token_keeps_the_rest_of_the_pool(
    manager: TokenManager, fetcher: FakeFetcher, clock: FakeClock
) -> None:
    tenant, first = await manager.lookup("acme")
    clock.advance(100)
    second = await manager.grow(tenant)
    clock.advance(750)  # the first is past refresh_at (800 s); the second is not (650 s)

    await manager.lookup("acme")
    await until(lambda: tenant.token is not first)

    pool = manager.pool(tenant)
    assert pool[1:] == (second,)
    assert pool[0] is not first


async def test_a_pool_token_past_refresh_at_is_replaced_in_the_background(
    manager: TokenManager, fetcher: FakeFetcher, clock: FakeClock
) -> None:
    tenant, first = await manager.lookup("acme")
    second = await manager.grow(tenant)
    clock.advance(820)  # both are past refresh_at (800 s of 1000)

    assert second in manager.pool(tenant)  # still served while its replacement is fetched
    await until(lambda: second not in tenant.tokens)

    pool = manager.pool(tenant)
    assert len(pool) == 2
    assert pool[0] is first  # the first is the hot path's to refresh, on the next lookup
    assert fetcher.calls == 3


async def test_an_expired_pool_token_is_never_handed_out(
    manager: TokenManager, clock: FakeClock
) -> None:
    tenant, first = await manager.lookup("acme")
    clock.advance(500)
    second = await manager.grow(tenant)
    clock.advance(480)  # the first is past its usable end (1000 s minus the 30 s margin)

    pool = manager.pool(tenant)

    assert first not in pool
    assert pool[:1] == (second,)


async def test_a_refused_pool_token_is_dropped_and_the_first_replays(
    manager: TokenManager, fetcher: FakeFetcher
) -> None:
    tenant, first = await manager.lookup("acme")
    second = await manager.grow(tenant)
    assert second is not None

    replay = await manager.replacement(tenant, second)

    assert replay is first
    assert manager.pool(tenant) == (first,)
    assert fetcher.calls == 2  # no refetch: the first token was not the refused one


async def test_a_refused_first_token_drops_the_pool_and_fetches_one_again(
    manager: TokenManager, fetcher: FakeFetcher
) -> None:
    tenant, first = await manager.lookup("acme")
    await manager.grow(tenant)

    replay = await manager.replacement(tenant, first)

    assert replay is not None
    assert manager.pool(tenant) == (replay,)
    assert fetcher.calls == 3


async def test_a_credential_change_drops_every_pool_token(manager: TokenManager) -> None:
    tenant, first = await manager.lookup("acme")
    second = await manager.grow(tenant)

    dropped = tenant.drop_tokens()

    assert dropped == (first, second)
    assert manager.pool(tenant) == ()
