"""A bounded fuzz run of the running proxy: random requests as raw bytes, never a 5xx or a crash."""

from __future__ import annotations

import logging
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.http.forward import FORWARDED_METHODS
from tests.conftest import ProxyHarness, TenantInfo
from tests.test_hostile import exchange, proxy_records, status_of, still_serves

# Every code the proxy may answer itself, with its status; none is a 5xx while Vault and
# Genesys are up and the tenants' records are good.
CLIENT_ERRORS = {
    "missing_tenant": 400,
    "invalid_tenant": 400,
    "bad_request": 400,
    "unknown_tenant": 404,
    "body_too_large": 413,
    "not_found": 404,
    "bad_host": 403,
    "cross_site": 403,
}
VISIBLE = "".join(chr(c) for c in range(0x21, 0x7F))
TOKEN_CHARS = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"

methods = st.one_of(
    st.sampled_from(sorted(FORWARDED_METHODS | {"TRACE", "CONNECT", "PROPFIND"})),
    st.text(alphabet=TOKEN_CHARS, min_size=1, max_size=12),
)
targets = st.one_of(
    st.tuples(
        st.sampled_from(
            ["/api/v2/users", "/api/v2/sim/echo", "/api/v2/organizations/me", "/", "/auth/token"]
        ),
        st.text(alphabet=VISIBLE, max_size=60),
    ).map("".join),
    st.text(alphabet=VISIBLE, min_size=1, max_size=60),
)
header_lines = st.lists(
    st.tuples(
        st.text(alphabet=TOKEN_CHARS, min_size=1, max_size=16),
        st.text(alphabet=VISIBLE + " \t", max_size=40),
    ),
    max_size=8,
)


@pytest.fixture
async def fuzzed(harness: ProxyHarness) -> tuple[ProxyHarness, TenantInfo]:
    acme = harness.add_tenant("acme")
    await harness.start({"listen": {"max_body_bytes": 4096}})
    await still_serves(harness, acme)
    return harness, acme


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    method=methods,
    target=targets,
    tenant=st.one_of(
        st.none(),
        st.just("acme"),
        st.just("ghost"),
        st.text(alphabet=VISIBLE + " ", max_size=70),
    ),
    headers=header_lines,
    body=st.binary(max_size=6000),
    declare_length=st.booleans(),
)
async def test_random_requests_never_get_a_5xx_or_crash_the_proxy(
    fuzzed: tuple[ProxyHarness, TenantInfo],
    caplog: pytest.LogCaptureFixture,
    method: str,
    target: str,
    tenant: str | None,
    headers: list[tuple[str, str]],
    body: bytes,
    declare_length: bool,
) -> None:
    harness, acme = fuzzed
    caplog.set_level(logging.INFO)
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    if tenant is not None:
        shown = {"acme": acme.id, "ghost": f"{harness.prefix}ghost"}.get(tenant, tenant)
        lines.append(f"X-Tenant-ID: {shown}")
    lines += [f"{name}: {value}" for name, value in headers]
    if declare_length:
        lines.append(f"Content-Length: {len(body)}")
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body if declare_length else b"")

    answer = await exchange(harness.client.port, raw)

    status = status_of(answer)
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").lower()
    if "x-proxy-error:" in head:
        code = head.split("x-proxy-error:", 1)[1].split("\r\n", 1)[0].strip()
        assert CLIENT_ERRORS.get(code) == status, head
    else:
        # The simulator's own answer, aiohttp's 400 for a malformed request, or a closed socket.
        assert status is None or status < 500, head
    bad = proxy_records(caplog, logging.ERROR)
    assert bad == [], [r.getMessage() for r in bad]
