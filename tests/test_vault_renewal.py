"""The Vault session kept alive: renewal, login again at the max TTL, backoff, readiness.

Functional tests run the real proxy against the real OpenBao dev server with short token TTLs,
so renewals and logins happen within seconds; they wait on events, never assert durations.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from proxy.tenants.credentials import VaultCredentialSource
from proxy.vault.renewal import (
    IDLE_INTERVAL,
    RENEW_FRACTION,
    VaultRenewer,
    backoff_delay,
    plan_next,
)
from proxy.vault.session import TokenInfo, VaultSession
from tests.conftest import OpenBao, ProxyHarness

# --- The plan, as a pure function. --------------------------------------------------------------


def test_a_renewable_token_is_renewed_at_two_thirds_of_its_ttl() -> None:
    info = TokenInfo(ttl=30, renewable=True, obtained_at=100, issued_ttl=30)
    step = plan_next(info, authenticated=True, can_log_in=True, now=101)
    assert step.action == "renew"
    assert step.at == pytest.approx(100 + 30 * RENEW_FRACTION)


def test_a_token_that_cannot_be_renewed_is_replaced_by_a_login_before_it_expires() -> None:
    info = TokenInfo(ttl=6, renewable=False, obtained_at=100, issued_ttl=30)
    step = plan_next(info, authenticated=True, can_log_in=True, now=100)
    assert step.action == "login"
    assert step.at == pytest.approx(104)


def test_no_token_means_log_in_now() -> None:
    assert plan_next(None, authenticated=False, can_log_in=True, now=5).action == "login"
    info = TokenInfo(ttl=30, renewable=True, obtained_at=0)
    assert plan_next(info, authenticated=False, can_log_in=True, now=5).at == 5


def test_a_token_without_ttl_needs_nothing() -> None:
    info = TokenInfo(ttl=0, renewable=False, obtained_at=100)
    step = plan_next(info, authenticated=True, can_log_in=False, now=100)
    assert step.action == "wait"
    assert step.at == 100 + IDLE_INTERVAL


def test_a_literal_token_that_cannot_be_renewed_is_looked_at_again_when_it_expires() -> None:
    info = TokenInfo(ttl=60, renewable=False, obtained_at=100)
    step = plan_next(info, authenticated=True, can_log_in=False, now=100)
    assert (step.action, step.at) == ("login", 160)


def test_backoff_grows_exponentially_up_to_the_cap_with_jitter() -> None:
    rng = random.Random(7)
    for failures, ceiling in [(1, 1), (2, 2), (3, 4), (4, 8), (6, 30), (50, 30)]:
        delays = [backoff_delay(failures, rng.random, base=1, cap=30) for _ in range(200)]
        assert all(ceiling / 2 <= delay <= ceiling for delay in delays)
        assert len(set(delays)) > 100  # jittered, not one fixed value


# --- Against OpenBao. ---------------------------------------------------------------------------


@dataclass
class AppRoleLogin:
    mount: str
    role_id: str
    secret_id: str
    secret_id_file: Path

    def auth_config(self) -> dict[str, Any]:
        return {
            "method": "approle",
            "role_id": self.role_id,
            "secret_id_file": str(self.secret_id_file),
            "mount": self.mount,
        }


def create_approle(
    openbao: OpenBao, name: str, tmp_path: Path, *, policy_hcl: str, **role: Any
) -> AppRoleLogin:
    """An AppRole mount with one role whose tokens carry a policy of the given rules."""
    root = openbao.client()
    mount = f"approle-{name}"
    root.sys.create_or_update_policy(name=name, policy=policy_hcl)
    root.sys.enable_auth_method("approle", path=mount)
    root.auth.approle.create_or_update_approle(
        "proxy", token_policies=[name], mount_point=mount, **role
    )
    role_id = root.auth.approle.read_role_id("proxy", mount_point=mount)["data"]["role_id"]
    secret_id = root.auth.approle.generate_secret_id("proxy", mount_point=mount)["data"]
    secret_id_file = tmp_path / f"{name}-secret-id"
    secret_id_file.write_text(secret_id["secret_id"] + "\n")
    return AppRoleLogin(mount, role_id, secret_id["secret_id"], secret_id_file)


def read_policy(*tenants: str) -> str:
    return "\n".join(
        f'path "secret/data/genesys/tenants/{tenant}" {{ capabilities = ["read"] }}'
        for tenant in tenants
    )


def vault_session(harness: ProxyHarness) -> VaultSession:
    source = harness.credentials.source
    assert isinstance(source, VaultCredentialSource)
    return source.session


async def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll until `condition` holds; a bounded wait for an event, not a timing assertion."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_approle_token_is_renewed_then_replaced_at_max_ttl_without_a_failed_request(
    harness: ProxyHarness, openbao: OpenBao, tmp_path: Path
) -> None:
    acme = harness.add_tenant("acme")
    login = create_approle(
        openbao,
        harness.prefix + "renew",
        tmp_path,
        policy_hcl=read_policy(acme.id),
        token_ttl="3s",
        token_max_ttl="8s",
    )
    # credentials.ttl 0 and an evicted token: every request reads Vault with the current token.
    await harness.start({"vault": {"auth": login.auth_config()}, "credentials": {"ttl": 0}})
    session = vault_session(harness)
    assert session.token_info is not None
    first_accessor = session.token_info.accessor
    assert first_accessor is not None
    statuses: list[int] = []

    async def traffic() -> None:
        while True:
            harness.tokens.evict(acme.id)
            response = await harness.client.get(
                "/api/v2/sim/echo", headers={"X-Tenant-ID": acme.id}
            )
            await response.read()
            statuses.append(response.status)
            await asyncio.sleep(0.05)

    reads_before = openbao.reads_of(acme.id)
    task = asyncio.create_task(traffic())
    try:
        await wait_for(lambda: session.renewals >= 1, "a renewal")
        # OpenBao's own record of the token shows the renewal.
        lookup = openbao.client().auth.token.lookup_accessor(first_accessor)["data"]
        assert lookup["last_renewal_time"]
        await wait_for(lambda: session.logins >= 2, "a login after the max TTL")
        seen = len(statuses)
        await wait_for(lambda: len(statuses) >= seen + 5, "requests after the new login")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    assert session.token_info.accessor != first_accessor
    assert set(statuses) == {200}, statuses
    assert openbao.reads_of(acme.id) - reads_before >= len(statuses)
    assert session.renewals >= 2  # 3 s TTL, 8 s max: renewed twice before the cap bites
    assert (await harness.admin.get("/readyz")).status == 200


async def test_renewal_of_a_revoked_token_leads_to_a_new_login(
    harness: ProxyHarness, openbao: OpenBao, tmp_path: Path
) -> None:
    acme = harness.add_tenant("acme")
    login = create_approle(
        openbao, harness.prefix + "revoked", tmp_path, policy_hcl=read_policy(acme.id)
    )
    await harness.start({"vault": {"auth": login.auth_config()}})
    session = vault_session(harness)
    assert session.token_info is not None
    accessor = session.token_info.accessor
    openbao.client().auth.token.revoke_accessor(accessor)

    await session.renew()
    assert not session.authenticated
    assert VaultRenewer(session).next_step().action == "login"
    # The app's own renewal loop logs in again by itself.
    await wait_for(lambda: session.authenticated, "the renewal loop to log in again")
    assert session.token_info.accessor != accessor
    response = await harness.client.get("/api/v2/sim/echo", headers={"X-Tenant-ID": acme.id})
    assert response.status == 200


@pytest.mark.slow
async def test_login_is_retried_with_backoff_until_the_secret_id_is_fixed(
    harness: ProxyHarness, openbao: OpenBao, tmp_path: Path
) -> None:
    acme = harness.add_tenant("acme")
    login = create_approle(
        openbao, harness.prefix + "retry", tmp_path, policy_hcl=read_policy(acme.id)
    )
    login.secret_id_file.write_text("fake-secret-id-that-is-wrong")
    await harness.start({"vault": {"auth": login.auth_config()}})
    session = vault_session(harness)
    readyz = await harness.admin.get("/readyz")
    assert readyz.status == 503
    assert "fake-secret-id-that-is-wrong" not in await readyz.text()
    await wait_for(lambda: session.failures >= 2, "the loop to retry the login")

    logins = session.logins
    login.secret_id_file.write_text(login.secret_id)
    # No request and no readiness probe: the renewal loop's retry is what logs in.
    await wait_for(lambda: session.logins > logins, "a retried login", timeout=60)
    assert (await harness.admin.get("/readyz")).status == 200


@pytest.mark.slow
async def test_readyz_turns_503_when_the_vault_token_expires(
    harness: ProxyHarness, openbao: OpenBao
) -> None:
    root = openbao.client()
    token = root.auth.token.create(policies=["default"], ttl="2s", renewable=False)["auth"]
    await harness.start({"vault": {"auth": {"token": token["client_token"]}}})
    session = vault_session(harness)
    assert (await harness.admin.get("/readyz")).status == 200

    await wait_for(lambda: not session.holds_usable_token, "the token to expire")
    # Vault's own clock has the last word: poll until it rejects the token too.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while (readyz := await harness.admin.get("/readyz")).status == 200:
        assert loop.time() < deadline, "/readyz stayed 200 after the token expired"
        await asyncio.sleep(0.1)
    assert readyz.status == 503
    assert token["client_token"] not in await readyz.text()
    assert not session.authenticated


async def test_token_file_replaced_while_serving_is_used_without_a_restart(
    harness: ProxyHarness, openbao: OpenBao, tmp_path: Path
) -> None:
    acme, globex = harness.add_tenant("acme"), harness.add_tenant("globex")
    root = openbao.client()
    for tenant in (acme.id, globex.id):
        root.sys.create_or_update_policy(name=tenant, policy=read_policy(tenant))
    old = root.auth.token.create(policies=[acme.id], ttl="1h")["auth"]["client_token"]
    new = root.auth.token.create(policies=[globex.id], ttl="1h")["auth"]["client_token"]
    token_file = tmp_path / "sink" / "token"
    token_file.parent.mkdir()
    token_file.write_text(old)
    await harness.start({"vault": {"auth": {"token": None, "token_file": str(token_file)}}})

    response = await harness.client.get("/api/v2/sim/echo", headers={"X-Tenant-ID": globex.id})
    assert response.status == 403
    assert (await response.json())["error"] == "tenant_forbidden"

    # A Vault Agent sink writes a new file and renames it over the old one.
    staged = token_file.with_name("token.tmp")
    staged.write_text(new)
    staged.replace(token_file)
    response = await harness.client.get("/api/v2/sim/echo", headers={"X-Tenant-ID": globex.id})
    assert response.status == 200
