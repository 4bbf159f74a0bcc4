"""After real traffic, no secret or issued token is in the admin page, its API, /metrics or logs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from proxy.app import ACCESS_LOG
from proxy.ops.logs import JsonFormatter, TextFormatter
from tests.conftest import ProxyHarness

ADMIN_TOKEN = "fake-admin-token-no-leaks-9d41"


async def test_page_api_metrics_and_logs_hold_no_secret_or_token(
    harness: ProxyHarness,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    caplog.set_level(logging.DEBUG)
    admin_token = tmp_path / "admin-token"
    admin_token.write_text(ADMIN_TOKEN, encoding="utf-8")
    good = harness.add_tenant("good")
    wrong_secret = "fake-wrong-secret-in-vault-5309"
    bad = harness.add_tenant("bad", vault_secret=wrong_secret)
    await harness.start({"admin": {"token_file": str(admin_token)}, "log": {"level": "debug"}})
    client = harness.client

    for tenant in (good, bad, good):
        await client.get("/api/v2/users?pageSize=5", headers={"X-Tenant-ID": tenant.id})
    # The raw token goes to the app through the local endpoint; it must go nowhere else.
    response = await client.get("/auth/token", headers={"X-Tenant-ID": good.id})
    handed_out = (await response.json())["access_token"]
    await client.get(f"/api/v2/users?access_token={handed_out}", headers={"X-Tenant-ID": good.id})
    harness.sim.revoke_tokens(good.client_id)
    await client.post("/api/v2/sim/echo", data=b"{}", headers={"X-Tenant-ID": good.id})
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    response = await harness.admin.post(f"/admin/api/tenants/{good.id}/refresh", headers=auth)
    assert response.status == 200

    page = await (await harness.admin.get("/admin", headers=auth)).text()
    api = await (await harness.admin.get("/admin/api/tenants", headers=auth)).text()
    metrics = await (await harness.admin.get("/metrics")).text()
    records = caplog.records
    assert harness.app is not None
    harness.app[ACCESS_LOG].flush()
    access = capsys.readouterr().err
    logs = "\n".join(
        [caplog.text, access]
        + [JsonFormatter().format(record) for record in records]
        + [TextFormatter().format(record) for record in records]
    )

    # The collections hold what they should, so searching them means something.
    assert good.id in page
    assert good.id in api
    assert f'tenant="{good.id}"' in metrics
    assert " proxy.access request " in access
    tokens = harness.sim.issued_tokens()
    assert handed_out in tokens
    assert len(tokens) >= 3
    secrets = [good.client_secret, bad.client_secret, wrong_secret, ADMIN_TOKEN]
    for name, text in {"page": page, "api": api, "metrics": metrics, "logs": logs}.items():
        for secret in secrets:
            assert secret not in text, f"a secret leaked into the {name}"
        for token in tokens:
            assert token not in text, f"an issued token leaked into the {name}"
