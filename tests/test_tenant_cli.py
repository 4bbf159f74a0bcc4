"""`genesys-token-proxy tenant ...` run as a subprocess against the real OpenBao and the simulator.

Every run is recorded: the client secret must never show in an argv, stdout, stderr, or in
OpenBao's own log and audit log.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.simulator import GenesysSimulator
from tests.conftest import OpenBao, find_free_port

pytestmark = pytest.mark.slow

POLICIES = Path(__file__).resolve().parent.parent / "config" / "vault"


@dataclass
class Run:
    argv: list[str]
    code: int
    stdout: str
    stderr: str


@dataclass
class TenantCli:
    """Runs the CLI as an operator would: env VAULT_ADDR/VAULT_TOKEN, a config file."""

    config_file: Path
    env: dict[str, str]
    runs: list[Run] = field(default_factory=list)

    async def __call__(self, *args: str, stdin: str = "", env: dict[str, str] | None = None) -> Run:
        argv = [sys.executable, "-m", "proxy", "tenant", *args]
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env or self.env,
        )
        out, err = await process.communicate(stdin.encode())
        assert process.returncode is not None
        run = Run(argv, process.returncode, out.decode(), err.decode())
        self.runs.append(run)
        return run

    def assert_never_shown(self, secret: str) -> None:
        for run in self.runs:
            assert all(secret not in arg for arg in run.argv)
            assert secret not in run.stdout
            assert secret not in run.stderr


@pytest.fixture
def cli(openbao: OpenBao, sim: GenesysSimulator, tmp_path: Path) -> TenantCli:
    """The CLI with a token carrying only config/vault/genesys-tenant-admin.hcl."""
    root = openbao.client()
    policy = (POLICIES / "genesys-tenant-admin.hcl").read_text()
    root.sys.create_or_update_policy(name="genesys-tenant-admin", policy=policy)
    token = root.auth.token.create(policies=["genesys-tenant-admin"], ttl="10m")["auth"]
    config_file = tmp_path / "proxy.yaml"
    config_file.write_text(
        yaml.safe_dump(
            {
                "genesys": {
                    "login_url": sim.login_url_template,
                    "api_url": sim.api_url_template,
                    "timeout": 5,
                },
                # Debug logging: even the most talkative run must not show a secret.
                "log": {"level": "debug"},
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "GENESYS_"))}
    env.update(VAULT_ADDR=openbao.address, VAULT_TOKEN=token["client_token"])
    return TenantCli(config_file, env)


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


def error_line(stderr: str) -> str:
    """The one error line (the fixture's config turns debug logging on around it)."""
    return one_line("\n".join(line for line in stderr.splitlines() if "error:" in line))


def vault_record(openbao: OpenBao, tenant: str) -> dict[str, Any] | None:
    kv = openbao.client().secrets.kv.v2
    try:
        response = kv.read_secret_version(
            path=f"genesys/tenants/{tenant}", raise_on_deleted_version=True
        )
    except Exception:  # hvac's InvalidPath: there is no record
        return None
    data: dict[str, Any] = response["data"]["data"]
    return data


async def test_set_show_verify_list_delete_round_trip_never_shows_the_secret(
    cli: TenantCli, openbao: OpenBao, sim: GenesysSimulator, tenant_prefix: str
) -> None:
    tenant = f"{tenant_prefix}-acme"
    client_id = f"client-{tenant}"
    secret = f"fake-secret-{secrets.token_hex(8)}"
    sim.add_client(client_id, secret, domain="aps1.pure.cloud")
    config = str(cli.config_file)

    run = await cli(
        "set", tenant, "--client-id", client_id, "--region", "ap-south-1", "--config", config,
        stdin=secret + "\n",
    )  # fmt: skip
    assert run.code == 0, run.stderr
    assert "created" in run.stdout
    assert f"********{secret[-4:]}" in run.stdout
    assert vault_record(openbao, tenant) == {
        "client_id": client_id,
        "client_secret": secret,
        "region": "ap-south-1",
    }

    run = await cli("--config", config, "show", tenant)
    assert run.code == 0, run.stderr
    assert client_id in run.stdout
    assert f"********{secret[-4:]}" in run.stdout
    assert "aps1.pure.cloud" in run.stdout

    run = await cli("verify", tenant, "--config", config)
    assert run.code == 0, run.stderr
    assert one_line(run.stdout).startswith(f"OK: tenant '{tenant}' got a token")
    assert sim.tokens_issued(client_id) == 1

    # A wrong secret is written as given, and verify says why it fails.
    run = await cli(
        "set", tenant, "--client-id", client_id, "--region", "aps1.pure.cloud", "--config", config,
        stdin="fake-secret-that-is-wrong",
    )  # fmt: skip
    assert run.code == 0, run.stderr
    assert "updated" in run.stdout
    run = await cli("verify", tenant, "--config", config)
    assert run.code == 1
    assert "OK" not in run.stdout
    assert "rejected the OAuth client (invalid_client)" in error_line(run.stderr)

    run = await cli("list", "--config", config)
    assert run.code == 0, run.stderr
    assert any(line.startswith(f"{tenant} ") for line in run.stdout.splitlines())
    run = await cli("list", "--json", "--config", config)
    rows = {row["tenant"]: row for row in json.loads(run.stdout)}
    assert rows[tenant]["client_secret"] == "********rong"
    assert rows[tenant]["domain"] == "aps1.pure.cloud"

    run = await cli("delete", tenant, "--config", config)
    assert run.code == 0, run.stderr
    assert vault_record(openbao, tenant) is None
    run = await cli("show", tenant, "--config", config)
    assert run.code == 1
    assert "no credential record" in error_line(run.stderr)
    run = await cli("list", "--json", "--config", config)
    assert tenant not in {row["tenant"] for row in json.loads(run.stdout)}

    cli.assert_never_shown(secret)
    cli.assert_never_shown("fake-secret-that-is-wrong")
    # OpenBao's own logs: the audit device HMACs request values.
    assert secret not in openbao.output()
    assert secret not in openbao.audit_path.read_text()


async def test_json_output_for_scripts(
    cli: TenantCli, sim: GenesysSimulator, tenant_prefix: str
) -> None:
    tenant = f"{tenant_prefix}-json"
    secret = f"fake-secret-{secrets.token_hex(8)}"
    sim.add_client(f"client-{tenant}", secret, domain="mypurecloud.ie")
    config = str(cli.config_file)
    args = ("--client-id", f"client-{tenant}", "--region", "mypurecloud.ie", "--config", config)
    run = await cli("--json", "set", tenant, *args, stdin=secret)
    assert json.loads(run.stdout)["action"] == "created"

    shown = json.loads((await cli("show", tenant, "--json", "--config", config)).stdout)
    assert shown["client_secret"] == f"********{secret[-4:]}"
    assert shown["region"] == "mypurecloud.ie"
    assert shown["problem"] is None
    verified = json.loads((await cli("verify", tenant, "--json", "--config", config)).stdout)
    assert verified["ok"] is True
    assert verified["expires_in"] > 0

    sim.remove_client(f"client-{tenant}")
    run = await cli("verify", tenant, "--json", "--config", config)
    assert run.code == 1
    assert json.loads(run.stdout)["error"] == "genesys_auth_failed"
    cli.assert_never_shown(secret)


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (("set", "bad/id", "--region", "ap-south-1"), "invalid tenant id 'bad/id'"),
        (("set", "_underscore-first", "--region", "ap-south-1"), "invalid tenant id"),
        (("set", "{t}", "--region", "aps1.mypurecloud.com"), "did you mean aps1.pure.cloud"),
        (("set", "{t}", "--region", "eu-west-3"), "'eu-west-3' has no Genesys Cloud region"),
        (("show", "x" * 70), "invalid tenant id"),
    ],
)
async def test_invalid_ids_and_regions_are_refused_before_anything_is_written(
    cli: TenantCli,
    openbao: OpenBao,
    tenant_prefix: str,
    args: Sequence[str],
    complaint: str,
) -> None:
    argv = [arg.replace("{t}", tenant_prefix) for arg in args]
    if argv[0] == "set":
        argv += ["--client-id", "client-x"]
    run = await cli(*argv, "--config", str(cli.config_file), stdin="fake-secret-never-stored")
    assert run.code == 2
    assert complaint in one_line(run.stderr)
    assert vault_record(openbao, tenant_prefix) is None
    assert "fake-secret-never-stored" not in openbao.audit_path.read_text()


