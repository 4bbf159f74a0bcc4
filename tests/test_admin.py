"""The admin page and its JSON API over HTTP: content, actions, access control and CSRF."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest

from proxy import cli
from proxy.app import create_app
from proxy.config import parse_config
from proxy.errors import ConfigError
from proxy.ops.admin import create_admin_app, format_duration, mask_client_id, mask_secret
from proxy.ops.admin_auth import SESSION_COOKIE, is_loopback
from tests.conftest import ProxyHarness, TenantInfo

ADMIN_TOKEN = "fake-admin-token-for-tests-5a7c"


def token_file(tmp_path: Path, value: str = ADMIN_TOKEN) -> Path:
    path = tmp_path / "admin-token"
    path.write_text(value + "\n", encoding="utf-8")
    return path


async def with_two_tenants(
    harness: ProxyHarness, **overrides: Any
) -> tuple[TenantInfo, TenantInfo]:
    good = harness.add_tenant("good")
    bad = harness.add_tenant("bad", region="eu-west-1", vault_secret="fake-wrong-secret-1618")
    await harness.start(overrides)
    for tenant in (good, good, bad):
        await harness.client.get("/api/v2/users", headers={"X-Tenant-ID": tenant.id})
    return good, bad


def csrf_of(page: str) -> str:
    match = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert match is not None, "the page has no CSRF field"
    return match.group(1)


async def test_api_lists_tenants_with_masked_credentials_and_token_state(
    harness: ProxyHarness,
) -> None:
    good, bad = await with_two_tenants(harness)
    response = await harness.admin.get("/admin/api/tenants")
    assert response.status == 200
    body = await response.json()
    assert body["credentials"]["source"] == "vault"
    assert body["credentials"]["ready"] is True
    assert body["credentials"]["authenticated"] is True
    assert body["uptime_seconds"] >= 0
    rows = {row["tenant"]: row for row in body["tenants"]}
    assert set(rows) == {good.id, bad.id}
    row = rows[good.id]
    assert row["state"] == "valid"
    assert row["region"] == "aps1.pure.cloud"
    assert row["client_id"] == mask_client_id(good.client_id)
    assert row["client_secret"] == "****" + good.client_secret[-4:]
    assert 86000 < row["expires_in"] <= 86400
    assert row["requests"] == 2
    assert row["errors"] == 0
    assert row["last_error"] is None
    row = rows[bad.id]
    assert row["state"] == "failing"
    assert row["region"] == "mypurecloud.ie"
    assert row["last_error"] == "genesys_auth_failed"
    assert row["requests"] == 1
    assert row["errors"] == 1
    assert row["client_secret"] == "****1618"


async def test_page_shows_every_tenant_row(harness: ProxyHarness) -> None:
    good, bad = await with_two_tenants(harness)
    response = await harness.admin.get("/admin")
    assert response.status == 200
    assert response.headers["Content-Security-Policy"].startswith("default-src 'none'")
    page = await response.text()
    assert f'data-tenant="{good.id}"' in page
    assert f'data-tenant="{bad.id}"' in page
    assert "state-valid" in page
    assert "state-failing" in page
    assert "genesys_auth_failed" in page
    assert "****" + good.client_secret[-4:] in page
    assert "<script" not in page  # works without JavaScript, loads nothing


async def test_api_refresh_fetches_a_new_token_and_delete_evicts(harness: ProxyHarness) -> None:
    good, _ = await with_two_tenants(harness)
    issued = harness.sim.tokens_issued(good.client_id)
    response = await harness.admin.post(f"/admin/api/tenants/{good.id}/refresh")
    assert response.status == 200
    assert (await response.json())["state"] == "valid"
    assert harness.sim.tokens_issued(good.client_id) == issued + 1

    response = await harness.admin.delete(f"/admin/api/tenants/{good.id}")
    assert response.status == 200
    assert await response.json() == {"tenant": good.id, "evicted": True}
    tenants = (await (await harness.admin.get("/admin/api/tenants")).json())["tenants"]
    assert good.id not in {row["tenant"] for row in tenants}
    # The next request starts afresh: a new Vault read and a new token.
    reads = harness.vault.reads_of(good.id)
    await harness.client.get("/api/v2/users", headers={"X-Tenant-ID": good.id})
    assert harness.vault.reads_of(good.id) == reads + 1
    assert harness.sim.tokens_issued(good.client_id) == issued + 2


async def test_api_errors_are_contract_errors(harness: ProxyHarness) -> None:
    _, bad = await with_two_tenants(harness)
    response = await harness.admin.post(f"/admin/api/tenants/{bad.id}/refresh")
    assert response.status == 502
    assert (await response.json())["error"] == "genesys_auth_failed"
    response = await harness.admin.delete(f"/admin/api/tenants/{harness.prefix}never-seen")
    assert response.status == 404
    assert (await response.json())["error"] == "unknown_tenant"
    response = await harness.admin.post("/admin/api/tenants/bad%20id/refresh")
    assert response.status == 400
    assert (await response.json())["error"] == "invalid_tenant"


async def test_page_buttons_need_the_csrf_token_and_the_same_origin(
    harness: ProxyHarness,
) -> None:
    good, _ = await with_two_tenants(harness, genesys={"refresh_at": 0.8})
    page = await (await harness.admin.get("/admin")).text()
    csrf = csrf_of(page)
    issued = harness.sim.tokens_issued(good.client_id)
    url = f"/admin/tenants/{good.id}/refresh"

    response = await harness.admin.post(url, data={}, allow_redirects=False)
    assert response.status == 403
    response = await harness.admin.post(url, data={"csrf": "0" * 64}, allow_redirects=False)
    assert response.status == 403
    response = await harness.admin.post(
        url,
        data={"csrf": csrf},
        headers={"Origin": "http://evil.example"},
        allow_redirects=False,
    )
    assert response.status == 403
    response = await harness.admin.post(
        url, data={"csrf": csrf}, headers={"Sec-Fetch-Site": "cross-site"}, allow_redirects=False
    )
    assert response.status == 403
    assert harness.sim.tokens_issued(good.client_id) == issued

    response = await harness.admin.post(url, data={"csrf": csrf}, allow_redirects=False)
    assert response.status == 303
    assert response.headers["Location"].startswith("/admin?")
    assert harness.sim.tokens_issued(good.client_id) == issued + 1
    page = await (await harness.admin.get(response.headers["Location"])).text()
    assert "Fetched a new token for" in page


async def test_token_mode_refuses_the_page_and_api_without_the_token(
    harness: ProxyHarness, tmp_path: Path
) -> None:
    await with_two_tenants(harness, admin={"token_file": str(token_file(tmp_path))})
    response = await harness.admin.get("/admin")
    assert response.status == 401
    page = await response.text()
    assert "Admin token required" in page
    assert "data-tenant" not in page
    response = await harness.admin.get("/admin/api/tenants")
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await response.json())["error"] == "unauthorized"
    wrong = {"Authorization": "Bearer fake-not-the-admin-token"}
    assert (await harness.admin.get("/admin/api/tenants", headers=wrong)).status == 401
    assert (await harness.admin.delete("/admin/api/tenants/x", headers=wrong)).status == 401
    right = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert (await harness.admin.get("/admin/api/tenants", headers=right)).status == 200
    assert (await harness.admin.get("/admin", headers=right)).status == 200
    # Prometheus and the kubelet need no token.
    for path in ("/metrics", "/healthz", "/readyz"):
        assert (await harness.admin.get(path)).status == 200, path


async def test_login_form_sets_a_session_cookie_for_the_page(
    harness: ProxyHarness, tmp_path: Path
) -> None:
    await with_two_tenants(harness, admin={"token_file": str(token_file(tmp_path))})
    response = await harness.admin.post(
        "/admin/login", data={"token": "fake-wrong"}, allow_redirects=False
    )
    assert response.status == 401
    assert "That is not the admin token" in await response.text()
    response = await harness.admin.post(
        "/admin/login", data={"token": ADMIN_TOKEN}, allow_redirects=False
    )
    assert response.status == 303
    cookie = response.cookies[SESSION_COOKIE]
    assert cookie["httponly"]
    assert cookie["samesite"] == "Strict"
    assert ADMIN_TOKEN not in cookie.value
    response = await harness.admin.get("/admin")  # the client keeps the cookie
    assert response.status == 200
    assert "data-tenant" in await response.text()
    response = await harness.admin.post("/admin/logout", allow_redirects=False)
    assert response.status == 303
    harness.admin.session.cookie_jar.clear()
    assert (await harness.admin.get("/admin")).status == 401


async def test_rotating_the_token_file_ends_old_tokens_and_sessions(
    harness: ProxyHarness, tmp_path: Path
) -> None:
    path = token_file(tmp_path)
    await with_two_tenants(harness, admin={"token_file": str(path)})
    response = await harness.admin.post(
        "/admin/login", data={"token": ADMIN_TOKEN}, allow_redirects=False
    )
    assert response.status == 303
    assert (await harness.admin.get("/admin")).status == 200
    path.write_text("fake-rotated-admin-token-77\n", encoding="utf-8")
    assert (await harness.admin.get("/admin")).status == 401
    old = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert (await harness.admin.get("/admin/api/tenants", headers=old)).status == 401
    new = {"Authorization": "Bearer fake-rotated-admin-token-77"}
    assert (await harness.admin.get("/admin/api/tenants", headers=new)).status == 200


async def test_non_loopback_admin_without_a_token_refuses_admin_but_not_metrics(
    harness: ProxyHarness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="proxy.ops.admin")
    await with_two_tenants(harness, admin={"host": "0.0.0.0"})
    assert "admin page refused: admin.host 0.0.0.0 is not loopback" in caplog.text
    for path in ("/admin", "/admin/api/tenants"):
        response = await harness.admin.get(path)
        assert response.status == 403, path
    response = await harness.admin.get("/admin/api/tenants")
    assert (await response.json())["error"] == "admin_disabled"
    for path in ("/metrics", "/healthz", "/readyz"):
        assert (await harness.admin.get(path)).status == 200, path


async def test_open_admin_answers_only_to_a_loopback_host_header(harness: ProxyHarness) -> None:
    # DNS rebinding: a page at evil.example re-pointed to 127.0.0.1 sends Host: evil.example.
    good, _ = await with_two_tenants(harness)
    for host in ("evil.example", "evil.example:9090", "10.0.0.7:9090"):
        response = await harness.admin.get("/admin/api/tenants", headers={"Host": host})
        assert response.status == 403, host
        assert (await response.json())["error"] == "bad_host"
        refresh = await harness.admin.post(
            f"/admin/api/tenants/{good.id}/refresh", headers={"Host": host}
        )
        assert refresh.status == 403, host
    for host in ("127.0.0.1:9090", "localhost", "[::1]:9090"):
        response = await harness.admin.get("/admin/api/tenants", headers={"Host": host})
        assert response.status == 200, host
    assert (await harness.admin.get("/metrics", headers={"Host": "evil.example"})).status == 200


@pytest.mark.parametrize("content", [None, "", "  \n"])
def test_an_unreadable_or_empty_token_file_is_a_config_error(
    tmp_path: Path, content: str | None
) -> None:
    path = tmp_path / "admin-token"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    app = create_app(parse_config({"admin": {"token_file": str(path)}}))
    with pytest.raises(ConfigError, match=r"^admin\.token_file: "):
        create_admin_app(app)


def test_serve_with_a_missing_token_file_fails_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "proxy.yaml"
    config.write_text(
        f"admin: {{port: 0, token_file: {tmp_path / 'missing'}}}\n"
        "listen: {port: 0}\ncredentials: {source: file, file: /nonexistent}\n",
        encoding="utf-8",
    )
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        assert cli.main(["serve", "--config", str(config)], env={}) == 2
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    err = capsys.readouterr().err.strip()
    assert err.startswith("genesys-token-proxy: error: config error: admin.token_file: cannot read")
    assert "\n" not in err


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("admin.internal", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_masks_show_no_more_than_they_should() -> None:
    assert mask_client_id("3fa85f64-5717-4562-b3fc-2c963f66afa6") == "3fa8****afa6"
    assert mask_client_id("short") == "****"
    assert mask_secret("fake-secret-value-abcd") == "****abcd"
    assert mask_secret("tiny-secret") == "****"


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0, "0s"), (9.7, "9s"), (250, "4m 10s"), (86369, "23h 59m"), (93784, "1d 2h"), (3600, "1h")],
)
def test_durations_read_like_a_person_would_say_them(seconds: float, shown: str) -> None:
    assert format_duration(seconds) == shown
