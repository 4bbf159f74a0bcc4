"""One tenant per request: duplicate or empty tenant headers are refused, never resolved."""

from __future__ import annotations

import base64
import json

import pytest

from tests.conftest import ProxyHarness, TenantInfo
from tests.test_hostile import exchange, status_of

ME = "/api/v2/organizations/me"


def raw_request(
    target: str, header_lines: list[str], *, method: str = "GET", body: bytes = b""
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close", *header_lines]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def proxy_error(answer: bytes) -> tuple[int | None, str | None]:
    head, _, body = answer.partition(b"\r\n\r\n")
    code = None
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"x-proxy-error":
            code = value.strip().decode()
            assert json.loads(body)["error"] == code
    return status_of(answer), code


@pytest.fixture
async def with_default(harness: ProxyHarness) -> tuple[ProxyHarness, TenantInfo, TenantInfo]:
    acme = harness.add_tenant("acme")
    globex = harness.add_tenant("globex")
    await harness.start({"tenant": {"default": globex.id}})
    return harness, acme, globex


def tenant_lines(acme: TenantInfo, globex: TenantInfo) -> dict[str, list[str]]:
    return {
        "two-different": [f"X-Tenant-ID: {acme.id}", f"X-Tenant-ID: {globex.id}"],
        "two-same": [f"X-Tenant-ID: {acme.id}", f"X-Tenant-ID: {acme.id}"],
        "two-cases": [f"X-Tenant-ID: {acme.id}", f"x-tenant-id: {globex.id}"],
        "upper-and-lower": [f"X-TENANT-ID: {acme.id}", f"x-tenant-id: {acme.id}"],
        "one-empty-one-set": ["X-Tenant-ID:", f"X-Tenant-ID: {acme.id}"],
        "three": [f"X-Tenant-ID: {acme.id}"] * 3,
        "empty": ["X-Tenant-ID:"],
        "blank": ["X-Tenant-ID:    "],
    }


CASES = list(tenant_lines(TenantInfo("a", "", "", "", ""), TenantInfo("b", "", "", "", "")))


@pytest.mark.parametrize("case", CASES)
async def test_duplicate_or_empty_tenant_headers_are_400_and_never_the_default(
    with_default: tuple[ProxyHarness, TenantInfo, TenantInfo], case: str
) -> None:
    harness, acme, globex = with_default
    lines = tenant_lines(acme, globex)[case]
    requests = {
        "forward": raw_request(ME, lines),
        "auth-token": raw_request("/auth/token", lines),
        "oauth-token": raw_request(
            "/oauth/token",
            [*lines, "Content-Type: application/x-www-form-urlencoded"],
            method="POST",
            body=b"grant_type=client_credentials",
        ),
    }
    for name, raw in requests.items():
        answer = await exchange(harness.client.port, raw)
        assert proxy_error(answer) == (400, "invalid_tenant"), (name, answer[:300])
        assert b"access_token" not in answer
    assert harness.sim.api_requests() == 0
    assert harness.sim.token_requests() == 0


async def test_the_basic_username_never_stands_in_for_an_empty_tenant_header(
    with_default: tuple[ProxyHarness, TenantInfo, TenantInfo],
) -> None:
    harness, acme, _ = with_default
    basic = base64.b64encode(f"{acme.id}:unused".encode()).decode()
    raw = raw_request(
        "/oauth/token",
        [
            "X-Tenant-ID:",
            f"Authorization: Basic {basic}",
            "Content-Type: application/x-www-form-urlencoded",
        ],
        method="POST",
        body=b"grant_type=client_credentials",
    )
    assert proxy_error(await exchange(harness.client.port, raw)) == (400, "invalid_tenant")


async def test_one_tenant_header_in_any_case_still_works_and_absent_means_the_default(
    with_default: tuple[ProxyHarness, TenantInfo, TenantInfo],
) -> None:
    harness, acme, globex = with_default
    for line in (f"x-tenant-id: {acme.id}", f"X-TENANT-ID: {acme.id}"):
        answer = await exchange(harness.client.port, raw_request(ME, [line]))
        assert status_of(answer) == 200, answer[:300]
        assert harness.sim.requests[-1].client_id == acme.client_id
    answer = await exchange(harness.client.port, raw_request(ME, []))
    assert status_of(answer) == 200
    assert harness.sim.requests[-1].client_id == globex.client_id


async def test_the_resolver_takes_a_new_pattern_and_default_on_reconfigure(
    with_default: tuple[ProxyHarness, TenantInfo, TenantInfo],
) -> None:
    from proxy.config import parse_config

    harness, acme, _ = with_default
    resolver = harness.forwarder.tenants
    resolver.reconfigure(parse_config({"tenant": {"default": acme.id, "pattern": "^t.*$"}}))
    answer = await exchange(harness.client.port, raw_request(ME, []))
    assert status_of(answer) == 200
    assert harness.sim.requests[-1].client_id == acme.client_id
    answer = await exchange(harness.client.port, raw_request(ME, ["X-Tenant-ID: other"]))
    assert proxy_error(answer) == (400, "invalid_tenant")


@pytest.mark.parametrize(
    ("tenant", "why"),
    [
        ({"default": "-dash-first"}, "does not match the tenant pattern"),
        ({"default": "a?b", "pattern": ".*"}, "cannot name a Vault secret"),
        ({"default": "..", "pattern": ".*"}, "cannot name a Vault secret"),
    ],
)
def test_a_default_tenant_the_proxy_would_refuse_is_a_config_error(
    tenant: dict[str, str], why: str
) -> None:
    from proxy.config import parse_config
    from proxy.errors import ConfigError

    with pytest.raises(ConfigError, match=why) as raised:
        parse_config({"tenant": tenant})
    assert raised.value.key == "tenant.default"
