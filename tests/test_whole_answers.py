"""Small upstream answers are read whole before the app gets them (one socket write, issue 15).

Since nothing has reached the app while such an answer is read, an answer that breaks off
before its Content-Length is a contract error (502 upstream_unreachable), not a 200 whose body
is cut short.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.conftest import ProxyHarness

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"


@pytest.fixture
async def breaking_upstream() -> AsyncIterator[int]:
    """An upstream that promises 1000 bytes, sends 10 and closes the connection."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(HEAD + b'{"partial"')
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    yield int(server.sockets[0].getsockname()[1])
    server.close()
    await server.wait_closed()


async def test_a_small_answer_that_breaks_off_is_a_502_not_a_cut_200(
    harness: ProxyHarness, breaking_upstream: int
) -> None:
    acme = harness.add_tenant("acme")
    await harness.start(
        {"genesys": {"api_url": f"http://127.0.0.1:{breaking_upstream}/api/{{domain}}"}}
    )

    response = await harness.client.get("/api/v2/users/me", headers={"X-Tenant-ID": acme.id})

    assert response.status == 502
    assert response.headers["X-Proxy-Error"] == "upstream_unreachable"
    body = await response.json()
    assert body["tenant"] == acme.id
    assert body["message"] == "Genesys Cloud's answer (127.0.0.1) broke off before its end"
