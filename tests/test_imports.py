"""What the running daemon imports: only what serving needs, the rest when it is first used.

Every module the daemon imports is resident memory in every pod (issue 15): hvac and requests
cost 7-8 MB and are needed only with the Vault credential source; jinja2 and aiohttp-jinja2 about
2 MB, needed only once someone opens the admin page.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
# Runs the real command line (`serve`); once both listeners are up it notes what is imported,
# opens the admin page, notes again, and stops the daemon with SIGTERM like an orchestrator.
PROBE = """
import asyncio, json, os, signal, sys
import aiohttp
import proxy.server
from proxy.cli import main

WATCHED = ("hvac", "requests", "jinja2", "aiohttp_jinja2")

def loaded():
    return sorted(name for name in WATCHED if name in sys.modules)

async def probe(server):
    seen = {"serving": loaded()}
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{server.admin_port}/admin") as answer:
            seen["page_status"] = answer.status
            seen["page_has_title"] = "genesys-token-proxy" in await answer.text()
    seen["after_page"] = loaded()
    print("PROBE " + json.dumps(seen), flush=True)
    os.kill(os.getpid(), signal.SIGTERM)

tasks = set()

def on_started(server):
    task = asyncio.get_running_loop().create_task(probe(server))
    tasks.add(task)

proxy.server._tune_gc = on_started
sys.exit(main(["serve", "--config", sys.argv[1]]))
"""


def run_probe(config: dict[str, object], tmp_path: Path) -> dict[str, object]:
    config_path = tmp_path / "proxy.yaml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "GENESYS_PROXY_"))}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    line = next((x for x in done.stdout.splitlines() if x.startswith("PROBE ")), None)
    assert done.returncode == 0, done.stderr[-2000:]
    assert line is not None, done.stdout[-2000:]
    result: dict[str, object] = json.loads(line.removeprefix("PROBE "))
    return result


def test_serve_on_the_file_source_imports_no_vault_client_and_jinja2_only_for_the_page(
    tmp_path: Path,
) -> None:
    tenants = tmp_path / "tenants.yaml"
    record = {"client_id": "import-probe", "client_secret": secrets.token_urlsafe(16)}
    tenants.write_text(yaml.safe_dump({"acme": {**record, "region": "eu-west-1"}}))
    config = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "credentials": {"source": "file", "file": str(tenants)},
    }

    seen = run_probe(config, tmp_path)

    assert seen["serving"] == []
    assert seen["page_status"] == 200
    assert seen["page_has_title"]
    # The page is still rendered by aiohttp-jinja2, imported when it was needed.
    assert seen["after_page"] == ["aiohttp_jinja2", "jinja2"]
