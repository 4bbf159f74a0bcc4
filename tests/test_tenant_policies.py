"""The policies over the tenant table, with fakes and a fake clock: reload, the 401 backoff."""

from __future__ import annotations

import asyncio
import math

import pytest

from proxy.config import parse_config
from proxy.errors import UnknownTenant, VaultUnavailable
from proxy.tenants.credentials import CredentialStore
from proxy.tenants.table import TenantTable
from proxy.tenants.tokens import TokenManager
from tests.conftest import FakeClock
from tests.test_credentials import ACME, FakeSource
from tests.test_tokens import FakeCredentials, FakeFetcher, until


def store_with(source: FakeSource, clock: FakeClock, **settings: float) -> CredentialStore:
    table = TenantTable(100, negative_ttl=settings.pop("negative_ttl", 30), clock=clock)
    return CredentialStore(table, source, **{"ttl": 300, "stale_ttl": 86400, **settings})


# -- reconfigure: the reload seam ------------------------------------------------------------------


async def test_a_shorter_ttl_applies_at_once_to_records_already_cached(clock: FakeClock) -> None:
    source = FakeSource()
    source.records["acme"] = ACME
    store = store_with(source, clock)
    await store.record("acme")
    store.reconfigure(parse_config({"credentials": {"ttl": 10}}))
    clock.advance(11)
    await store.record("acme")  # served, and finds the record old under the new ttl
    await store.settled()
    assert store.reads == 2


async def test_stale_ttl_and_negative_ttl_apply_at_once(clock: FakeClock) -> None:
    source = FakeSource()
    source.records["acme"] = ACME
    store = store_with(source, clock, ttl=10)
    await store.record("acme")
    reloaded = {"credentials": {"ttl": 10, "stale_ttl": 0, "negative_ttl": 5}}
    store.reconfigure(parse_config(reloaded))
    clock.advance(10)
    source.error = VaultUnavailable("Vault at http://127.0.0.1:1 is unavailable")
    with pytest.raises(VaultUnavailable):  # no stale grace any more
        await store.record("acme")

    source.error = None
    with pytest.raises(UnknownTenant):
        await store.record("nobody")
    reads = store.reads
    clock.advance(4.9)
    with pytest.raises(UnknownTenant):
        await store.record("nobody")
    assert store.reads == reads  # remembered ...
    clock.advance(0.2)
    with pytest.raises(UnknownTenant):
        await store.record("nobody")
    assert store.reads == reads + 1  # ... for the new negative_ttl only


async def test_a_new_refresh_at_applies_to_tokens_already_cached(clock: FakeClock) -> None:
    credentials = FakeCredentials("acme")
    fetcher = FakeFetcher(clock, lifetime=300.0)
    manager = TokenManager(credentials.table, credentials, fetcher, refresh_at=0.8, clock=clock)
    try:
        await manager.get("acme")
        clock.advance(151)  # past half the token's life, well before 80 %
        await manager.get("acme")
        assert fetcher.calls == 1
        manager.reconfigure(parse_config({"genesys": {"refresh_at": 0.5}}))
        await manager.get("acme")  # still served, and a refresh starts in the background
        await until(lambda: fetcher.calls == 2)
    finally:
        await manager.close()


# -- the 401 storm rule ----------------------------------------------------------------------------


async def test_refused_fresh_tokens_back_the_401_refetch_off_10s_doubling_to_5_minutes(
    clock: FakeClock,
) -> None:
    credentials = FakeCredentials("acme")
    fetcher = FakeFetcher(clock)
    manager = TokenManager(credentials.table, credentials, fetcher, clock=clock)
    try:
        tenant, token = await manager.lookup("acme")
        windows = []
        for _ in range(8):
            fresh = await manager.replacement(tenant, token)
            assert fresh is not None
            assert fresh is not token
            manager.refused_again(tenant, fresh)
            manager.refused_again(tenant, fresh)  # the storm's other replays count once
            refusal = tenant.refusal
            assert refusal is not None
            window = refusal.refetch_after - clock()
            windows.append(window)
            clock.advance(window - 0.5)
            assert await manager.replacement(tenant, fresh) is None  # pass the 401 on
            clock.advance(0.5)
            token = fresh
        assert windows == [10, 20, 40, 80, 160, 300, 300, 300]
        assert fetcher.calls == 1 + 8
        # A fresh token accepted again starts the backoff over.
        manager.accepted(tenant)
        assert tenant.refusal is None
    finally:
        await manager.close()


async def test_concurrent_401s_on_one_token_share_one_refetch(clock: FakeClock) -> None:
    credentials = FakeCredentials("acme")
    fetcher = FakeFetcher(clock)
    manager = TokenManager(credentials.table, credentials, fetcher, clock=clock)
    try:
        tenant, token = await manager.lookup("acme")
        fresh = await asyncio.gather(*(manager.replacement(tenant, token) for _ in range(50)))
        assert len({id(t) for t in fresh}) == 1
        assert fetcher.calls == 2
        assert tenant.token is fresh[0]
        assert tenant.token_fresh_until < math.inf
    finally:
        await manager.close()
