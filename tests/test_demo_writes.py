"""The simulated org takes writes through the proxy, and the demo's echo shows what arrived."""

from __future__ import annotations

import base64

import aiohttp

from proxy.demo import DEMO_TENANTS, NEW_USER, instructions, new_user_id
from proxy.simulator import GenesysSimulator
from tests.conftest import ProxyHarness


async def test_create_change_and_delete_a_user_through_the_proxy(harness: ProxyHarness) -> None:
    acme = harness.add_tenant("acme")
    globex = harness.add_tenant("globex", region="eu-west-1")
    await harness.start()
    acme_h, globex_h = {"X-Tenant-ID": acme.id}, {"X-Tenant-ID": globex.id}

    created = await harness.client.post(
        "/api/v2/users", json={"name": "Ada", "email": "ada@acme.example"}, headers=acme_h
    )
    assert created.status == 200
    user = await created.json()
    assert (user["name"], user["version"]) == ("Ada", 1)
    again = await harness.client.post(
        "/api/v2/users", json={"name": "Ada", "email": "ada@acme.example"}, headers=acme_h
    )
    assert again.status == 409

    path = f"/api/v2/users/{user['id']}"
    stale = await harness.client.patch(path, json={"version": 7, "title": "x"}, headers=acme_h)
    assert stale.status == 409
    changed = await harness.client.patch(path, json={"version": 1, "title": "CTO"}, headers=acme_h)
    assert (await changed.json())["title"] == "CTO"
    assert (await (await harness.client.get(path, headers=acme_h)).json())["version"] == 2

    # Another tenant's org has its own users: it cannot see, change or delete acme's.
    assert (await harness.client.get(path, headers=globex_h)).status == 404
    assert (await harness.client.delete(path, headers=globex_h)).status == 404
    listing = await (await harness.client.get("/api/v2/users", headers=globex_h)).json()
    assert user["id"] not in {entry["id"] for entry in listing["entities"]}

    deleted = await harness.client.delete(path, headers=acme_h)
    assert (deleted.status, await deleted.json()) == (200, {})
    assert (await harness.client.get(path, headers=acme_h)).status == 404
    bad = await harness.client.post("/api/v2/users", data=b"not json", headers=acme_h)
    assert bad.status == 400


async def test_demo_echo_masks_the_token_and_shows_the_tenant_header_gone() -> None:
    sim = GenesysSimulator(reveal_tokens=False)
    sim.add_client("client-a", "fake-secret-a", domain="aps1.pure.cloud")
    async with sim.running() as running, aiohttp.ClientSession() as http:
        login = await http.post(
            f"{running.base_url}/login/aps1.pure.cloud/oauth/token",
            data={"grant_type": "client_credentials"},
            headers={
                "Authorization": "Basic " + base64.b64encode(b"client-a:fake-secret-a").decode()
            },
        )
        token = (await login.json())["access_token"]
        echo = await http.get(
            f"{running.base_url}/api/aps1.pure.cloud/api/v2/sim/echo",
            headers={"Authorization": f"Bearer {token}"},
        )
        text = await echo.text()
    assert token not in text
    assert "<token issued to client-a, 86 characters>" in text


def test_demo_instructions_print_the_writes_for_the_user_they_create() -> None:
    text = instructions(8080, 9090)
    assert f"/api/v2/users/{new_user_id()}" in text
    assert NEW_USER["email"] in text
    for method in ("POST", "PATCH", "DELETE"):
        assert f"-X {method} " in text
    assert "/api/v2/sim/echo" in text
    assert set(DEMO_TENANTS) == {"demo", "demo-eu"}
