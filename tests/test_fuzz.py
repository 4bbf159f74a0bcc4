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
from tests.test_tenant_header import proxy_error

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


# -- byte for byte: random targets and header bytes ---------------------------------------------

# Every byte, raw or percent-encoded; aiohttp's parser takes the visible ASCII ones raw.
raw_chars = st.one_of(
    st.sampled_from(VISIBLE),
    st.integers(0, 255).map(lambda b: f"%{b:02X}"),
    st.integers(0, 255).map(lambda b: f"%{b:02x}"),
    st.sampled_from(["%", "%z", "%zz", "..", "./", "//", "?", "#", "&", "="]),
    st.integers(0, 255).map(chr),  # control, space and non-ASCII bytes: refused by the parser
)
raw_text = st.lists(raw_chars, max_size=24).map("".join)
header_bytes = st.binary(max_size=30).map(
    lambda b: bytes(c for c in b if c == 0x09 or 0x20 <= c != 0x7F).strip(b" \t")
)


def _is_wire_safe(target: str) -> bool:
    """Whether aiohttp's parser takes the target at all (visible ASCII only)."""
    return all(0x21 <= ord(c) <= 0x7E for c in target)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    prefix=st.sampled_from(["/api/v2/sim/echo/", "/api/v2/", "/", "/api/v2/sim/echo?"]),
    path=raw_text,
    query=st.one_of(st.none(), raw_text),
    value=header_bytes,
)
async def test_random_targets_and_header_bytes_arrive_unchanged_or_get_a_contract_error(
    fuzzed: tuple[ProxyHarness, TenantInfo],
    caplog: pytest.LogCaptureFixture,
    prefix: str,
    path: str,
    query: str | None,
    value: bytes,
) -> None:
    harness, acme = fuzzed
    caplog.set_level(logging.INFO)
    target = prefix + path + ("" if query is None else "?" + query)
    head = (
        f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        f"X-Tenant-ID: {acme.id}\r\n"
    ).encode("latin-1")
    raw = head + b"X-Fuzz: " + value + b"\r\n\r\n"
    harness.sim.reset_counters()

    answer = await exchange(harness.client.port, raw)

    status = status_of(answer)
    head_text = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").lower()
    assert status is None or status < 500, head_text
    seen = list(harness.sim.requests)
    if not _is_wire_safe(target):
        # Refused by aiohttp's parser before the proxy saw it: nothing forwarded.
        assert status == 400, head_text
        assert seen == []
    elif "x-proxy-error:" in head_text:
        code = head_text.split("x-proxy-error:", 1)[1].split("\r\n", 1)[0].strip()
        assert CLIENT_ERRORS.get(code) == status, head_text
        assert seen == []
    elif seen:
        # Forwarded: exactly the target the app sent, on the tenant's region, every header byte.
        assert len(seen) == 1
        assert seen[0].domain == acme.domain
        assert seen[0].target == f"/api/{acme.domain}{target}"
        assert dict(seen[0].raw_headers).get(b"X-Fuzz", b"") == value
    else:
        # Only the local token endpoint answers without Genesys (a path that decodes to it).
        assert status == 200, head_text
        assert b"access_token" in answer
    bad = proxy_records(caplog, logging.ERROR)
    assert bad == [], [r.getMessage() for r in bad]


@pytest.fixture
async def with_default(harness: ProxyHarness) -> tuple[ProxyHarness, TenantInfo, TenantInfo]:
    acme = harness.add_tenant("acme")
    globex = harness.add_tenant("globex")
    await harness.start({"tenant": {"default": globex.id}})
    return harness, acme, globex


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lines=st.lists(
        st.tuples(
            st.sampled_from(["X-Tenant-ID", "x-tenant-id", "X-TENANT-ID", "X-tenant-Id"]),
            st.sampled_from(["acme", "ghost", "", "  ", "bad/id", "..", "acme, acme"]),
        ),
        max_size=3,
    ),
    target=st.sampled_from(["/api/v2/organizations/me", "/auth/token"]),
)
async def test_tenant_headers_in_any_number_and_case_resolve_one_tenant_or_are_refused(
    with_default: tuple[ProxyHarness, TenantInfo, TenantInfo],
    lines: list[tuple[str, str]],
    target: str,
) -> None:
    harness, acme, globex = with_default
    names = {"acme": acme.id, "ghost": f"{harness.prefix}ghost"}
    head = [f"GET {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    head += [f"{name}: {names.get(value, value)}" for name, value in lines]
    harness.sim.reset_counters()

    answer = await exchange(harness.client.port, ("\r\n".join(head) + "\r\n\r\n").encode())

    status, code = proxy_error(answer)
    values = [value for _, value in lines]
    if len(values) > 1 or (values and not values[0].strip()):
        assert (status, code) == (400, "invalid_tenant"), answer[:300]
    elif values == ["acme"]:
        assert status == 200
    elif values == ["ghost"]:
        assert (status, code) == (404, "unknown_tenant")
    elif values:
        assert (status, code) == (400, "invalid_tenant")
    else:
        assert status == 200  # no header: the default tenant
    served = {seen.client_id for seen in harness.sim.requests}
    if status == 200 and target != "/auth/token":
        assert served == {acme.client_id if values else globex.client_id}
    else:
        assert served == set()
