"""The official Genesys Cloud Python SDK, pointed at the proxy, works unchanged."""

from __future__ import annotations

import asyncio

import PureCloudPlatformClientV2 as genesys

from tests.conftest import ProxyHarness


async def test_official_sdk_lists_users_and_reads_its_organisation(
    harness: ProxyHarness,
) -> None:
    acme = harness.add_tenant("acme", org_name="Acme Contact Centre")
    await harness.start()
    host = harness.base_url.rstrip("/")

    def use_sdk() -> tuple[str, list[str]]:
        api_client = genesys.api_client.ApiClient(
            host=host, header_name="X-Tenant-ID", header_value=acme.id
        )
        organisation = genesys.OrganizationApi(api_client).get_organizations_me()
        users = genesys.UsersApi(api_client).get_users(page_size=25)
        return organisation.name, [user.name for user in users.entities]

    name, users = await asyncio.to_thread(use_sdk)
    assert name == "Acme Contact Centre"
    assert len(users) == 7
    assert all("Acme Contact Centre" in user for user in users)
    # The SDK sent "Authorization: Bearer " with an empty token; the proxy replaced it.
    seen = [s for s in harness.sim.requests if s.path == "/api/v2/users"][-1]
    assert seen.header("Authorization").removeprefix("Bearer ") in harness.sim.issued_tokens()


async def test_official_sdk_client_credentials_login_against_the_proxy(
    harness: ProxyHarness,
) -> None:
    acme = harness.add_tenant("acme")
    await harness.start({"tenant": {"header": "X-Tenant-ID"}})
    host = harness.base_url.rstrip("/")

    def login() -> str:
        # No tenant header on the login: the Basic username names the tenant.
        api_client = genesys.api_client.ApiClient(host=host)
        api_client.get_client_credentials_token(acme.id, "unused")
        api_client.set_default_header("X-Tenant-ID", acme.id)
        organisation = genesys.OrganizationApi(api_client).get_organizations_me()
        assert organisation.name == acme.org_name
        return str(api_client.access_token)

    token = await asyncio.to_thread(login)
    assert token in harness.sim.issued_tokens()
    assert harness.sim.token_requests(acme.client_id) == 1
