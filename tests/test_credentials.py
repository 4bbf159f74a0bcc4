"""Credential records: parsing, the Vault and file sources, and the caching store."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config import Config, CredentialsConfig, VaultAuthConfig, VaultConfig
from proxy.errors import (
    ConfigError,
    InvalidTenant,
    InvalidTenantCredentials,
    TenantForbidden,
    UnknownTenant,
    VaultUnavailable,
)
from proxy.tenants.credentials import (
    CredentialSource,
    CredentialStore,
    FileCredentialSource,
    TenantCredentials,
    VaultCredentialSource,
    create_credential_source,
    parse_record,
)
from proxy.tenants.table import TenantTable
from proxy.vault.session import VaultSession
from tests.conftest import FakeClock, OpenBao, find_free_port

SECRET = "fake-" + secrets.token_hex(12)  # made up per run, so a leak check cannot pass by luck


def vault_config(openbao: OpenBao, **vault: Any) -> VaultConfig:
    return VaultConfig(
        address=openbao.address,
        auth=VaultAuthConfig(method="token", token=openbao.root_token),
        **vault,
    )


@pytest.fixture
async def vault_source(openbao: OpenBao) -> AsyncIterator[VaultCredentialSource]:
    config = vault_config(openbao)
    source = VaultCredentialSource(VaultSession(config), config.path)
    await source.start()
    yield source
    await source.close()


def make_store(source: CredentialSource, clock: FakeClock, **options: Any) -> CredentialStore:
    negative_ttl, max_entries = options.pop("negative_ttl", 30), options.pop("max_entries", 100)
    table = TenantTable(max_entries, negative_ttl=negative_ttl, clock=clock)
    return CredentialStore(table, source, **{"ttl": 300, **options})


# --- parse_record ---


def test_record_with_snake_case_fields() -> None:
    record = parse_record(
        "acme", {"client_id": "id", "client_secret": SECRET, "region": "ap-south-1"}
    )
    assert record == TenantCredentials("acme", "id", SECRET, "aps1.pure.cloud")


def test_record_with_camel_case_aliases() -> None:
    data = {"clientId": "id", "clientSecret": SECRET, "region": "mypurecloud.de"}
    assert parse_record("acme", data) == TenantCredentials("acme", "id", SECRET, "mypurecloud.de")


def test_snake_case_field_wins_over_its_alias() -> None:
    data = {
        "client_id": "snake",
        "clientId": "camel",
        "client_secret": SECRET,
        "region": "us-east-1",
    }
    assert parse_record("acme", data).client_id == "snake"


@pytest.mark.parametrize("missing", ["client_id", "client_secret", "region"])
def test_missing_field_is_named(missing: str) -> None:
    data = {"client_id": "id", "client_secret": SECRET, "region": "us-east-1"}
    data[missing] = ""
    with pytest.raises(InvalidTenantCredentials, match=f"has no {missing}") as caught:
        parse_record("acme", data)
    assert caught.value.tenant == "acme"
    assert caught.value.status == 502


def test_non_string_secret_is_rejected_without_showing_it() -> None:
    with pytest.raises(InvalidTenantCredentials, match="client_secret") as caught:
        parse_record("acme", {"client_id": "id", "client_secret": 918273645, "region": "us-east-1"})
    assert "918273645" not in str(caught.value)
    assert "918273645" not in repr(caught.value)


def test_bad_region_carries_the_hint() -> None:
    data = {"client_id": "id", "client_secret": SECRET, "region": "aps1.mypurecloud.com"}
    with pytest.raises(InvalidTenantCredentials) as caught:
        parse_record("acme", data)
    assert "did you mean aps1.pure.cloud (ap-south-1)?" in caught.value.message
    assert SECRET not in caught.value.message


def test_record_repr_hides_the_secret() -> None:
    record = parse_record(
        "acme", {"client_id": "id", "client_secret": SECRET, "region": "us-east-1"}
    )
    assert SECRET not in repr(record)
    assert "client_id='id'" in repr(record)


# --- the Vault source, through the store ---


async def test_vault_record_is_read_and_its_region_resolved(
    openbao: OpenBao, tenant_prefix: str, vault_source: VaultCredentialSource, clock: FakeClock
) -> None:
    tenant = f"{tenant_prefix}-acme"
    openbao.put_tenant(tenant, "acme-id", SECRET, "eu-central-1")
    store = make_store(vault_source, clock)
    record = await store.record(tenant)
    assert record == TenantCredentials(tenant, "acme-id", SECRET, "mypurecloud.de")
    assert store.known_tenants() == [tenant]
    assert await store.ready()


async def test_kv1_mount_is_read(openbao: OpenBao, tenant_prefix: str, clock: FakeClock) -> None:
    mount = f"kv1-{tenant_prefix}"
    openbao.client().sys.enable_secrets_engine("kv", path=mount, options={"version": "1"})
    openbao.put_tenant("acme", "acme-id", SECRET, "us-west-2", mount=mount, kv_version=1)
    config = vault_config(openbao, kv_mount=mount, kv_version=1)
    source = VaultCredentialSource(VaultSession(config), config.path)
    try:
        store = make_store(source, clock)
        assert (await store.record("acme")).region == "usw2.pure.cloud"
    finally:
        await source.close()


async def test_vault_record_with_aliases(
    openbao: OpenBao, tenant_prefix: str, vault_source: VaultCredentialSource
) -> None:
    openbao.put_secret(
        f"genesys/tenants/{tenant_prefix}",
        {"clientId": "legacy-id", "clientSecret": SECRET, "region": "mypurecloud.ie"},
    )
    record = await vault_source.fetch(tenant_prefix)
    assert (record.client_id, record.client_secret) == ("legacy-id", SECRET)


async def test_vault_record_missing_a_field(
    openbao: OpenBao, tenant_prefix: str, vault_source: VaultCredentialSource
) -> None:
    openbao.put_secret(
        f"genesys/tenants/{tenant_prefix}", {"client_id": "id", "region": "us-east-1"}
    )
    with pytest.raises(InvalidTenantCredentials, match="has no client_secret") as caught:
        await vault_source.fetch(tenant_prefix)
    assert caught.value.tenant == tenant_prefix


async def test_vault_record_with_a_bad_region_gets_the_hint(
    openbao: OpenBao, tenant_prefix: str, vault_source: VaultCredentialSource
) -> None:
    openbao.put_tenant(tenant_prefix, "id", SECRET, "aps1.mypurecloud.com")
    with pytest.raises(InvalidTenantCredentials, match=r"did you mean aps1\.pure\.cloud"):
        await vault_source.fetch(tenant_prefix)


async def test_unknown_tenant_is_remembered_for_the_negative_ttl(
    openbao: OpenBao, tenant_prefix: str, vault_source: VaultCredentialSource, clock: FakeClock
) -> None:
    store = make_store(vault_source, clock, negative_ttl=30)
    for _ in range(3):
        with pytest.raises(UnknownTenant) as caught:
            await store.record(tenant_prefix)
        assert caught.value.tenant == tenant_prefix
        assert caught.value.status == 404
    assert store.reads == 1

    openbao.put_tenant(tenant_prefix, "id", SECRET, "us-east-1")
    clock.now += 31
    assert (await store.record(tenant_prefix)).client_id == "id"
    assert store.reads == 2


async def test_concurrent_cold_gets_share_one_vault_read(
    openbao: OpenBao, tenant_prefix: str, vault_source: VaultCredentialSource, clock: FakeClock
) -> None:
    openbao.put_tenant(tenant_prefix, "id", SECRET, "us-east-1")
    store = make_store(vault_source, clock)
    records = await asyncio.gather(*(store.record(tenant_prefix) for _ in range(200)))
    assert store.reads == 1
    assert {record.client_id for record in records} == {"id"}


async def test_policy_denied_tenant_is_forbidden_and_not_cached(
    openbao: OpenBao, tenant_prefix: str, clock: FakeClock
) -> None:
    root = openbao.client()
    mine = f"secret/data/genesys/tenants/{tenant_prefix}-mine"
    root.sys.create_or_update_policy(
        name=tenant_prefix, policy=f'path "{mine}" {{ capabilities = ["read"] }}'
    )
    token = root.auth.token.create(policies=[tenant_prefix], ttl="1h")["auth"]["client_token"]
    openbao.put_tenant(f"{tenant_prefix}-mine", "mine", SECRET, "us-east-1")
    openbao.put_tenant(f"{tenant_prefix}-theirs", "theirs", SECRET, "us-east-1")
    config = VaultConfig(address=openbao.address, auth=VaultAuthConfig(token=token))
    source = VaultCredentialSource(VaultSession(config), config.path)
    await source.start()
    try:
        store = make_store(source, clock)
        assert (await store.record(f"{tenant_prefix}-mine")).client_id == "mine"
        for _ in range(2):
            with pytest.raises(TenantForbidden) as caught:
                await store.record(f"{tenant_prefix}-theirs")
            assert caught.value.tenant == f"{tenant_prefix}-theirs"
            assert caught.value.status == 403
        assert store.reads == 3
    finally:
        await source.close()


async def test_unreachable_vault_is_unavailable_and_not_ready(clock: FakeClock) -> None:
    config = VaultConfig(
        address=f"http://127.0.0.1:{find_free_port()}", auth=VaultAuthConfig(token="whatever")
    )
    source = VaultCredentialSource(VaultSession(config), config.path)
    await source.start()  # the proxy must start even so
    try:
        store = make_store(source, clock)
        assert not await store.ready()
        for _ in range(2):
            with pytest.raises(VaultUnavailable) as caught:
                await store.record("acme")
            assert caught.value.tenant == "acme"
            assert caught.value.retry_after is not None
        assert store.reads == 2
    finally:
        await source.close()


async def test_expired_record_is_read_again(
    openbao: OpenBao, tenant_prefix: str, vault_source: VaultCredentialSource, clock: FakeClock
) -> None:
    openbao.put_tenant(tenant_prefix, "first", SECRET, "us-east-1")
    store = make_store(vault_source, clock, ttl=300)
    assert (await store.record(tenant_prefix)).client_id == "first"
    openbao.put_tenant(tenant_prefix, "second", SECRET, "us-east-1")
    clock.now += 299
    assert (await store.record(tenant_prefix)).client_id == "first"
    clock.now += 2
    assert (await store.record(tenant_prefix)).client_id == "second"
    assert store.reads == 2


async def test_tenant_id_cannot_walk_the_kv_tree(vault_source: VaultCredentialSource) -> None:
    with pytest.raises(InvalidTenant):
        await vault_source.fetch("../admin")


async def test_vault_source_repr_shows_no_token(vault_source: VaultCredentialSource) -> None:
    assert "VaultSession(address=" in repr(vault_source)
    assert "'root'" not in repr(vault_source)


# --- the store, with a fake source ---


class FakeSource:
    """A credential source whose answers the test sets."""

    name = "fake"

    def __init__(self) -> None:
        self.records: dict[str, TenantCredentials] = {}
        self.error: Exception | None = None
        self.gate: asyncio.Event | None = None

    async def start(self) -> None:
        return None

    async def fetch(self, tenant: str) -> TenantCredentials:
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        if tenant not in self.records:
            raise UnknownTenant(f"no credential record for tenant {tenant!r}", tenant=tenant)
        return self.records[tenant]

    async def ready(self) -> bool:
        return self.error is None

    async def close(self) -> None:
        return None


ACME = TenantCredentials("acme", "acme-id", SECRET, "mypurecloud.com")


async def test_cached_record_outlives_a_vault_outage(clock: FakeClock) -> None:
    source = FakeSource()
    source.records["acme"] = ACME
    store = make_store(source, clock)
    assert await store.record("acme") == ACME
    source.error = VaultUnavailable("Vault is sealed")
    assert await store.record("acme") == ACME
    assert not await store.ready()


async def test_invalidate_forces_a_new_read(clock: FakeClock) -> None:
    source = FakeSource()
    source.records["acme"] = ACME
    store = make_store(source, clock)
    await store.record("acme")
    store.invalidate("acme")
    assert store.cached("acme") is None
    assert store.known_tenants() == []
    await store.record("acme")
    assert store.reads == 2


async def test_read_in_flight_during_invalidate_is_not_cached(clock: FakeClock) -> None:
    source = FakeSource()
    source.records["acme"] = ACME
    source.gate = asyncio.Event()
    store = make_store(source, clock)
    pending = asyncio.create_task(store.record("acme"))
    await asyncio.sleep(0)
    store.invalidate("acme")
    source.gate.set()
    assert await pending == ACME
    assert store.cached("acme") is None


async def test_invalid_record_is_not_cached(clock: FakeClock) -> None:
    source = FakeSource()
    source.error = InvalidTenantCredentials("bad record", tenant="acme")
    store = make_store(source, clock)
    for _ in range(2):
        with pytest.raises(InvalidTenantCredentials):
            await store.record("acme")
    assert store.reads == 2


async def test_expired_record_is_served_stale_while_vault_is_unavailable(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    source = FakeSource()
    source.records["acme"] = ACME
    store = make_store(source, clock, ttl=10, stale_ttl=100)
    await store.record("acme")
    clock.advance(11)
    source.error = VaultUnavailable("Vault at http://127.0.0.1:1 is sealed or unavailable")
    # Served at once while the re-read runs in the background; the re-read fails: stale.
    assert await store.record("acme") == ACME
    await store.settled()
    assert (store.reads, store.stale_served) == (2, 1)
    [warning] = [r for r in caplog.records if r.name == "proxy.tenants.credentials"]
    assert "past their ttl" in warning.getMessage()
    assert SECRET not in caplog.text

    # While Vault stays down, the stale record is not re-read on every call ...
    clock.advance(4.9)
    for _ in range(10):
        assert await store.record("acme") == ACME
    await store.settled()
    assert store.reads == 2
    # ... but it is retried every few seconds, and a fresh record replaces it once Vault is back.
    clock.advance(0.2)
    assert await store.record("acme") == ACME
    await store.settled()
    assert (store.reads, store.stale_served) == (3, 2)
    source.error = None
    source.records["acme"] = replace(ACME, client_id="rotated-id")
    clock.advance(5.1)
    assert (await store.record("acme")).client_id == "acme-id"  # served meanwhile
    await store.settled()
    assert (await store.record("acme")).client_id == "rotated-id"
    assert (store.reads, store.stale_served) == (4, 2)


@pytest.mark.parametrize(
    "error",
    [
        TenantForbidden("Vault denies reading it", tenant="acme"),
        UnknownTenant("no credential record for tenant 'acme'", tenant="acme"),
        InvalidTenantCredentials("bad record", tenant="acme"),
    ],
)
async def test_an_answer_from_vault_is_never_overridden_by_a_stale_record(
    clock: FakeClock, error: Exception
) -> None:
    source = FakeSource()
    source.records["acme"] = ACME
    store = make_store(source, clock, ttl=10, stale_ttl=100)
    await store.record("acme")
    clock.advance(11)
    source.error = error
    assert await store.record("acme") == ACME  # served while the re-read runs
    await store.settled()
    with pytest.raises(type(error)):
        await store.record("acme")
    assert store.stale_served == 0


async def test_stale_ttl_zero_turns_stale_if_error_off(clock: FakeClock) -> None:
    source = FakeSource()
    source.records["acme"] = ACME
    store = make_store(source, clock, ttl=10, stale_ttl=0)
    await store.record("acme")
    clock.advance(10)
    source.error = VaultUnavailable("Vault at http://127.0.0.1:1 is sealed or unavailable")
    with pytest.raises(VaultUnavailable):
        await store.record("acme")


async def test_store_is_bounded(clock: FakeClock) -> None:
    source = FakeSource()
    for n in range(5):
        source.records[f"t{n}"] = replace(ACME, tenant=f"t{n}")
    store = make_store(source, clock, max_entries=3)
    for n in range(5):
        await store.record(f"t{n}")
    assert len(store.known_tenants()) == 3


# --- the file source ---


def write_yaml(path: Path, data: Mapping[Any, Any]) -> None:
    path.write_text(yaml.safe_dump(dict(data)), encoding="utf-8")


def record(client_id: str, region: str = "us-east-1") -> dict[str, str]:
    return {"client_id": client_id, "client_secret": SECRET, "region": region}


async def test_file_source_reads_records(tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    write_yaml(path, {"acme": record("acme-id", "ap-south-1"), 1234: record("numeric")})
    source = FileCredentialSource(path)
    await source.start()
    assert await source.ready()
    assert await source.fetch("acme") == TenantCredentials(
        "acme", "acme-id", SECRET, "aps1.pure.cloud"
    )
    assert (await source.fetch("1234")).client_id == "numeric"
    with pytest.raises(UnknownTenant) as caught:
        await source.fetch("globex")
    assert caught.value.tenant == "globex"


async def test_file_source_reloads_when_the_file_changes(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "tenants.yaml"
    write_yaml(path, {"acme": record("old")})
    source = FileCredentialSource(path, clock=clock)
    await source.start()
    assert (await source.fetch("acme")).client_id == "old"

    write_yaml(path, {"acme": record("new"), "globex": record("globex-id")})
    assert (await source.fetch("acme")).client_id == "old"  # checked at most once a second
    clock.now += 1
    assert (await source.fetch("acme")).client_id == "new"
    assert (await source.fetch("globex")).client_id == "globex-id"


async def test_file_source_keeps_the_last_good_copy(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tenants.yaml"
    write_yaml(path, {"acme": record("acme-id")})
    source = FileCredentialSource(path, clock=clock)
    await source.start()

    path.write_text("acme: [unclosed\n", encoding="utf-8")
    clock.now += 1
    with caplog.at_level(logging.WARNING, logger="proxy.tenants.credentials"):
        assert (await source.fetch("acme")).client_id == "acme-id"
        clock.now += 1
        assert (await source.fetch("acme")).client_id == "acme-id"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "not valid YAML" in warnings[0].getMessage()

    os.unlink(path)
    clock.now += 1
    assert (await source.fetch("acme")).client_id == "acme-id"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "cannot read"),
        ("acme: [unclosed\n", "not valid YAML at line"),
        ("- just\n- a list\n", "must be a mapping"),
    ],
)
async def test_unusable_file_at_start_is_a_config_error(
    tmp_path: Path, content: str | None, problem: str
) -> None:
    path = tmp_path / "tenants.yaml"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match=problem) as caught:
        await FileCredentialSource(path).start()
    assert caught.value.key == "credentials.file"


async def test_file_record_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    write_yaml(path, {"acme": SECRET})
    source = FileCredentialSource(path)
    await source.start()
    with pytest.raises(InvalidTenantCredentials) as caught:
        await source.fetch("acme")
    assert SECRET not in caught.value.message


# --- choosing the source ---


def test_factory_chooses_the_configured_source(tmp_path: Path) -> None:
    file_config = Config(credentials=CredentialsConfig(source="file", file=tmp_path / "t.yaml"))
    assert isinstance(create_credential_source(file_config), FileCredentialSource)
    vault = create_credential_source(Config())
    assert isinstance(vault, VaultCredentialSource)
    assert vault.name == "vault"