async def test_usage_errors_exit_2_with_one_line(cli: TenantCli, tenant_prefix: str) -> None:
    config = ("--config", str(cli.config_file))
    base = ("set", tenant_prefix, "--client-id", "c", "--region", "ap-south-1", *config)

    run = await cli(*base, "--client-secret", "fake-secret-on-argv")
    assert run.code == 2
    assert "never taken from the command line" in one_line(run.stderr)
    assert "fake-secret-on-argv" not in run.stderr

    run = await cli(*base, stdin="")
    assert (run.code, "no client secret" in one_line(run.stderr)) == (2, True)

    env = {k: v for k, v in cli.env.items() if k != "VAULT_TOKEN"}
    run = await cli("list", *config, env=env)
    assert run.code == 2
    assert "vault.auth.token" in one_line(run.stderr)

    run = await cli("frobnicate", *config)
    assert run.code == 2
    assert "invalid choice" in one_line(run.stderr)


async def test_unreachable_vault_is_exit_1_with_exactly_one_line(cli: TenantCli) -> None:
    # No --config: the built-in defaults (log level info) and the environment, as in a pod.
    env = dict(cli.env, VAULT_ADDR=f"http://127.0.0.1:{find_free_port()}")
    run = await cli("list", env=env)
    assert run.code == 1
    assert run.stdout == ""
    line = one_line(run.stderr)
    assert line.startswith("genesys-token-proxy: error: cannot reach Vault at http://127.0.0.1:")


