"""The official Genesys Cloud JavaScript SDK, pointed at the real daemon, works unchanged.

`tests/js/sdk_check.js` drives `purecloud-platform-client-v2` (the version pinned in
tests/js/package-lock.json, installed by `.ci/run` with `npm ci`) as a Node app of the old
three-service design would: `setGateway` to the proxy, `loginClientCredentialsGrant(tenant, ...)`,
`setDefaultHeaders({'X-Tenant-ID': tenant})`, reads and writes. The proxy is the console script
as users run it, its tenants in OpenBao, its Genesys the simulator.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from proxy.simulator import GenesysSimulator
from tests.conftest import OpenBao, find_free_port

pytestmark = pytest.mark.slow

JS_DIR = Path(__file__).resolve().parent / "js"
SCRIPT = Path(sys.executable).parent / "genesys-token-proxy"


@pytest.fixture
def node() -> str:
    """node, with the SDK installed; missing, the test fails under CI=true and skips elsewhere."""
    node = shutil.which("node")
    installed = (JS_DIR / "node_modules" / "purecloud-platform-client-v2").is_dir()
    if node and installed:
        return node
    why = "node is not on PATH" if not node else "tests/js/node_modules is missing"
    message = f"{why}: run .ci/run, or `npm ci --prefix tests/js`"
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture
async def daemon(
    openbao: OpenBao, sim: GenesysSimulator, tmp_path: Path
) -> AsyncIterator[dict[str, Any]]:
    """`genesys-token-proxy serve` on free ports, ready; stopped with SIGTERM afterwards."""
    port, admin_port = find_free_port(), find_free_port()
    config = tmp_path / "proxy.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": {"port": port, "shutdown_grace": 1},
                "admin": {"port": admin_port},
                "vault": {"address": openbao.address},
                "genesys": {"api_url": sim.api_url_template, "login_url": sim.login_url_template},
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "GENESYS_"))}
    env["VAULT_TOKEN"] = openbao.root_token
    argv = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "proxy"]
    process = await asyncio.create_subprocess_exec(
        *argv, "serve", "--config", str(config),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        await _wait_ready(process, admin_port)
        yield {"port": port}
    finally:
        if process.returncode is None:
            process.terminate()
        await asyncio.wait_for(process.communicate(), timeout=30)


async def _wait_ready(process: asyncio.subprocess.Process, admin_port: int) -> None:
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if process.returncode is not None:
                output = await process.stdout.read() if process.stdout else b""
                pytest.fail(f"the daemon exited: {output.decode()}", pytrace=False)
            try:
                async with http.get(f"http://127.0.0.1:{admin_port}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    pytest.fail("the daemon did not become ready in 30 s", pytrace=False)


async def run_sdk(node: str, options: dict[str, Any]) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        node, str(JS_DIR / "sdk_check.js"), json.dumps(options),
        cwd=JS_DIR, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, err.decode()
    result: dict[str, Any] = json.loads(out)
    return result


async def test_js_sdk_logs_in_reads_writes_and_sees_the_proxys_errors(
    node: str,
    daemon: dict[str, Any],
    openbao: OpenBao,
    sim: GenesysSimulator,
    tenant_prefix: str,
) -> None:
    tenant, unknown = f"{tenant_prefix}-acme", f"{tenant_prefix}-nobody"
    secret = f"fake-secret-{os.urandom(8).hex()}"
    sim.add_client(f"client-{tenant}", secret, domain="aps1.pure.cloud", org_name="Acme JS")
    openbao.put_tenant(tenant, f"client-{tenant}", secret, "ap-south-1")

    result = await run_sdk(
        node, {"port": daemon["port"], "tenant": tenant, "unknownTenant": unknown}
    )

    # The login went through the proxy's /oauth/token: the token is one the simulator issued,
    # and it is the only token the tenant's client ever asked for.
    issued = {hashlib.sha256(token.encode()).hexdigest() for token in sim.issued_tokens()}
    assert result["tokenSha256"] in issued
    assert sim.token_requests(f"client-{tenant}") == 1
    assert result["expiresInSeconds"] > 0
    assert result["organization"] == "Acme JS"
    assert len(result["users"]) == 7
    assert result["written"] == {"created": "Grace Hopper", "title": "Admiral", "version": 2}
    assert result["afterDelete"]["status"] == 404
    assert result["afterDelete"]["proxyError"] is None  # Genesys' 404, not the proxy's
    # The SDK's requests reached the simulator with the tenant's token and no tenant header.
    writes = [r for r in sim.requests if r.method in {"POST", "PATCH", "DELETE"}]
    assert [r.method for r in writes] == ["POST", "PATCH", "DELETE"]
    assert all(
        r.client_id == f"client-{tenant}" and r.header("X-Tenant-ID") is None for r in writes
    )

    for step in ("unknownLogin", "unknownApi"):
        assert result[step]["status"] == 404, step
        assert result[step]["proxyError"] == "unknown_tenant", step
        assert result[step]["body"]["error"] == "unknown_tenant", step
        assert result[step]["body"]["tenant"] == unknown, step
    assert secret not in json.dumps(result)
