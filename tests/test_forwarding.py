"""The proxy listener end to end: real app, real OpenBao, the Genesys simulator."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
from typing import Any

import pytest
from aiohttp import web

from proxy.simulator import GenesysSimulator, blob_content
from tests.conftest import ProxyHarness


def last_seen(sim: GenesysSimulator, path: str) -> Any:
    matching = [seen for seen in sim.requests if seen.path == path]
    assert matching, f"the simulator saw no request for {path}"
    return matching[-1]


@pytest.mark.parametrize("region", ["aps1.pure.cloud", "ap-south-1"])
async def test_request_reaches_the_tenants_region_with_its_token(
    harness: ProxyHarness, region: str
) -> None:
    acme = harness.add_tenant("acme", region=region)
    await harness.start()
    response = await harness.client.get(
        "/api/v2/organizations/me", headers={"X-Tenant-ID": acme.id}
    )
    assert response.status == 200
    assert (await response.json())["name"] == acme.org_name
    seen = last_seen(harness.sim, "/api/v2/organizations/me")
    assert seen.domain == "aps1.pure.cloud"
    assert seen.client_id == acme.client_id
    token = seen.header("Authorization")
    assert token is not None
    assert token.removeprefix("Bearer ") in harness.sim.issued_tokens()
    assert seen.header("X-Tenant-ID") is None


async def test_headers_are_cleaned_and_everything_else_passes_both_ways(
    harness: ProxyHarness,
) -> None:
    acme = harness.add_tenant("acme")
    await harness.start()
    body = b'{"query": "caf\xc3\xa9", "n": 1}'
    response = await harness.client.post(
        "/api/v2/sim/echo/a%2Fb/c?x=1&y=%20two&y=3",
        data=body,
        headers={
            "X-Tenant-ID": acme.id,
            "Authorization": "Bearer ",  # what the Genesys SDK sends with an empty token
            "Content-Type": "application/json",
            "ININ-Correlation-Id": "corr-1234",
            "Connection": "keep-alive, X-Hop",
            "X-Hop": "must not pass",
            "Keep-Alive": "timeout=5",
            "Proxy-Authorization": "Basic Zm9vOmJhcg==",
            "TE": "trailers",
            "Upgrade": "h2c",
            "X-Custom": "passes",
            "Accept-Encoding": "gzip",
        },
    )
    assert response.status == 200
    echo = await response.json()
    assert echo["method"] == "POST"
    assert echo["path"] == "/api/v2/sim/echo/a%2Fb/c"
    assert echo["query_string"] == "x=1&y=%20two&y=3"
    assert echo["body_length"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
    sent = {name.lower(): value for name, value in echo["headers"]}
    for dropped in ("x-tenant-id", "x-hop", "keep-alive", "proxy-authorization", "te", "upgrade"):
        assert dropped not in sent, dropped
    assert sent.get("connection", "keep-alive").lower() == "keep-alive"
    authorizations = [v for n, v in echo["headers"] if n.lower() == "authorization"]
    assert len(authorizations) == 1
    assert authorizations[0].removeprefix("Bearer ") in harness.sim.issued_tokens()
    assert sent["x-custom"] == "passes"
    assert sent["inin-correlation-id"] == "corr-1234"
    assert sent["accept-encoding"] == "gzip"
    assert sent["content-type"] == "application/json"
    assert sent["host"].startswith("127.0.0.1")
    assert response.headers["ININ-Correlation-Id"] == "corr-1234"
    assert "inin-ratelimit-count" in response.headers


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
async def test_every_method_passes_unchanged(harness: ProxyHarness, method: str) -> None:
    acme = harness.add_tenant("acme")
    await harness.start()
    response = await harness.client.request(
        method, "/api/v2/sim/echo", headers={"X-Tenant-ID": acme.id}
    )
    assert response.status == 200
    assert last_seen(harness.sim, "/api/v2/sim/echo").method == method


async def test_a_429_passes_back_with_its_retry_after(harness: ProxyHarness) -> None:
    acme = harness.add_tenant("acme")
    await harness.start()
    harness.sim.inject_api_fault(status=429, retry_after=7, client_id=acme.client_id)
    response = await harness.client.get("/api/v2/users", headers={"X-Tenant-ID": acme.id})
    assert response.status == 429
    assert response.headers["Retry-After"] == "7"
    assert "X-Proxy-Error" not in response.headers
    assert (await response.json())["code"] == "too.many.requests"


async def test_genesys_errors_pass_through_untouched(harness: ProxyHarness) -> None:
    acme = harness.add_tenant("acme")
    await harness.start()
    response = await harness.client.get("/api/v2/nothing/here", headers={"X-Tenant-ID": acme.id})
    assert response.status == 404
    assert "X-Proxy-Error" not in response.headers
    assert (await response.json())["code"] == "not.found"


async def test_fifty_sequential_requests_cost_one_token_fetch(harness: ProxyHarness) -> None:
    acme = harness.add_tenant("acme")
    await harness.start()
    for _ in range(50):
        response = await harness.client.get("/api/v2/users", headers={"X-Tenant-ID": acme.id})
        assert response.status == 200
        response.release()
    assert harness.sim.token_requests(acme.client_id) == 1
    assert harness.sim.api_requests(acme.client_id) == 50


async def test_concurrent_cold_requests_share_one_token_fetch_and_one_vault_read(
    harness: ProxyHarness,
) -> None:
    acme = harness.add_tenant("acme")
    await harness.start()
    # Slow the token endpoint down so that all 200 requests are waiting at once.
    harness.sim.inject_login_fault(status=200, delay=0.3, count=1)
    reads_before = harness.vault.reads_of(acme.id)

    async def one() -> int:
        response = await harness.client.get("/api/v2/users", headers={"X-Tenant-ID": acme.id})
        response.release()
        return int(response.status)

    statuses = await asyncio.gather(*(one() for _ in range(200)))
    assert statuses == [200] * 200
    assert harness.sim.token_requests(acme.client_id) == 1
    assert harness.vault.reads_of(acme.id) - reads_before == 1
    assert harness.credentials.reads == 1


async def test_many_tenants_at_once_each_get_their_own_organisation(
    harness: ProxyHarness,
) -> None:
    regions = ["ap-south-1", "mypurecloud.ie", "us-east-1", "eu-central-1", "aps1.pure.cloud"]
    tenants = [harness.add_tenant(f"org{i}", region=regions[i % len(regions)]) for i in range(20)]
    await harness.start()

    async def one(index: int) -> tuple[int, str]:
        tenant = tenants[index % 20]
        response = await harness.client.get(
            "/api/v2/organizations/me", headers={"X-Tenant-ID": tenant.id}
        )
        assert response.status == 200
        return index % 20, (await response.json())["name"]

    results = await asyncio.gather(*(one(i) for i in range(500)))
    for index, name in results:
        assert name == tenants[index].org_name
    for tenant in tenants:
        assert harness.sim.token_requests(tenant.client_id) == 1
    domains = {seen.client_id: seen.domain for seen in harness.sim.requests}
    for tenant in tenants:
        assert domains[tenant.client_id] == tenant.domain


async def test_an_8_mib_response_streams_through_unchanged(harness: ProxyHarness) -> None:
    acme = harness.add_tenant("acme")
    await harness.start()
    size = 8 * 1024 * 1024
    response = await harness.client.get(
        f"/api/v2/sim/blob?bytes={size}", headers={"X-Tenant-ID": acme.id}
    )
    assert response.status == 200
    assert response.headers["Content-Length"] == str(size)
    digest, total, chunks = hashlib.sha256(), 0, 0
    async for chunk in response.content.iter_any():
        digest.update(chunk)
        total += len(chunk)
        chunks += 1
    assert total == size
    assert digest.hexdigest() == hashlib.sha256(blob_content(size)).hexdigest()
    assert chunks > 1


async def test_compressed_answers_pass_through_still_compressed(harness: ProxyHarness) -> None:
    acme = harness.add_tenant("acme")
    await harness.start()
    response = await harness.client.get(
        "/api/v2/sim/blob?bytes=100000&gzip=1",
        headers={"X-Tenant-ID": acme.id, "Accept-Encoding": "gzip"},
        auto_decompress=False,
    )
    assert response.status == 200
    assert response.headers["Content-Encoding"] == "gzip"
    raw = await response.read()
    assert raw[:2] == b"\x1f\x8b"
    assert int(response.headers["Content-Length"]) == len(raw)


async def test_a_2_mib_upload_arrives_intact(harness: ProxyHarness) -> None:
    acme = harness.add_tenant("acme")
    await harness.start()
    body = bytes(range(256)) * (2 * 1024 * 1024 // 256)
    response = await harness.client.put(
        "/api/v2/sim/echo", data=io.BytesIO(body), headers={"X-Tenant-ID": acme.id}
    )
    assert response.status == 200
    echo = await response.json()
    assert echo["body_length"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()


async def test_a_chunked_upload_streams_through(harness: ProxyHarness) -> None:
    acme = harness.add_tenant("acme")
    await harness.start()
    parts = [bytes([i]) * 100_000 for i in range(30)]

    async def chunks() -> Any:
        for part in parts:
            yield part

    response = await harness.client.post(
        "/api/v2/sim/echo", data=chunks(), headers={"X-Tenant-ID": acme.id}
    )
    assert response.status == 200
    echo = await response.json()
    assert echo["body_sha256"] == hashlib.sha256(b"".join(parts)).hexdigest()


async def test_a_body_over_the_limit_is_413_and_never_forwarded(harness: ProxyHarness) -> None:
    acme = harness.add_tenant("acme")
    await harness.start({"listen": {"max_body_bytes": 1024 * 1024}})
    response = await harness.client.post(
        "/api/v2/sim/echo",
        data=io.BytesIO(b"x" * (1024 * 1024 + 1)),
        headers={"X-Tenant-ID": acme.id},
    )
    assert response.status == 413
    assert response.headers["X-Proxy-Error"] == "body_too_large"
    body = await response.json()
    assert body["error"] == "body_too_large"
    assert body["tenant"] == acme.id
    assert harness.sim.api_requests() == 0


async def test_a_chunked_body_over_the_limit_is_413(harness: ProxyHarness) -> None:
    acme = harness.add_tenant("acme")
    await harness.start({"listen": {"max_body_bytes": 300_000}})

    async def chunks() -> Any:
        for _ in range(10):
            yield b"y" * 100_000

    response = await harness.client.post(
        "/api/v2/sim/echo", data=chunks(), headers={"X-Tenant-ID": acme.id}
    )
    assert response.status == 413
    assert response.headers["X-Proxy-Error"] == "body_too_large"


async def test_revoked_tokens_cost_the_app_nothing(harness: ProxyHarness) -> None:
    acme = harness.add_tenant("acme")
    await harness.start()
    first = await harness.client.get("/api/v2/users", headers={"X-Tenant-ID": acme.id})
    assert first.status == 200
    assert harness.sim.revoke_tokens(acme.client_id) == 1
    for payload in (None, b'{"replayed": true}'):
        response = await harness.client.post(
            "/api/v2/sim/echo", data=payload, headers={"X-Tenant-ID": acme.id}
        )
        assert response.status == 200
        harness.sim.revoke_tokens(acme.client_id)
    assert (await response.json())["body_length"] == len(b'{"replayed": true}')
    assert harness.sim.token_requests(acme.client_id) == 3


async def test_a_revoked_token_under_a_burst_of_requests_costs_one_refetch(
    harness: ProxyHarness,
) -> None:
    acme = harness.add_tenant("acme")
    await harness.start()
    response = await harness.client.get("/api/v2/users", headers={"X-Tenant-ID": acme.id})
    assert response.status == 200
    harness.sim.revoke_tokens(acme.client_id)

    async def one() -> int:
        response = await harness.client.get("/api/v2/users", headers={"X-Tenant-ID": acme.id})
        response.release()
        return int(response.status)

    assert await asyncio.gather(*(one() for _ in range(30))) == [200] * 30
    assert harness.sim.token_requests(acme.client_id) == 2


async def test_local_token_endpoints_hand_out_the_tenants_token(harness: ProxyHarness) -> None:
    acme = harness.add_tenant("acme")
    await harness.start()
    response = await harness.client.get("/auth/token", headers={"X-Tenant-ID": acme.id})
    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = await response.json()
    assert body["token_type"] == "bearer"
    assert body["access_token"] in harness.sim.issued_tokens()
    assert 0 < body["expires_in"] <= 86400
    oauth = await harness.client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        headers={
            "Authorization": "Basic " + base64.b64encode(f"{acme.id}:unused".encode()).decode()
        },
    )
    assert oauth.status == 200
    assert (await oauth.json())["access_token"] == body["access_token"]
    assert harness.sim.token_requests(acme.client_id) == 1


async def test_oauth_token_needs_the_client_credentials_grant(harness: ProxyHarness) -> None:
    acme = harness.add_tenant("acme")
    await harness.start()
    response = await harness.client.post(
        "/oauth/token", data={"grant_type": "password"}, headers={"X-Tenant-ID": acme.id}
    )
    assert response.status == 400
    assert response.headers["X-Proxy-Error"] == "bad_request"


async def test_local_token_endpoint_can_be_turned_off(harness: ProxyHarness) -> None:
    acme = harness.add_tenant("acme")
    await harness.start({"local_token_endpoint": False})
    for method in ("GET", "POST"):
        path = "/auth/token" if method == "GET" else "/oauth/token"
        response = await harness.client.request(method, path, headers={"X-Tenant-ID": acme.id})
        assert response.status == 404
        assert response.headers["X-Proxy-Error"] == "not_found"
    assert harness.sim.api_requests() == 0
    assert harness.sim.token_requests() == 0


async def test_default_tenant_is_used_without_the_header(harness: ProxyHarness) -> None:
    acme = harness.add_tenant("acme")
    await harness.start({"tenant": {"default": acme.id}})
    response = await harness.client.get("/api/v2/organizations/me")
    assert response.status == 200
    assert (await response.json())["name"] == acme.org_name


async def test_custom_tenant_header(harness: ProxyHarness) -> None:
    acme = harness.add_tenant("acme")
    await harness.start({"tenant": {"header": "X-Org"}})
    response = await harness.client.get("/api/v2/sim/echo", headers={"X-Org": acme.id})
    assert response.status == 200
    names = {name.lower() for name, _ in (await response.json())["headers"]}
    assert "x-org" not in names


async def test_error_bodies_are_json_with_one_sentence(harness: ProxyHarness) -> None:
    await harness.start()
    response = await harness.client.get("/api/v2/users")
    assert response.status == 400
    assert response.content_type == "application/json"
    body = json.loads(await response.text())
    assert set(body) == {"error", "message", "tenant"}
    assert body["message"].count("\n") == 0


async def test_upstream_cookies_pass_to_the_app_but_never_cross_tenants(
    harness: ProxyHarness, aiohttp_server: Any
) -> None:
    # A load balancer in front of the API may set stickiness cookies (AWSALB, say). A shared
    # cookie jar in the proxy would replay tenant A's cookie on tenant B's requests.
    async def api(request: web.Request) -> web.Response:
        response = web.json_response({"cookie": request.headers.get("Cookie")})
        response.set_cookie("AWSALB", f"sticky-{request.headers['Authorization'][-8:]}")
        return response

    upstream_app = web.Application()
    upstream_app.router.add_route("*", "/{tail:.*}", api)
    upstream = await aiohttp_server(upstream_app)
    first = harness.add_tenant("first")
    second = harness.add_tenant("second")
    # "localhost", not an IP: aiohttp's cookie jar ignores cookies from IP addresses.
    await harness.start({"genesys": {"api_url": f"http://localhost:{upstream.port}/{{domain}}"}})
    response = await harness.client.get("/api/v2/users", headers={"X-Tenant-ID": first.id})
    assert response.status == 200
    assert "AWSALB=sticky-" in response.headers["Set-Cookie"]
    for tenant in (second, first):
        harness.client.session.cookie_jar.clear()  # the app's own client must not send it either
        response = await harness.client.get("/api/v2/users", headers={"X-Tenant-ID": tenant.id})
        assert (await response.json())["cookie"] is None
