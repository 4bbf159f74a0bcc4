"""Known secrets and tokens never appear in logs, error bodies or reprs."""

from __future__ import annotations

import logging

import pytest

from proxy.app import CONFIG
from proxy.errors import TokenUnavailable
from tests.conftest import ProxyHarness


async def test_secrets_and_tokens_never_reach_the_logs(
    harness: ProxyHarness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    good = harness.add_tenant("good")
    bad = harness.add_tenant("bad", vault_secret="fake-wrong-secret-7781")
    await harness.start({"log": {"level": "debug"}})
    bodies = []
    for tenant in (good.id, bad.id, good.id):
        response = await harness.client.get("/api/v2/users", headers={"X-Tenant-ID": tenant})
        bodies.append(await response.text())
    harness.sim.revoke_tokens(good.client_id)
    response = await harness.client.get("/auth/token", headers={"X-Tenant-ID": good.id})
    assert response.status == 200
    response = await harness.client.post("/api/v2/sim/echo", headers={"X-Tenant-ID": good.id})
    assert response.status == 200
    harness.sim.inject_login_fault(status=503, count=1)
    with pytest.raises(TokenUnavailable):  # the point is what the failure logged
        await harness.tokens.refresh(good.id)
    secrets = [good.client_secret, bad.client_secret, "fake-wrong-secret-7781"]
    tokens = harness.sim.issued_tokens()
    assert len(tokens) >= 2
    logged = caplog.text + "".join(repr(r.__dict__) for r in caplog.records)
    assert "token fetched" in logged  # the logs did capture the proxy's own lines
    for secret in secrets + tokens:
        assert secret not in logged
    for body in bodies[1:2]:
        for secret in secrets + tokens:
            assert secret not in body
    tenant = await harness.credentials.get(good.id)
    for value in (
        harness.app[CONFIG] if harness.app is not None else None,
        harness.tokens.snapshot(),
        tenant,
        tenant.record,
        tenant.tokens,
    ):
        for secret in secrets + tokens:
            assert secret not in repr(value)
