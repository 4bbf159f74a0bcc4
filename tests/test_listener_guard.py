"""Only local, non-browser callers: the Host guard (DNS rebinding) and the cross-site guard."""

from __future__ import annotations

import pytest

from proxy.config import parse_config
from proxy.http.guard import ListenerGuard, host_name, is_loopback_name
from tests.conftest import ProxyHarness, TenantInfo
from tests.test_hostile import exchange, status_of
from tests.test_tenant_header import proxy_error

ME = "/api/v2/organizations/me"


def raw(target: str, lines: list[str], *, method: str = "GET", body: bytes = b"") -> bytes:
    """A request with exactly the given header lines (Host included, or not)."""
    head = [f"{method} {target} HTTP/1.1", "Connection: close", *lines]
    if body:
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


@pytest.fixture
async def acme(harness: ProxyHarness) -> TenantInfo:
    tenant = harness.add_tenant("acme")
    await harness.start()
    return tenant


async def test_a_dns_rebinding_page_gets_no_token(harness: ProxyHarness, acme: TenantInfo) -> None:
    # The reproduction: curl -s 127.0.0.1:PORT/auth/token -H 'Host: attacker.example:PORT' ...
    port = harness.client.port
    host = f"Host: attacker.example:{port}"
    for target in ("/auth/token", ME):
        answer = await exchange(port, raw(target, [host, f"X-Tenant-ID: {acme.id}"]))
        assert proxy_error(answer) == (403, "bad_host"), answer[:300]
        assert b"access_token" not in answer
    answer = await exchange(
        port,
        raw(
            "/oauth/token",
            [host, f"X-Tenant-ID: {acme.id}", "Content-Type: application/x-www-form-urlencoded"],
            method="POST",
            body=b"grant_type=client_credentials",
        ),
    )
    assert proxy_error(answer) == (403, "bad_host")
    assert harness.sim.token_requests() == 0
    assert harness.sim.api_requests() == 0
    assert harness.credentials.reads == 0


LOOPBACK_HOSTS = [
    "127.0.0.1",
    "127.0.0.1:{port}",
    "127.10.20.30:1",
    "localhost",
    "LocalHost:{port}",
    "localhost.:{port}",
    "[::1]",
    "[::1]:{port}",
    "[::ffff:127.0.0.1]:{port}",
]
FOREIGN_HOSTS = [
    "attacker.example",
    "attacker.example:{port}",
    "127.0.0.1.nip.io:{port}",
    "localhost.attacker.example",
    "0.0.0.0:{port}",
    "10.1.2.3",
    "[::]:{port}",
    "[::1",
    "127.0.0.1:port",
    "::1",
    "",
]


@pytest.mark.parametrize("host", LOOPBACK_HOSTS)
async def test_loopback_host_forms_are_served(
    harness: ProxyHarness, acme: TenantInfo, host: str
) -> None:
    line = f"Host: {host.format(port=harness.client.port)}"
    answer = await exchange(harness.client.port, raw(ME, [line, f"X-Tenant-ID: {acme.id}"]))
    assert status_of(answer) == 200, answer[:300]


@pytest.mark.parametrize("host", FOREIGN_HOSTS)
async def test_other_host_forms_are_403_bad_host(
    harness: ProxyHarness, acme: TenantInfo, host: str
) -> None:
    line = f"Host: {host.format(port=harness.client.port)}"
    answer = await exchange(harness.client.port, raw(ME, [line, f"X-Tenant-ID: {acme.id}"]))
    assert proxy_error(answer) == (403, "bad_host"), answer[:300]
    assert harness.sim.api_requests() == 0


async def test_a_request_without_a_host_header_is_served(
    harness: ProxyHarness, acme: TenantInfo
) -> None:
    # HTTP/1.0 tools may send none; a browser always does.
    data = f"GET {ME} HTTP/1.0\r\nX-Tenant-ID: {acme.id}\r\n\r\n".encode()
    assert status_of(await exchange(harness.client.port, data)) == 200


async def test_allowed_hosts_extend_the_loopback_names(harness: ProxyHarness) -> None:
    acme = harness.add_tenant("acme")
    await harness.start({"listen": {"allowed_hosts": ["proxy.internal", "[fd00::5]"]}})
    port = harness.client.port
    for host, status in [
        ("proxy.internal", 200),
        (f"PROXY.internal:{port}", 200),
        (f"[fd00::5]:{port}", 200),
        ("localhost", 200),
        ("other.internal", 403),
    ]:
        answer = await exchange(port, raw(ME, [f"Host: {host}", f"X-Tenant-ID: {acme.id}"]))
        assert status_of(answer) == status, (host, answer[:300])


async def test_allowed_hosts_star_turns_the_host_check_off(harness: ProxyHarness) -> None:
    acme = harness.add_tenant("acme")
    await harness.start({"listen": {"allowed_hosts": ["*"]}})
    line = "Host: attacker.example"
    answer = await exchange(harness.client.port, raw(ME, [line, f"X-Tenant-ID: {acme.id}"]))
    assert status_of(answer) == 200


