"""Hostile and broken clients: raw bytes on a socket, where aiohttp's client would clean them up.

Each case must end in a clear 4xx or a closed connection: never a 500, an unhandled exception
in the log, a leaked task, or a Vault read for a tenant id that fails the pattern. After each,
the proxy serves a normal request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import logging
from typing import Any

import pytest

from tests.conftest import ProxyHarness, TenantInfo

ME = "/api/v2/organizations/me"


async def exchange(port: int, data: bytes, *, timeout: float = 10.0) -> bytes:
    """Send raw bytes and read until the proxy closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
        await _closed(writer)


async def _closed(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


def status_of(answer: bytes) -> int | None:
    """The status code of a raw HTTP answer, or None for a connection closed without one."""
    if not answer.startswith(b"HTTP/1."):
        return None
    return int(answer.split(b" ", 2)[1])


def proxy_records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    """Records at `level` or above, or with a traceback, from anything but the simulator.

    The simulator's server logs to aiohttp.server (the proxy's listener logs to proxy.http):
    a Genesys that sees a request cut off may complain; the proxy must not.
    """
    return [
        r
        for r in caplog.records
        if (r.levelno >= level or r.exc_info)
        and r.name != "aiohttp.server"
        and not r.name.startswith("proxy.simulator")
    ]


def assert_clean_log(caplog: pytest.LogCaptureFixture, level: int = logging.ERROR) -> None:
    """No error, no traceback: what a hostile client does is not the proxy's failure."""
    bad = proxy_records(caplog, level)
    assert bad == [], [f"{r.name}: {r.getMessage()}" for r in bad]


async def still_serves(harness: ProxyHarness, tenant: TenantInfo) -> None:
    response = await harness.client.get(ME, headers={"X-Tenant-ID": tenant.id})
    assert response.status == 200
    await response.read()


async def settled_tasks(baseline: int) -> int:
    """Wait (up to 10 s) until the loop is back to `baseline` tasks; return the count."""
    for _ in range(200):
        if len(asyncio.all_tasks()) <= baseline:
            break
        await asyncio.sleep(0.05)
    return len(asyncio.all_tasks())


@pytest.fixture
async def proxy(
    harness: ProxyHarness, caplog: pytest.LogCaptureFixture
) -> tuple[ProxyHarness, TenantInfo]:
    caplog.set_level(logging.DEBUG, logger="proxy")
    acme = harness.add_tenant("acme")
    await harness.start({"listen": {"idle_timeout": 1}})
    await still_serves(harness, acme)
    return harness, acme


def request(head: str, *, tenant: str | None, extra: bytes = b"") -> bytes:
    tenant_line = f"X-Tenant-ID: {tenant}\r\n" if tenant else ""
    return (
        head.encode("latin-1")
        + b"\r\nHost: 127.0.0.1\r\n"
        + tenant_line.encode()
        + extra
        + b"Connection: close\r\n\r\n"
    )


MALFORMED = {
    "huge-header-value": lambda t: request(
        f"GET {ME} HTTP/1.1", tenant=t, extra=b"X-Big: " + b"a" * 100_000 + b"\r\n"
    ),
    "too-many-headers": lambda t: request(
        f"GET {ME} HTTP/1.1",
        tenant=t,
        extra=b"".join(b"X-H%d: v\r\n" % n for n in range(300)),
    ),
    "huge-request-line": lambda t: request(f"GET /api/v2/{'x' * 20_000} HTTP/1.1", tenant=t),
    "garbage-line": lambda t: b"GARBAGE\r\n\r\n",
    "unknown-version": lambda t: request(f"GET {ME} HTTP/9.9", tenant=t),
    "nul-in-target": lambda t: request(f"GET {ME}\x00x HTTP/1.1", tenant=t),
    "header-without-colon": lambda t: request(f"GET {ME} HTTP/1.1", tenant=t, extra=b"Broken\r\n"),
    "space-before-colon": lambda t: request(f"GET {ME} HTTP/1.1", tenant=t, extra=b"X-A : b\r\n"),
    "bare-lf-and-cr": lambda t: request(f"GET {ME} HTTP/1.1", tenant=t, extra=b"X-A: b\rc\r\n"),
    "tls-client-hello": lambda t: bytes.fromhex("160301020001000200") + b"\x03\x03" + b"\x00" * 64,
    "bad-content-length": lambda t: request(
        f"POST {ME} HTTP/1.1", tenant=t, extra=b"Content-Length: -5\r\n"
    ),
    "conflicting-lengths": lambda t: request(
        f"POST {ME} HTTP/1.1",
        tenant=t,
        extra=b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
    ),
    "method-with-bad-chars": lambda t: request(f"G(E)T {ME} HTTP/1.1", tenant=t),
    "huge-method": lambda t: request(f"{'M' * 10_000} {ME} HTTP/1.1", tenant=t),
}


@pytest.mark.parametrize("make", MALFORMED.values(), ids=MALFORMED.keys())
async def test_malformed_requests_get_a_400_or_a_closed_connection(
    proxy: tuple[ProxyHarness, TenantInfo], caplog: pytest.LogCaptureFixture, make: Any
) -> None:
    harness, acme = proxy
    reads = harness.credentials.reads
    answer = await exchange(harness.client.port, make(acme.id))
    assert status_of(answer) in (400, 413, 431, None), answer[:200]
    assert harness.sim.api_requests(acme.client_id) == 1  # only still_serves' request got through
    assert harness.credentials.reads == reads
    assert_clean_log(caplog)
    await still_serves(harness, acme)


@pytest.mark.parametrize(
    ("method", "by_proxy"),
    [
        # Methods HTTP parsers know but Genesys' REST API has no use for: the proxy refuses them.
        ("TRACE", True),
        ("PROPFIND", True),
        ("MKCOL", True),
        # Made-up or mangled tokens: aiohttp's parser refuses them before the proxy sees them.
        ("FOO", False),
        ("M" * 200, False),
        ("get", False),
    ],
)
async def test_absurd_methods_are_refused_and_never_forwarded(
    proxy: tuple[ProxyHarness, TenantInfo],
    caplog: pytest.LogCaptureFixture,
    method: str,
    by_proxy: bool,
) -> None:
    harness, acme = proxy
    answer = await exchange(harness.client.port, request(f"{method} {ME} HTTP/1.1", tenant=acme.id))
    assert status_of(answer) == 400
    assert (b"X-Proxy-Error: bad_request" in answer) is by_proxy
    assert harness.sim.api_requests(acme.client_id) == 1
    assert_clean_log(caplog)
    await still_serves(harness, acme)


@pytest.mark.parametrize(
    "target",
    [
        "http://evil.example/api/v2/users",
        "https://evil.example:443/api/v2/users",
        "evil.example:443",
        "*",
        "HTTP://EVIL.EXAMPLE/",
    ],
)
async def test_targets_that_are_not_a_path_are_refused(
    proxy: tuple[ProxyHarness, TenantInfo], caplog: pytest.LogCaptureFixture, target: str
) -> None:
    harness, acme = proxy
    answer = await exchange(harness.client.port, request(f"GET {target} HTTP/1.1", tenant=acme.id))
    assert status_of(answer) == 400
    assert harness.sim.api_requests(acme.client_id) == 1
    assert_clean_log(caplog)
    await still_serves(harness, acme)


async def test_a_double_slash_path_still_goes_only_to_the_tenants_region(
    proxy: tuple[ProxyHarness, TenantInfo],
) -> None:
    harness, acme = proxy
    answer = await exchange(
        harness.client.port, request("GET //evil.example/api/v2/sim/echo HTTP/1.1", tenant=acme.id)
    )
    # Not a way out: the path is appended to the region's API URL, so the simulator answers.
    assert status_of(answer) == 404
    assert harness.sim.requests[-1].domain == acme.domain


@pytest.mark.parametrize(
    "tenant",
    ["..", ".", "a/../b", "a\\b", "{tenant}", "a%2Fb", "a?x=1", "a#b", "a\tb", "x" * 500],
)
async def test_tenant_ids_aimed_at_the_vault_path_never_reach_vault(
    proxy: tuple[ProxyHarness, TenantInfo], caplog: pytest.LogCaptureFixture, tenant: str
) -> None:
    harness, _ = proxy
    reads = harness.credentials.reads
    answer = await exchange(harness.client.port, request(f"GET {ME} HTTP/1.1", tenant=tenant))
    assert status_of(answer) == 400
    assert b"X-Proxy-Error: invalid_tenant" in answer
    assert harness.credentials.reads == reads
    assert harness.vault.reads_of(tenant) == 0
    assert_clean_log(caplog)


async def test_a_slowloris_client_is_cut_off_by_the_idle_timeout(
    proxy: tuple[ProxyHarness, TenantInfo], caplog: pytest.LogCaptureFixture
) -> None:
    harness, acme = proxy  # idle_timeout: 1 s
    reader, writer = await asyncio.open_connection("127.0.0.1", harness.client.port)
    head = request(f"GET {ME} HTTP/1.1", tenant=acme.id)
    sent = 0
    try:
        # A byte every 50 ms: the whole head would take far longer than the 1 s allowed.
        while sent < len(head) and not reader.at_eof():
            writer.write(head[sent : sent + 1])
            sent += 1
            try:
                await writer.drain()
            except ConnectionError:
                break
            # Reading with a short wait both paces the bytes and notices the close.
            try:
                data = await asyncio.wait_for(reader.read(1024), 0.05)
            except TimeoutError:
                continue
            assert data == b""  # closed without an answer
            break
    finally:
        writer.close()
        await _closed(writer)
    assert sent < len(head), "the proxy let the slow client send its whole request head"
    assert harness.sim.api_requests(acme.client_id) == 1
    assert_clean_log(caplog)
    await still_serves(harness, acme)


async def test_a_silent_connection_is_closed_by_the_idle_timeout(
    proxy: tuple[ProxyHarness, TenantInfo],
) -> None:
    harness, _ = proxy
    reader, writer = await asyncio.open_connection("127.0.0.1", harness.client.port)
    try:
        # Closed by the proxy: read returns EOF (the wait only bounds a failing test).
        assert await asyncio.wait_for(reader.read(), 20) == b""
    finally:
        writer.close()
        await _closed(writer)


@pytest.mark.parametrize("declared", [100_000, 2_000_000], ids=["buffered", "streamed"])
async def test_a_client_that_disconnects_mid_body_leaves_nothing_behind(
    proxy: tuple[ProxyHarness, TenantInfo], caplog: pytest.LogCaptureFixture, declared: int
) -> None:
    harness, acme = proxy
    baseline = len(asyncio.all_tasks())
    for _ in range(5):
        _, writer = await asyncio.open_connection("127.0.0.1", harness.client.port)
        writer.write(
            f"POST /api/v2/sim/echo HTTP/1.1\r\nHost: x\r\nX-Tenant-ID: {acme.id}\r\n"
            f"Content-Length: {declared}\r\n\r\n".encode()
            + b"x" * (declared // 3)
        )
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.transport.abort()
    assert await settled_tasks(baseline) <= baseline
    assert_clean_log(caplog, logging.WARNING)
    await still_serves(harness, acme)


async def test_a_client_that_disconnects_mid_response_leaves_nothing_behind(
    proxy: tuple[ProxyHarness, TenantInfo], caplog: pytest.LogCaptureFixture
) -> None:
    harness, acme = proxy
    baseline = len(asyncio.all_tasks())
    for _ in range(5):
        reader, writer = await asyncio.open_connection("127.0.0.1", harness.client.port)
        writer.write(
            request("GET /api/v2/sim/blob?bytes=50000000 HTTP/1.1", tenant=acme.id)  # 50 MB
        )
        await writer.drain()
        assert (await reader.readexactly(12)).startswith(b"HTTP/1.1 200")
        await reader.readexactly(100_000)
        writer.transport.abort()
    assert await settled_tasks(baseline) <= baseline
    assert_clean_log(caplog, logging.WARNING)
    await still_serves(harness, acme)


async def test_a_flood_of_unknown_tenants_reads_vault_once_each_and_stays_bounded(
    harness: ProxyHarness,
) -> None:
    await harness.start({"tenant": {"max_tenants": 50}, "credentials": {"negative_ttl": 300}})
    ids = [f"{harness.prefix}ghost{n}" for n in range(40)]

    async def ask(tenant: str) -> int:
        response = await harness.client.get(ME, headers={"X-Tenant-ID": tenant})
        await response.read()
        return int(response.status)

    for _ in range(3):  # every id three times, all at once
        statuses = await asyncio.gather(*(ask(t) for t in ids))
        assert set(statuses) == {404}
    # Once per id per negative-cache window, however many requests asked.
    assert harness.credentials.reads == len(ids)
    assert sum(harness.vault.reads_of(t) for t in ids) == len(ids)

    # Far more ids than the caches hold: what is kept stays within tenant.max_tenants.
    more = [f"{harness.prefix}flood{n}" for n in range(400)]
    for start in range(0, len(more), 50):
        await asyncio.gather(*(ask(t) for t in more[start : start + 50]))
    assert harness.credentials.reads == len(ids) + len(more)
    assert harness.table.unknown_count() <= 50
    assert len(harness.table) == 0
    assert harness.tokens.snapshot() == []  # no token bookkeeping for tenants that do not exist


# -- Slow request bodies: `listen.idle_timeout` also bounds each wait for more of the body --------

BODY_STALL = 0.5  # listen.idle_timeout for these tests, in seconds


@pytest.fixture
async def impatient(
    harness: ProxyHarness, caplog: pytest.LogCaptureFixture
) -> tuple[ProxyHarness, TenantInfo]:
    caplog.set_level(logging.DEBUG, logger="proxy")
    acme = harness.add_tenant("acme")
    await harness.start({"listen": {"idle_timeout": BODY_STALL}})
    await still_serves(harness, acme)
    return harness, acme


async def stall_mid_body(port: int, head: bytes, body_start: bytes) -> bytes:
    """Send a head and the start of a body, then nothing: what comes back before the close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + body_start)
        await writer.drain()
        # Only a guard against a hang, set below aiohttp's 10 s lingering close: the proxy must
        # close the connection itself, not wait for the rest of a body that never comes.
        return await asyncio.wait_for(reader.read(), 8)
    finally:
        writer.close()
        await _closed(writer)


async def recorded(harness: ProxyHarness, path: str) -> list[Any]:
    """The simulator's records of `path`, once it has finished with at least one (up to 10 s)."""
    for _ in range(200):
        seen = [r for r in harness.sim.requests if r.path == path]
        if seen:
            return seen
        await asyncio.sleep(0.05)
    return []


async def test_a_body_that_stalls_before_it_is_complete_gets_408(
    impatient: tuple[ProxyHarness, TenantInfo], caplog: pytest.LogCaptureFixture
) -> None:
    harness, acme = impatient
    reads = harness.credentials.reads
    head = (
        f"POST /api/v2/sim/echo HTTP/1.1\r\nHost: x\r\nX-Tenant-ID: {acme.id}\r\n"
        "Content-Length: 1000\r\n\r\n"
    ).encode()
    answer = await stall_mid_body(harness.client.port, head, b"0123456789")
    assert status_of(answer) == 408, answer[:200]
    head_part, _, body = answer.partition(b"\r\n\r\n")
    assert b"X-Proxy-Error: request_timeout" in head_part
    assert b"Connection: close" in head_part
    assert json.loads(body) == {
        "error": "request_timeout",
        "message": f"no more of the request body arrived for {BODY_STALL:g} s",
        "tenant": acme.id,
    }
    # Answered before the token or Genesys were needed: nothing was sent upstream.
    assert harness.sim.api_requests(acme.client_id) == 1
    assert harness.credentials.reads == reads
    assert_clean_log(caplog)
    await still_serves(harness, acme)


@pytest.mark.parametrize(
    ("framing", "body_start"),
    [
        (
            "Transfer-Encoding: chunked",
            b"a\r\n0123456789\r\n" + b"4000\r\n" + b"y" * 0x4000 + b"\r\n",
        ),
        ("Content-Length: 1000000", b"z" * 300_000),
    ],
    ids=["chunked", "streamed-length"],
)
async def test_a_streamed_body_that_stalls_is_cut_off_and_never_completes_upstream(
    impatient: tuple[ProxyHarness, TenantInfo],
    caplog: pytest.LogCaptureFixture,
    framing: str,
    body_start: bytes,
) -> None:
    harness, acme = impatient
    baseline = len(asyncio.all_tasks())
    head = (
        f"PUT /api/v2/sim/echo/stall HTTP/1.1\r\nHost: x\r\nX-Tenant-ID: {acme.id}\r\n"
        f"{framing}\r\n\r\n"
    ).encode()
    answer = await stall_mid_body(harness.client.port, head, body_start)
    # Genesys had part of the body already, so there is no answer to give: the connection closes.
    assert answer == b""
    # The request did reach Genesys, which saw it break off (499): never a complete body.
    assert harness.sim.api_requests(acme.client_id) == 2
    seen = await recorded(harness, "/api/v2/sim/echo/stall")
    assert [r.status for r in seen] == [499]
    assert await settled_tasks(baseline) <= baseline
    assert_clean_log(caplog, logging.WARNING)
    await still_serves(harness, acme)


async def test_uploads_slower_overall_than_the_timeout_still_pass(
    impatient: tuple[ProxyHarness, TenantInfo], caplog: pytest.LogCaptureFixture
) -> None:
    harness, acme = impatient
    two_mib = bytes(range(256)) * (2 * 1024 * 1024 // 256)
    response = await harness.client.put(
        "/api/v2/sim/echo", data=io.BytesIO(two_mib), headers={"X-Tenant-ID": acme.id}
    )
    assert response.status == 200
    assert (await response.json())["body_sha256"] == hashlib.sha256(two_mib).hexdigest()

    # A chunked body whose parts come well within the timeout of each other: the bound is on
    # each wait, not on the whole body, which takes longer than one timeout here.
    parts = [bytes([i]) * 50_000 for i in range(8)]

    async def trickle() -> Any:
        for part in parts:
            yield part
            await asyncio.sleep(BODY_STALL / 5)

    response = await harness.client.post(
        "/api/v2/sim/echo", data=trickle(), headers={"X-Tenant-ID": acme.id}
    )
    assert response.status == 200
    assert (await response.json())["body_sha256"] == hashlib.sha256(b"".join(parts)).hexdigest()
    assert_clean_log(caplog, logging.WARNING)
