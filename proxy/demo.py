"""`genesys-token-proxy demo`: the proxy against the built-in Genesys simulator, no account needed.

Starts the simulator with two demo organisations in two regions, writes a credentials file for
them (the file source, so no Vault is needed either), runs the real proxy and prints what to try.
The credentials file is the only thing it writes: to the temporary directory (`TMPDIR`, `/tmp`...),
so on a read-only root filesystem it needs a tmpfs there (`docker run --read-only --tmpfs /tmp`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import tempfile
from pathlib import Path

import yaml

from proxy.config import parse_config
from proxy.errors import StartupError
from proxy.ops.logs import configure_logging
from proxy.server import Server, run_until_signalled
from proxy.simulator import GenesysSimulator, directory

# The secrets are made up afresh at each start: only this run's simulator accepts them.
DEMO_TENANTS = {
    "demo": {
        "client_id": "demo-client-0001",
        "region": "ap-south-1",
        "domain": "aps1.pure.cloud",
        "org": "Demo Org Mumbai",
    },
    "demo-eu": {
        "client_id": "demo-client-0002",
        "region": "mypurecloud.ie",
        "domain": "mypurecloud.ie",
        "org": "Demo Org Dublin",
    },
}


# The user the printed write commands create, change and delete in tenant demo's org.
NEW_USER = {"name": "Ada Lovelace", "email": "ada@demo.example.com"}


def new_user_id() -> str:
    """The id the simulator gives NEW_USER in tenant demo's org (ids there are stable)."""
    tenant = DEMO_TENANTS["demo"]
    org_id = directory.org_id_for(tenant["domain"], tenant["org"])
    return directory.created_user_id(org_id, NEW_USER["email"])


def instructions(port: int, admin_port: int) -> str:
    base = f"http://127.0.0.1:{port}"
    user = f"{base}/api/v2/users/{new_user_id()}"
    body = json.dumps(NEW_USER)
    change = json.dumps({"version": 1, "title": "Analyst"})
    json_header = "-H 'Content-Type: application/json'"
    return f"""
genesys-token-proxy demo is running against a local Genesys Cloud simulator.
Two tenants exist: 'demo' (ap-south-1, aps1.pure.cloud) and 'demo-eu' (mypurecloud.ie).
Try, in another terminal:

  curl -s {base}/api/v2/organizations/me -H 'X-Tenant-ID: demo'
  curl -s {base}/api/v2/users -H 'X-Tenant-ID: demo-eu'

Writes go through too (each tenant's org is its own):

  curl -s -X POST {base}/api/v2/users -H 'X-Tenant-ID: demo' {json_header} -d '{body}'
  curl -s -X PATCH {user} -H 'X-Tenant-ID: demo' {json_header} -d '{change}'
  curl -s -X DELETE {user} -H 'X-Tenant-ID: demo'

What reached "Genesys": the simulator's echo endpoint answers with the request it received.
The app's Authorization is replaced by the tenant's token (masked here), X-Tenant-ID is gone:

  curl -s {base}/api/v2/sim/echo -H 'X-Tenant-ID: demo' -H 'Authorization: Bearer app-sent-this'

The raw token, for apps that want it; and the proxy's own errors:

  curl -s {base}/auth/token -H 'X-Tenant-ID: demo'
  curl -si {base}/api/v2/users -H 'X-Tenant-ID: nobody'      # 404 unknown_tenant
  curl -si {base}/api/v2/users                               # 400 missing_tenant

Operations:

  curl -s http://127.0.0.1:{admin_port}/readyz
  curl -s http://127.0.0.1:{admin_port}/metrics | grep genesys_proxy_requests_total

The admin page (tenants, token states, Refresh and Evict): http://127.0.0.1:{admin_port}/admin

Press Ctrl-C to stop.
"""


async def _demo(port: int, admin_port: int) -> None:
    # The echo endpoint masks tokens: the demo's commands print its answers on a terminal.
    simulator = GenesysSimulator(reveal_tokens=False)
    client_secrets = {name: secrets.token_urlsafe(24) for name in DEMO_TENANTS}
    for name, tenant in DEMO_TENANTS.items():
        simulator.add_client(
            tenant["client_id"],
            client_secrets[name],
            domain=tenant["domain"],
            org_name=tenant["org"],
        )
    async with simulator.running() as sim:
        with tempfile.TemporaryDirectory(prefix="genesys-proxy-demo-") as tmp:
            credentials = Path(tmp) / "tenants.yaml"
            records = {
                name: {
                    "client_id": t["client_id"],
                    "client_secret": client_secrets[name],
                    "region": t["region"],
                }
                for name, t in DEMO_TENANTS.items()
            }
            credentials.write_text(yaml.safe_dump(records), encoding="utf-8")
            config = parse_config(
                {
                    "listen": {"port": port, "shutdown_grace": 2},
                    "admin": {"port": admin_port},
                    "credentials": {"source": "file", "file": str(credentials)},
                    "genesys": {
                        "api_url": sim.api_url_template,
                        "login_url": sim.login_url_template,
                    },
                }
            )
            server = Server(config)

            def announce(server: Server) -> None:
                print(instructions(server.proxy_port, server.admin_port), flush=True)

            await run_until_signalled(server, on_started=announce)


def _check_temp_dir() -> None:
    """Fail before starting anything when no temporary directory is writable (read-only root)."""
    try:
        tempfile.gettempdir()
    except FileNotFoundError:
        raise StartupError(
            "the demo writes its credentials file to a temporary directory and none is writable"
            " (set TMPDIR, or on a read-only root filesystem run the container with --tmpfs /tmp)"
        ) from None


def run_demo(port: int, admin_port: int) -> None:
    """Run the demo until Ctrl-C or SIGTERM."""
    _check_temp_dir()
    configure_logging(parse_config({}).log)
    logging.getLogger("proxy").info("starting the demo")
    asyncio.run(_demo(port, admin_port))
