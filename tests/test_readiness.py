"""`/readyz` and the proxy's own Vault token (DESIGN.md, the admin listener; issue 12).

starting (503) until the credential source has worked once; then ready (200, with Vault's state)
through Vault outages, so a readiness probe never takes every pod out of service when Vault
blips; draining (503) once shutdown begins. A 403 caused by the proxy's own Vault token
(revoked, expired) means logging in again, never `tenant_forbidden`. Vault outages with cached
tenants are in tests/test_outages.py (`ride_through` checks readiness stays 200), a frozen
Vault in tests/test_vault_hang.py.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from proxy.app import READINESS
from proxy.config import parse_config
from proxy.server import Server
from proxy.simulator import GenesysSimulator
from proxy.tenants.credentials import VaultCredentialSource
from proxy.vault.session import VaultSession
from tests.conftest import OpenBao, ProxyHarness, deep_merge, find_free_port
from tests.test_vault_renewal import create_approle, read_policy

ECHO = "/api/v2/sim/echo"


def session_of(harness: ProxyHarness) -> VaultSession:
    source = harness.source
    assert isinstance(source, VaultCredentialSource)
    return source.session


async def readyz(harness: ProxyHarness) -> tuple[int, Any]:
    response = await harness.admin.get("/readyz")
    return response.status, await response.json()


async def vault_up(harness: ProxyHarness) -> float:
    text = await (await harness.admin.get("/metrics")).text()
    match = re.search(r"^genesys_proxy_vault_up (\S+)$", text, re.MULTILINE)
    assert match is not None, "no genesys_proxy_vault_up gauge"
    return float(match.group(1))


async def answer(harness: ProxyHarness, tenant: str) -> tuple[int, str | None]:
    response = await harness.client.get(ECHO, headers={"X-Tenant-ID": tenant})
    await response.read()
    return response.status, response.headers.get("X-Proxy-Error")


async def until(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Wait for an event (bounded; not a timing assertion)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, f"{what} did not happen"
        await asyncio.sleep(0.02)


# -- starting, ready, draining ---------------------------------------------------------------


async def test_readyz_is_starting_for_a_proxy_that_never_reached_vault(
    harness: ProxyHarness,
) -> None:
    acme = harness.add_tenant("acme", in_vault=False)
    nowhere = f"http://127.0.0.1:{find_free_port()}"
    await harness.start({"vault": {"address": nowhere}})
    assert await readyz(harness) == (503, {"status": "starting"})
    assert (await harness.admin.get("/healthz")).status == 200  # alive: no restart loop
    response = await harness.client.get(ECHO, headers={"X-Tenant-ID": acme.id})
    assert response.status == 503
    assert response.headers["X-Proxy-Error"] == "vault_unavailable"
    assert int(response.headers["Retry-After"]) >= 1
    assert nowhere.removeprefix("http://") in (await response.json())["message"]
    assert await vault_up(harness) == 0
    # Still starting after requests and probes: nothing has worked yet.
    assert await readyz(harness) == (503, {"status": "starting"})


async def test_readyz_is_ready_with_vault_ok_once_a_login_and_lookup_worked(
    harness: ProxyHarness,
) -> None:
    await harness.start()
    assert await readyz(harness) == (200, {"status": "ready", "vault": "ok"})
    assert await vault_up(harness) == 1


async def test_readyz_with_the_file_source_is_ready_once_the_file_loaded(
    harness: ProxyHarness, tmp_path: Path
) -> None:
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text(yaml.safe_dump({}))
    await harness.start({"credentials": {"source": "file", "file": str(tenants)}})
    # No Vault in play: nothing to report about it, and no gauge to page anyone about.
    assert await readyz(harness) == (200, {"status": "ready"})
    assert "genesys_proxy_vault_up" not in await (await harness.admin.get("/metrics")).text()


async def test_readyz_is_draining_as_soon_as_shutdown_begins(
    sim: GenesysSimulator, harness: ProxyHarness
) -> None:
    slow = harness.add_tenant("slow")
    overrides = {
        "listen": {"port": 0, "shutdown_grace": 20},
        "admin": {"port": 0},
        "log": {"access": False},
    }
    server = Server(parse_config(deep_merge(harness.base_config(), overrides)))
    await server.startup()
    readiness = server.proxy_app[READINESS]
    shutdown: asyncio.Task[None] | None = None
    try:
        async with aiohttp.ClientSession() as http:
            admin = f"http://127.0.0.1:{server.admin_port}/readyz"
            async with http.get(admin) as ready:
                assert (ready.status, await ready.json()) == (
                    200,
                    {"status": "ready", "vault": "ok"},
                )
            # A request in flight keeps the drain going while /readyz is asked.
            in_flight = asyncio.create_task(
                http.get(
                    f"http://127.0.0.1:{server.proxy_port}/api/v2/sim/slow?seconds=1",
                    headers={"X-Tenant-ID": slow.id},
                )
            )
            await until(lambda: sim.api_requests() >= 1, "the slow request to reach Genesys")
            shutdown = asyncio.create_task(server.shutdown())
            await until(lambda: readiness.draining, "the shutdown to begin")
            async with http.get(admin) as draining:
                assert (draining.status, await draining.json()) == (503, {"status": "draining"})
            response = await in_flight
            assert response.status == 200
            response.release()
    finally:
        if shutdown is None:
            await server.shutdown()
        else:
            await shutdown


# -- the proxy's own Vault token ---------------------------------------------------------------


async def test_a_revoked_proxy_token_means_logging_in_again_not_tenant_forbidden(
    harness: ProxyHarness, openbao: OpenBao, tmp_path: Path
) -> None:
    first, second = harness.add_tenant("first"), harness.add_tenant("second")
    outsider = harness.add_tenant("outsider")  # in Vault, but not in the role's policy
    login = create_approle(
        openbao, harness.prefix + "relogin", tmp_path, policy_hcl=read_policy(first.id, second.id)
    )
    await harness.start({"vault": {"auth": login.auth_config()}})
    session = session_of(harness)
    assert await answer(harness, first.id) == (200, None)
    assert session.token_info is not None
    accessor, logins = session.token_info.accessor, session.logins

    openbao.client().auth.token.revoke_accessor(accessor)
    # Vault answers the read with 403 for the revoked token: the proxy logs in again and
    # serves the request, instead of calling the tenant forbidden.
    assert await answer(harness, second.id) == (200, None)
    assert session.logins == logins + 1
    assert session.token_info.accessor != accessor
    assert await readyz(harness) == (200, {"status": "ready", "vault": "ok"})

    # A genuine policy denial with a good token is the tenant's: no login for it.
    assert await answer(harness, outsider.id) == (403, "tenant_forbidden")
    assert session.logins == logins + 1


async def test_an_expired_proxy_token_means_logging_in_again(
    harness: ProxyHarness, openbao: OpenBao, tmp_path: Path
) -> None:
    first, second = harness.add_tenant("first"), harness.add_tenant("second")
    # Tokens that live 2 s and cannot be renewed past it.
    login = create_approle(
        openbao,
        harness.prefix + "expiry",
        tmp_path,
        policy_hcl=read_policy(first.id, second.id),
        token_ttl="2s",
        token_max_ttl="2s",
    )
    await harness.start({"vault": {"auth": login.auth_config()}})
    session = session_of(harness)
    assert await answer(harness, first.id) == (200, None)
    assert session.token_info is not None
    accessor = session.token_info.accessor
    # Wait for Vault itself to drop the token (the renewal loop may already have replaced it).
    root = openbao.client()

    def expired() -> bool:
        try:
            root.auth.token.lookup_accessor(accessor)
        except Exception:  # Vault answers 400 "invalid accessor" once the token is gone
            return True
        return False

    await until(expired, "the token to expire in Vault")
    assert await answer(harness, second.id) == (200, None)
    assert session.token_info.accessor != accessor


async def test_a_revoked_literal_token_is_vault_unavailable_never_tenant_forbidden(
    harness: ProxyHarness, openbao: OpenBao
) -> None:
    first, second = harness.add_tenant("first"), harness.add_tenant("second")
    root = openbao.client()
    root.sys.create_or_update_policy(name=harness.prefix, policy=read_policy(first.id, second.id))
    token = root.auth.token.create(policies=[harness.prefix], ttl="1h")["auth"]["client_token"]
    await harness.start({"vault": {"auth": {"token": token}}})
    assert await answer(harness, first.id) == (200, None)

    root.auth.token.revoke(token)
    # Nothing in the config can make a new token: an outage of the proxy's own, not the tenant's.
    assert await answer(harness, second.id) == (503, "vault_unavailable")
    assert await answer(harness, first.id) == (200, None)  # cached: still served
    assert await readyz(harness) == (200, {"status": "ready", "vault": "unavailable"})