def _run_on_a_terminal(argv: list[str], env: dict[str, str], typed: str) -> tuple[int, str]:
    """Run `argv` with a pseudo-terminal as its stdin and controlling terminal; type `typed`."""
    import fcntl
    import pty
    import subprocess
    import termios

    leader, follower = pty.openpty()

    def take_terminal() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    process = subprocess.Popen(
        argv,
        stdin=follower,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        preexec_fn=take_terminal,  # noqa: PLW1509 (only setsid and an ioctl before exec)
    )
    os.close(follower)
    prompt = b""
    while b"Client secret" not in prompt:
        prompt += os.read(leader, 1024)
    os.write(leader, typed.encode() + b"\n")
    out, _ = process.communicate(timeout=30)
    transcript = prompt + out
    try:
        while chunk := os.read(leader, 1024):
            transcript += chunk
    except OSError:
        pass  # the terminal closed with the process
    os.close(leader)
    return process.returncode, transcript.decode(errors="replace")


async def test_set_prompts_for_the_secret_on_a_terminal_without_echoing_it(
    cli: TenantCli, openbao: OpenBao, tenant_prefix: str
) -> None:
    secret = f"fake-secret-{secrets.token_hex(8)}"
    argv = [sys.executable, "-m", "proxy", "tenant", "set", tenant_prefix]
    argv += ["--client-id", "client-x", "--region", "us-east-1", "--config", str(cli.config_file)]
    code, transcript = await asyncio.to_thread(_run_on_a_terminal, argv, cli.env, secret)
    assert code == 0, transcript
    assert f"Client secret for tenant '{tenant_prefix}'" in transcript
    assert secret not in transcript  # getpass turned echo off
    record = vault_record(openbao, tenant_prefix)
    assert record is not None
    assert record["client_secret"] == secret
