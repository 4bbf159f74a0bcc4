"""Errors name hosts and causes, never classes or secrets; admin logout really ends a session."""

from __future__ import annotations

import json
import logging
import re
import secrets
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.http.failures import describe_client_error, url_host
from proxy.ops.admin_auth import SESSION_COOKIE
from tests.conftest import ProxyHarness, find_free_port

ME = "/api/v2/organizations/me"
# What the failure messages used to show: aiohttp's exception class names.
CLASS_NAME = re.compile(r"Client\w*Error|ServerDisconnected|Timeout\w*Error|OSError")


async def error_of(response: aiohttp.ClientResponse) -> dict[str, Any]:
    body: dict[str, Any] = await response.json()
    assert response.headers["X-Proxy-Error"] == body["error"]
    return body


# -- login error codes ---------------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 401, 500])
async def test_a_login_error_code_that_is_not_rfc_6749_is_never_echoed(
    harness: ProxyHarness, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    caplog.set_level(logging.DEBUG)
    # A secret shaped like an error code (letters, digits, underscores), as in the report.
    secret = f"fake_secret_{secrets.token_hex(16)}"
    acme = harness.add_tenant("acme", vault_secret=secret)
    await harness.start()
    # A broken login service answered with the client secret as its error code.
    body = json.dumps({"error": secret, "error_description": "x"}).encode()
    harness.sim.inject_login_fault(status=status, body=body)
    response = await harness.client.get(ME, headers={"X-Tenant-ID": acme.id})
    text = await response.text()
    assert response.status == 503
    assert (await error_of(response))["error"] == "token_unavailable"
    assert secret not in text
    assert f"HTTP {status}" in text
    assert secret not in caplog.text
    admin = await (await harness.admin.get("/admin/api/tenants")).text()
    assert secret not in admin


async def test_an_rfc_6749_code_is_still_named(harness: ProxyHarness) -> None:
    acme = harness.add_tenant("acme")
    await harness.start()
    body = json.dumps({"error": "invalid_grant"}).encode()
    harness.sim.inject_login_fault(status=400, body=body)
    response = await harness.client.get(ME, headers={"X-Tenant-ID": acme.id})
    assert "invalid_grant" in (await error_of(response))["message"]


# -- failure messages ----------------------------------------------------------------------------


async def test_an_unreachable_api_is_named_by_host_and_cause(harness: ProxyHarness) -> None:
    acme = harness.add_tenant("acme")
    port = find_free_port()
    await harness.start({"genesys": {"api_url": f"http://127.0.0.1:{port}/api/{{domain}}"}})
    response = await harness.client.get(ME, headers={"X-Tenant-ID": acme.id})
    assert response.status == 502
    message = (await error_of(response))["message"]
    assert message == f"could not reach Genesys Cloud: connection to 127.0.0.1:{port} refused"


async def test_a_dns_failure_names_the_host_it_looked_up(harness: ProxyHarness) -> None:
    acme = harness.add_tenant("acme")
    await harness.start({"genesys": {"login_url": "http://login.{domain}.invalid"}})
    response = await harness.client.get(ME, headers={"X-Tenant-ID": acme.id})
    assert response.status == 503
    message = (await error_of(response))["message"]
    assert f"DNS lookup of login.{acme.domain}.invalid failed" in message
    assert not CLASS_NAME.search(message), message


async def test_a_tls_failure_says_what_the_handshake_refused(
    harness: ProxyHarness, kubernetes_cluster: Any
) -> None:
    # The Kubernetes stand-in serves HTTPS with a self-signed certificate.
    acme = harness.add_tenant("acme")
    await harness.start({"genesys": {"api_url": kubernetes_cluster.url + "/api/{domain}"}})
    response = await harness.client.get(ME, headers={"X-Tenant-ID": acme.id})
    assert response.status == 502
    message = (await error_of(response))["message"]
    host = url_host(kubernetes_cluster.url)
    assert message.startswith(
        f"could not reach Genesys Cloud: TLS handshake with {host} failed: "
        "certificate verify failed"
    ), message
    assert not CLASS_NAME.search(message), message


def test_every_client_failure_is_described_without_a_class_name() -> None:
    key: Any = None
    cases: list[tuple[BaseException, str]] = [
        (aiohttp.ServerDisconnectedError(), "api.x closed the connection before answering"),
        (aiohttp.ConnectionTimeoutError(), "connecting to api.x timed out"),
        (aiohttp.SocketTimeoutError(), "api.x did not answer in time"),
        (TimeoutError(), "api.x did not answer in time"),
        (aiohttp.ClientPayloadError("x"), "the answer from api.x broke off"),
        (
            aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, "Connection refused")),
            "connection to api.x refused",
        ),
        (
            aiohttp.ClientConnectorError(key, OSError(101, "Network is unreachable")),
            "connection to api.x failed: network is unreachable",
        ),
        (
            aiohttp.ClientConnectorDNSError(key, OSError(-2, "Name or service not known")),
            "DNS lookup of api.x failed",
        ),
        (aiohttp.ClientOSError(104, "Connection reset by peer"), "connection to api.x failed"),
        (aiohttp.ClientError(), "the request to api.x failed"),
    ]
    for exc, expected in cases:
        described = describe_client_error(exc, "api.x")
        assert described.startswith(expected), (exc, described)
        assert not CLASS_NAME.search(described)
    assert url_host("https://api.mypurecloud.ie/x") == "api.mypurecloud.ie"
    assert url_host("http://[::1]:8080/") == "[::1]:8080"


# -- admin logout --------------------------------------------------------------------------------


async def test_admin_logout_ends_the_session_on_the_server(
    harness: ProxyHarness, tmp_path: Path, aiohttp_client: Any
) -> None:
    token = f"fake-admin-{secrets.token_urlsafe(8)}"
    path = tmp_path / "admin-token"
    path.write_text(token, encoding="utf-8")
    await harness.start({"admin": {"token_file": str(path)}})
    login = await harness.admin.post("/admin/login", data={"token": token}, allow_redirects=False)
    cookie = login.cookies[SESSION_COOKIE].value
    other = await harness.admin.post("/admin/login", data={"token": token}, allow_redirects=False)
    other_cookie = other.cookies[SESSION_COOKIE].value
    assert other_cookie != cookie  # two logins are two sessions, even within one second
    harness.admin.session.cookie_jar.clear()

    def with_cookie(value: str) -> dict[str, str]:
        return {"Cookie": f"{SESSION_COOKIE}={value}"}

    assert (await harness.admin.get("/admin", headers=with_cookie(cookie))).status == 200
    response = await harness.admin.post(
        "/admin/logout", headers=with_cookie(cookie), allow_redirects=False
    )
    assert response.status == 303
    # Someone who copied the cookie (or a browser that kept it) is logged out too.
    assert (await harness.admin.get("/admin", headers=with_cookie(cookie))).status == 401
    api = await harness.admin.get("/admin/api/tenants", headers=with_cookie(cookie))
    assert api.status == 401
    # The other session is untouched.
    assert (await harness.admin.get("/admin", headers=with_cookie(other_cookie))).status == 200
