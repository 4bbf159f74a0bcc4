"""Byte for byte: path, query and header bytes reach Genesys (and come back) as the app sent them.

The requests go out on a raw socket (as `curl --path-as-is` would send them), so nothing on the
test's side normalises them; the simulator records the request target and header lines it got.
"""

from __future__ import annotations

import pytest

from tests.conftest import ProxyHarness, TenantInfo
from tests.test_hostile import exchange, status_of
from tests.test_tenant_header import proxy_error, raw_request

TARGETS = [
    "/../aps1.pure.cloud/api/v2/x",
    "/api/v2/../../x",
    "/api/v2/./x/.",
    "/api/v2/%7Euser/%41%42",
    "/api/v2/sim/echo/a%2Fb",
    "/api/v2/sim/echo?q=a%2Fb",
    "/api/v2/sim/echo?a=%zz",
    "/api/v2/sim/echo?a=%20+b&&c==;d",
    "/api/v2/sim/echo?",
    "/api/v2/sim/echo/%0A%00%ff",
    "//api/v2/sim/echo",
    "/api/v2/sim/echo/caf%C3%A9?x=%E9",
    "/api/v2/sim/echo/'()*!$,;=:@[]",
]


@pytest.fixture
async def acme(harness: ProxyHarness) -> TenantInfo:
    tenant = harness.add_tenant("acme")
    await harness.start()
    return tenant


@pytest.mark.parametrize("target", TARGETS)
async def test_the_request_target_reaches_genesys_unchanged(
    harness: ProxyHarness, acme: TenantInfo, target: str
) -> None:
    answer = await exchange(harness.client.port, raw_request(target, [f"X-Tenant-ID: {acme.id}"]))
    status = status_of(answer)
    assert status is not None, answer[:300]
    assert status < 500, answer[:300]
    assert b"X-Proxy-Error" not in answer, answer[:300]
    seen = harness.sim.requests[-1]
    # The region comes from the tenant alone: dot-segments cannot climb out of it.
    assert seen.domain == acme.domain
    assert seen.target == f"/api/{acme.domain}{target}"
    assert seen.client_id == acme.client_id


async def test_header_bytes_that_are_not_utf8_pass_both_ways_unchanged(
    harness: ProxyHarness, acme: TenantInfo
) -> None:
    raw = raw_request(
        "/api/v2/sim/echo",
        [f"X-Tenant-ID: {acme.id}", "X-Foo: caf\xe9", "X-Echo-Back: na\xefve \xff"],
    )
    answer = await exchange(harness.client.port, raw)
    assert status_of(answer) == 200, answer[:300]
    seen = dict(harness.sim.requests[-1].raw_headers)
    assert seen[b"X-Foo"] == b"caf\xe9"
    assert seen[b"X-Echo-Back"] == b"na\xefve \xff"
    # ... and the simulator's answer carried it back through the proxy to the app.
    head = answer.partition(b"\r\n\r\n")[0]
    assert b"\r\nX-Echo-Back: na\xefve \xff\r\n" in head


async def test_valid_utf8_header_values_pass_unchanged_too(
    harness: ProxyHarness, acme: TenantInfo
) -> None:
    value = "caf\xc3\xa9 \xe2\x82\xac"  # UTF-8 bytes of "café €", as latin-1 characters
    raw = raw_request("/api/v2/sim/echo", [f"X-Tenant-ID: {acme.id}", f"X-Echo-Utf8: {value}"])
    answer = await exchange(harness.client.port, raw)
    assert dict(harness.sim.requests[-1].raw_headers)[b"X-Echo-Utf8"] == value.encode("latin-1")
    assert b"\r\nX-Echo-Utf8: " + value.encode("latin-1") + b"\r\n" in answer


async def test_a_path_with_an_encoded_newline_is_forwarded_not_a_plain_text_404(
    harness: ProxyHarness, acme: TenantInfo
) -> None:
    target = "/api/v2/sim/echo/a%0Ab"
    answer = await exchange(harness.client.port, raw_request(target, [f"X-Tenant-ID: {acme.id}"]))
    assert status_of(answer) == 200, answer[:300]
    assert harness.sim.requests[-1].target == f"/api/{acme.domain}{target}"


async def test_a_path_with_an_encoded_newline_and_no_tenant_gets_the_contracts_error(
    harness: ProxyHarness, acme: TenantInfo
) -> None:
    answer = await exchange(harness.client.port, raw_request("/api/v2/a%0Ab", []))
    assert proxy_error(answer) == (400, "missing_tenant"), answer[:300]
