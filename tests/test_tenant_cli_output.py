"""What `tenant list`, `show` and `verify` print for people: tables, exit codes, named failures."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest
import yaml

from proxy.simulator import GenesysSimulator
from proxy.tenant_cli import format_table
from tests.conftest import OpenBao, find_free_port
from tests.test_tenant_cli import TenantCli, cli, error_line  # noqa: F401 (cli is a fixture)

pytestmark = pytest.mark.slow


def column_starts(line: str, titles: list[str]) -> list[int]:
    return [line.index(title) for title in titles]


def test_the_table_has_a_header_and_aligned_columns() -> None:
    rows = [
        {"tenant": "a", "domain": "aps1.pure.cloud", "client_id": "c-1", "client_secret": "****"},
        {"tenant": "long-tenant-id", "domain": None, "region": "eu-west-9", "client_id": None,
         "client_secret": None, "problem": "region 'eu-west-9' is not a Genesys Cloud region"},
    ]  # fmt: skip
    lines = format_table(rows).splitlines()
    assert lines[0].split() == ["TENANT", "REGION", "CLIENT", "ID", "SECRET", "PROBLEM"]
    starts = column_starts(lines[0], ["REGION", "CLIENT ID", "SECRET", "PROBLEM"])
    first = column_starts(lines[1], ["aps1.pure.cloud", "c-1", "****"])
    assert first == starts[:3]
    # A broken record shows its stored region, dashes for what it lacks, and the problem.
    assert lines[2].index("eu-west-9") == starts[0]
    assert lines[2][starts[1]] == "-"
    assert lines[2].index("region 'eu-west-9'") == starts[3]
    assert "PROBLEM" not in format_table(rows[:1])
    assert format_table([]).splitlines()[1] == "(no tenants)"


async def test_list_is_a_table_and_json_and_show_fails_on_a_broken_record(
    cli: TenantCli,  # noqa: F811 (the fixture imported above)
    openbao: OpenBao,
    sim: GenesysSimulator,
    tenant_prefix: str,
) -> None:
    good, broken = f"{tenant_prefix}-good", f"{tenant_prefix}-broken"
    secret = f"fake-secret-{secrets.token_hex(8)}"
    openbao.put_tenant(good, "client-good", secret, "ap-south-1")
    openbao.put_tenant(broken, "client-broken", secret, "aps1.mypurecloud.com")
    config = ("--config", str(cli.config_file))

    run = await cli("list", *config)
    assert run.code == 0, run.stderr
    lines = run.stdout.splitlines()
    header = lines[0]
    assert header.split()[:5] == ["TENANT", "REGION", "CLIENT", "ID", "SECRET"]
    mine = {line.split()[0]: line for line in lines[1:] if line.startswith(tenant_prefix)}
    assert mine[good].index("aps1.pure.cloud") == header.index("REGION")
    assert mine[good].index(f"********{secret[-4:]}") == header.index("SECRET")
    assert mine[broken].index("aps1.mypurecloud.com") == header.index("REGION")
    assert "did you mean aps1.pure.cloud" in mine[broken][header.index("PROBLEM") :]

    rows = {row["tenant"]: row for row in json.loads((await cli("list", "--json", *config)).stdout)}
    assert rows[good]["problem"] is None
    assert rows[broken]["problem"] is not None

    run = await cli("show", good, *config)
    assert run.code == 0, run.stderr
    run = await cli("show", broken, *config)
    assert run.code == 1
    assert "client-broken" in run.stdout  # what is there is still shown
    assert "did you mean aps1.pure.cloud" in error_line(run.stderr)
    run = await cli("show", broken, "--json", *config)
    assert run.code == 1
    assert json.loads(run.stdout)["problem"] is not None
    cli.assert_never_shown(secret)


@pytest.mark.parametrize(
    ("login_url", "expected"),
    [
        ("http://127.0.0.1:{port}/login/{{domain}}", "connection to 127.0.0.1:{port} refused"),
        ("http://login.{{domain}}.invalid", "DNS lookup of login.aps1.pure.cloud.invalid failed"),
    ],
    ids=["refused", "dns"],
)
async def test_verify_names_the_host_and_the_cause_not_a_class(
    cli: TenantCli, openbao: OpenBao, tenant_prefix: str, tmp_path: Path,  # noqa: F811
    login_url: str, expected: str,
) -> None:  # fmt: skip
    port = find_free_port()
    config = tmp_path / "unreachable.yaml"
    config.write_text(
        yaml.safe_dump({"genesys": {"login_url": login_url.format(port=port), "timeout": 5}})
    )
    tenant = f"{tenant_prefix}-far"
    openbao.put_tenant(tenant, "client-far", f"fake-secret-{secrets.token_hex(8)}", "ap-south-1")
    run = await cli("verify", tenant, "--config", str(config))
    assert run.code == 1
    line = error_line(run.stderr)
    assert expected.format(port=port) in line
    assert "(the login service of region aps1.pure.cloud)" in line
    assert "Error" not in line  # no ClientConnectorError, ClientConnectorDNSError, ...