async def test_a_cross_site_text_plain_form_post_spends_no_token(harness: ProxyHarness) -> None:
    # With tenant.default set, a form on any web page needs no tenant header to be forwarded.
    acme = harness.add_tenant("acme")
    await harness.start({"tenant": {"default": acme.id}})
    port = harness.client.port
    form = [
        f"Host: 127.0.0.1:{port}",
        "Content-Type: text/plain",
        "Origin: https://attacker.example",
        "Sec-Fetch-Site: cross-site",
        "Sec-Fetch-Mode: navigate",
    ]
    answer = await exchange(port, raw("/api/v2/sim/echo", form, method="POST", body=b'{"x": "y"}='))
    assert proxy_error(answer) == (403, "cross_site"), answer[:300]
    # An older browser that sends only the Origin is refused all the same.
    answer = await exchange(
        port, raw("/api/v2/sim/echo", form[:3], method="POST", body=b'{"x": "y"}=')
    )
    assert proxy_error(answer) == (403, "cross_site"), answer[:300]
    assert harness.sim.api_requests() == 0
    assert harness.sim.token_requests() == 0


@pytest.mark.parametrize(
    ("lines", "status"),
    [
        (["Sec-Fetch-Site: cross-site"], 403),
        (["Sec-Fetch-Site: same-site"], 403),  # another port of 127.0.0.1 is another origin
        (["Sec-Fetch-Site: made-up"], 403),
        (["Sec-Fetch-Site: none"], 200),  # typed into the address bar by the user
        (["Sec-Fetch-Site: same-origin"], 200),
        (["Origin: null"], 403),
        (["Origin: http://attacker.example"], 403),
        (["Origin: http://127.0.0.1.nip.io:8080"], 403),
        (["Origin: file://"], 403),
        (["Origin: http://localhost:{port}"], 200),
        (["Origin: http://127.0.0.1:{port}", "Sec-Fetch-Site: same-origin"], 200),
        (["Origin: http://127.0.0.1:{port}", "Origin: http://attacker.example"], 403),
    ],
)
async def test_requests_a_browser_marks_as_from_a_web_page_are_403_cross_site(
    harness: ProxyHarness, acme: TenantInfo, lines: list[str], status: int
) -> None:
    port = harness.client.port
    extra = [line.format(port=port) for line in lines]
    head = [f"Host: 127.0.0.1:{port}", f"X-Tenant-ID: {acme.id}", *extra]
    for target in (ME, "/auth/token"):
        answer = await exchange(port, raw(target, head))
        if status == 200:
            assert status_of(answer) == 200, (target, answer[:300])
        else:
            assert proxy_error(answer) == (403, "cross_site"), (target, answer[:300])


async def test_on_a_non_loopback_listener_the_host_check_is_off_but_not_the_browser_check(
    harness: ProxyHarness,
) -> None:
    acme = harness.add_tenant("acme")
    # The test server still binds 127.0.0.1; the guard goes by the configured address.
    await harness.start({"listen": {"host": "0.0.0.0"}})
    port = harness.client.port
    lines = ["Host: proxy.example", f"X-Tenant-ID: {acme.id}"]
    assert status_of(await exchange(port, raw(ME, lines))) == 200
    answer = await exchange(port, raw(ME, [*lines, "Origin: http://attacker.example"]))
    assert proxy_error(answer) == (403, "cross_site")


def test_loopback_names_and_host_header_parsing() -> None:
    assert is_loopback_name("127.255.0.1")
    assert is_loopback_name("::1")
    assert not is_loopback_name("128.0.0.1")
    assert not is_loopback_name("localhost.example")
    assert host_name("[::1]:80") == "::1"
    assert host_name("Example.COM:8080") == "example.com"
    assert host_name("[::1]x") is None
    assert host_name("a:b:c") is None
    guard = ListenerGuard(parse_config({"listen": {"host": "::1"}}).listen)
    assert guard.checks_host
    assert not ListenerGuard(parse_config({"listen": {"host": "10.0.0.1"}}).listen).checks_host


@pytest.mark.parametrize(
    ("value", "key"),
    [
        ("proxy.internal", "listen.allowed_hosts"),
        (["proxy.internal:8080"], "listen.allowed_hosts[0]"),
        (["http://proxy.internal"], "listen.allowed_hosts[0]"),
        ([""], "listen.allowed_hosts[0]"),
        ([3], "listen.allowed_hosts[0]"),
        (["*", "proxy.internal"], "listen.allowed_hosts"),
    ],
)
def test_bad_allowed_hosts_are_config_errors_naming_the_key(value: object, key: str) -> None:
    from proxy.errors import ConfigError

    with pytest.raises(ConfigError) as raised:
        parse_config({"listen": {"allowed_hosts": value}})
    assert raised.value.key == key
