"""Every row of the contract's error table, produced through the real proxy."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import hvac
import pytest

from tests.conftest import ProxyHarness


async def expect_error(response: Any, status: int, code: str, tenant: str | None) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.headers["X-Proxy-Error"] == code
    assert response.content_type == "application/json"
    body: dict[str, Any] = await response.json()
    assert body["error"] == code
    assert body["tenant"] == tenant
    assert isinstance(body["message"], str)
    assert body["message"]
    return body


def raw_request(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


async def test_missing_tenant(harness: ProxyHarness) -> None:
    await harness.start()
    response = await harness.client.get("/api/v2/users")
    await expect_error(response, 400, "missing_tenant", None)


@pytest.mark.parametrize(
    "tenant",
    ["../secret", "a/b", "-leading-dash", "x" * 64, "sp ace", "semi;colon", "%2e%2e", "ünï"],
)
async def test_invalid_tenant_never_reaches_vault(harness: ProxyHarness, tenant: str) -> None:
    await harness.start()
    response = await harness.client.get(
        "/api/v2/users", headers={"X-Tenant-ID": tenant.encode().decode("latin-1")}
    )
    await expect_error(response, 400, "invalid_tenant", None)
    assert harness.credentials.reads == 0


async def test_absolute_form_target_is_bad_request(harness: ProxyHarness) -> None:
    acme = harness.add_tenant("acme")
    await harness.start()
    port = harness.client.port
    answer = await asyncio.to_thread(
        raw_request,
        port,
        b"GET http://evil.example/api/v2/users HTTP/1.1\r\nHost: evil.example\r\n"
        + f"X-Tenant-ID: {acme.id}\r\nConnection: close\r\n\r\n".encode(),
    )
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"X-Proxy-Error: bad_request" in answer
    assert harness.sim.api_requests() == 0


async def test_connect_is_bad_request(harness: ProxyHarness) -> None:
    acme = harness.add_tenant("acme")
    await harness.start()
    answer = await asyncio.to_thread(
        raw_request,
        harness.client.port,
        b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n"
        + f"X-Tenant-ID: {acme.id}\r\nConnection: close\r\n\r\n".encode(),
    )
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"X-Proxy-Error: bad_request" in answer


async def test_unknown_tenant(harness: ProxyHarness) -> None:
    await harness.start()
    tenant = f"{harness.prefix}nobody"
    response = await harness.client.get("/api/v2/users", headers={"X-Tenant-ID": tenant})
    await expect_error(response, 404, "unknown_tenant", tenant)


async def test_tenant_forbidden_when_the_vault_policy_denies_the_read(
    harness: ProxyHarness,
) -> None:
    allowed = harness.add_tenant("allowed")
    denied = harness.add_tenant("denied")
    client: hvac.Client = harness.vault.client()
    policy = f"proxy-{allowed.id}"
    client.sys.create_or_update_policy(
        policy,
        f'path "secret/data/genesys/tenants/{allowed.id}" {{ capabilities = ["read"] }}',
    )
    token = client.auth.token.create(policies=[policy], ttl="10m")["auth"]["client_token"]
    await harness.start({"vault": {"auth": {"token": token}}})
    ok = await harness.client.get("/api/v2/users", headers={"X-Tenant-ID": allowed.id})
    assert ok.status == 200
    response = await harness.client.get("/api/v2/users", headers={"X-Tenant-ID": denied.id})
    await expect_error(response, 403, "tenant_forbidden", denied.id)


async def test_body_too_large(harness: ProxyHarness) -> None:
    acme = harness.add_tenant("acme")
    await harness.start({"listen": {"max_body_bytes": 10}})
    response = await harness.client.post(
        "/api/v2/sim/echo", data=b"12345678901", headers={"X-Tenant-ID": acme.id}
    )
    await expect_error(response, 413, "body_too_large", acme.id)


@pytest.mark.parametrize(
    ("record", "hint"),
    [
        ({"client_id": "abc", "region": "ap-south-1"}, "client_secret"),
        (
            {"client_id": "abc", "client_secret": "fake-s", "region": "aps1.mypurecloud.com"},
            "aps1.pure.cloud",
        ),
        ({"client_id": "abc", "client_secret": "fake-s", "region": "mars-north-1"}, "region"),
    ],
)
async def test_invalid_tenant_credentials(
    harness: ProxyHarness, record: dict[str, str], hint: str
) -> None:
    tenant = f"{harness.prefix}broken"
    harness.vault.client().secrets.kv.v2.create_or_update_secret(
        path=f"genesys/tenants/{tenant}", secret=record, mount_point="secret"
    )
    await harness.start()
    response = await harness.client.get("/api/v2/users", headers={"X-Tenant-ID": tenant})
    body = await expect_error(response, 502, "invalid_tenant_credentials", tenant)
    assert hint in body["message"]
    assert "fake-s" not in await response.text()


async def test_genesys_auth_failed_for_a_wrong_secret(harness: ProxyHarness) -> None:
    acme = harness.add_tenant("acme", vault_secret="fake-wrong-secret")
    await harness.start()
    response = await harness.client.get("/api/v2/users", headers={"X-Tenant-ID": acme.id})
    await expect_error(response, 502, "genesys_auth_failed", acme.id)
    assert "fake-wrong-secret" not in await response.text()


async def test_vault_unavailable(harness: ProxyHarness, free_port: int) -> None:
    await harness.start({"vault": {"address": f"http://127.0.0.1:{free_port}"}})
    tenant = f"{harness.prefix}acme"
    response = await harness.client.get("/api/v2/users", headers={"X-Tenant-ID": tenant})
    await expect_error(response, 503, "vault_unavailable", tenant)
    assert int(response.headers["Retry-After"]) >= 1
    ready = await harness.admin.get("/readyz")
    assert ready.status == 503


async def test_token_unavailable(harness: ProxyHarness) -> None:
    acme = harness.add_tenant("acme")
    await harness.start()
    harness.sim.inject_login_fault(status=503, retry_after=3, count=5)
    response = await harness.client.get("/api/v2/users", headers={"X-Tenant-ID": acme.id})
    await expect_error(response, 503, "token_unavailable", acme.id)
    assert int(response.headers["Retry-After"]) >= 1


async def test_upstream_unreachable(harness: ProxyHarness, free_port: int) -> None:
    acme = harness.add_tenant("acme")
    await harness.start({"genesys": {"api_url": f"http://127.0.0.1:{free_port}/{{domain}}"}})
    response = await harness.client.get("/api/v2/users", headers={"X-Tenant-ID": acme.id})
    await expect_error(response, 502, "upstream_unreachable", acme.id)


async def test_upstream_timeout(harness: ProxyHarness) -> None:
    acme = harness.add_tenant("acme")
    await harness.start({"genesys": {"timeout": 0.3}})
    response = await harness.client.get(
        "/api/v2/sim/slow?seconds=3", headers={"X-Tenant-ID": acme.id}
    )
    await expect_error(response, 504, "upstream_timeout", acme.id)


async def test_readyz_is_ready_with_vault_up(harness: ProxyHarness) -> None:
    await harness.start()
    assert (await harness.admin.get("/healthz")).status == 200
    ready = await harness.admin.get("/readyz")
    assert ready.status == 200


async def test_an_oversized_oauth_form_is_body_too_large(harness: ProxyHarness) -> None:
    await harness.start({"listen": {"max_body_bytes": 2048}})
    response = await harness.client.post(
        "/oauth/token", data={"grant_type": "client_credentials", "pad": "x" * 4096}
    )
    await expect_error(response, 413, "body_too_large", None)


async def test_a_bug_is_a_json_500_with_no_traceback(
    harness: ProxyHarness, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    acme = harness.add_tenant("acme")
    await harness.start()

    async def broken(tenant: str) -> None:
        raise RuntimeError("simulated bug with internal detail")

    monkeypatch.setattr(harness.tokens, "lookup", broken)
    response = await harness.client.get("/api/v2/users", headers={"X-Tenant-ID": acme.id})
    await expect_error(response, 500, "internal_error", None)
    text = await response.text()
    assert "Traceback" not in text
    assert "internal detail" not in text
    assert "simulated bug with internal detail" in caplog.text


async def test_a_connect_timeout_is_upstream_unreachable(harness: ProxyHarness) -> None:
    # A listener whose accept queue is full drops new SYNs: connecting hangs until the timeout.
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        fillers = []
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        await asyncio.sleep(0.1)
        acme = harness.add_tenant("acme")
        await harness.start(
            {
                "genesys": {
                    "api_url": f"http://127.0.0.1:{port}/{{domain}}",
                    "connect_timeout": 0.3,
                }
            }
        )
        try:
            response = await harness.client.get("/api/v2/users", headers={"X-Tenant-ID": acme.id})
            await expect_error(response, 502, "upstream_unreachable", acme.id)
        finally:
            for filler in fillers:
                filler.close()
