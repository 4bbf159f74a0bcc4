"""`genesys-token-proxy tenant ...`: put tenants' Genesys OAuth clients into Vault and check them.

    tenant set TENANT --client-id ID --region REGION   secret from stdin, or a prompt on a terminal
    tenant show TENANT                                 the record, secret masked to its last 4
    tenant list                                        every tenant under vault.path, masked
    tenant verify TENANT                               fetch a token from the tenant's region
    tenant delete TENANT                               remove the record (all KV v2 versions)

Same config and environment as the daemon (`--config`, `$GENESYS_PROXY_CONFIG`, `VAULT_ADDR`,
`VAULT_TOKEN`, ...); `--json` prints machine-readable output. A client secret is never taken
from the command line, where `ps` and shell history would keep it.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import ssl
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO

import aiohttp

from proxy.cli_base import EXIT_OK, UsageError, fail, resolve_config
from proxy.config import Config, LogConfig
from proxy.errors import ConfigError, InvalidTenant, InvalidTenantCredentials, ProxyError
from proxy.http.failures import describe_client_error, url_host
from proxy.ops.logs import configure_logging
from proxy.regions import DOMAINS, REGIONS, resolve_region
from proxy.tenants.ids import check_tenant_id, shown_tenant
from proxy.tenants.oauth import GenesysTokenFetcher
from proxy.tenants.record import mask_secret as mask_record_secret
from proxy.tenants.record import parse_record, record_field

if TYPE_CHECKING:
    # `serve` imports this module for its subcommands' flags: hvac only when a command runs.
    from proxy.vault.admin_ops import VaultAdmin

MASK = "********"
LIST_CONCURRENCY = 8


def add_tenant_commands(commands: Any) -> None:
    """Add `tenant` and its actions to the top-level subcommands (an argparse subparsers)."""
    # --config and --json are accepted before or after the action; SUPPRESS keeps an action's
    # unset copy from overwriting a value given before it.
    late = argparse.ArgumentParser(add_help=False)
    late.add_argument("--config", metavar="FILE", type=Path, default=argparse.SUPPRESS)
    late.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    tenant = commands.add_parser(
        "tenant", help="manage tenants' Genesys OAuth clients in Vault (set, show, list, ...)"
    )
    tenant.add_argument(
        "--config",
        metavar="FILE",
        type=Path,
        help="YAML config file (default: $GENESYS_PROXY_CONFIG, else built-in defaults)",
    )
    tenant.add_argument("--json", action="store_true", help="print JSON for scripts")
    actions = tenant.add_subparsers(dest="action", metavar="ACTION", parser_class=type(tenant))
    actions.required = True

    put = actions.add_parser(
        "set",
        parents=[late],
        help="store a tenant's OAuth client (secret from stdin or a prompt, never argv)",
    )
    put.add_argument("tenant", metavar="TENANT")
    put.add_argument("--client-id", required=True, help="the Genesys OAuth client id")
    put.add_argument("--region", required=True, help="Genesys domain or AWS region name")
    put.add_argument("--client-secret", action=_RefuseSecretArgument, help=argparse.SUPPRESS)
    for name, text in (
        ("show", "show a tenant's record, secret masked"),
        ("verify", "fetch a token from the tenant's Genesys region to prove its credentials"),
        ("delete", "delete a tenant's record from Vault"),
    ):
        action = actions.add_parser(name, parents=[late], help=text)
        action.add_argument("tenant", metavar="TENANT")
    actions.add_parser("list", parents=[late], help="list tenants in Vault, secrets masked")


class _RefuseSecretArgument(argparse.Action):
    """`--client-secret X` is refused without echoing X (argparse would print it back)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs="?", **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        raise UsageError(
            "the client secret is never taken from the command line (ps and shell history "
            "would keep it): pipe it on stdin or type it at the prompt"
        )


def run_tenant_command(
    args: argparse.Namespace, env: Mapping[str, str], stdin: TextIO | None = None
) -> int:
    """Run one `tenant` action; usage and config errors raise, everything else returns a code."""
    config = resolve_config(args.config, env)
    command = TenantCommand(config, as_json=args.json)
    # Everything the operator typed is checked before Vault is asked anything.
    tenant: str = getattr(args, "tenant", "")
    if args.action != "list":
        command.check_tenant(tenant)
    if args.action == "set":
        domain, stored_region = _parse_region(args.region)
        client_id = args.client_id.strip()
        if not client_id:
            raise UsageError("--client-id must not be empty")
    auth = config.vault.auth
    if auth.method == "token" and not auth.token and auth.token_file is None:
        raise ConfigError(
            "vault.auth.token", "no Vault token: set VAULT_TOKEN, vault.auth.token or token_file"
        )
    # Only errors by default: the outcome is the command's own one line.
    level: Literal["debug", "error"] = "debug" if config.log.level == "debug" else "error"
    configure_logging(LogConfig(level=level, format=config.log.format))
    try:
        if args.action == "set":
            secret = read_secret(stdin or sys.stdin, tenant)
            return asyncio.run(command.set(tenant, client_id, secret, stored_region, domain))
        if args.action == "list":
            return asyncio.run(command.list())
        action = {"show": command.show, "verify": command.verify, "delete": command.delete}
        return asyncio.run(action[args.action](tenant))
    except ProxyError as exc:
        return fail(exc.message)


def read_secret(stdin: TextIO, tenant: str) -> str:
    """The client secret: a prompt on a terminal, else all of stdin (one line)."""
    if stdin.isatty():
        secret = getpass.getpass(f"Client secret for tenant {tenant!r}: ")
    else:
        secret = stdin.read()
    secret = secret.strip()
    if not secret:
        raise UsageError("no client secret: pipe it on stdin or type it at the prompt")
    if any(char.isspace() for char in secret):
        raise UsageError("the client secret must be one line without spaces")
    return secret


def mask_secret(secret: str) -> str:
    """`********wxyz`: the record's masking, with the CLI's longer mask."""
    return mask_record_secret(secret, mask=MASK)


LIST_COLUMNS = (
    ("TENANT", "tenant"),
    ("REGION", "domain"),
    ("CLIENT ID", "client_id"),
    ("SECRET", "client_secret"),
    ("PROBLEM", "problem"),
)


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """`tenant list` for people: a header, one aligned row per tenant, `-` for nothing.

    A broken record shows its stored region (the domain could not be worked out) and, in the
    last column, what is wrong with it; the column is left out when every record is fine.
    """
    columns = [(title, key) for title, key in LIST_COLUMNS if key != "problem"]
    if any(row.get("problem") for row in rows):
        columns.append(("PROBLEM", "problem"))

    def cell(row: Mapping[str, Any], key: str) -> str:
        value = row.get(key)
        if key == "domain" and not value:
            value = row.get("region")
        return str(value) if value else "-"

    table = [[title for title, _ in columns]]
    table += [[cell(row, key) for _, key in columns] for row in rows]
    widths = [max(len(line[index]) for line in table) for index in range(len(columns))]
    lines = [
        "  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip()
        for line in table
    ]
    if not rows:
        lines.append("(no tenants)")
    return "\n".join(lines) + "\n"


def _failure_message(exc: ProxyError, login_url: str, record: Mapping[str, Any]) -> str:
    """The error's message, or, when the login service could not be reached, why, by host."""
    cause = exc.__cause__
    if not isinstance(cause, aiohttp.ClientError | TimeoutError):
        return exc.message
    try:
        domain = resolve_region(str(record.get("region", "")))
    except ValueError:
        return exc.message
    host = url_host(login_url.format(domain=domain))
    return f"{describe_client_error(cause, host)} (the login service of region {domain})"


def _parse_region(value: str) -> tuple[str, str]:
    """(Genesys domain, value to store): canonical spellings are kept as typed, others resolved."""
    try:
        domain = resolve_region(value)
    except ValueError as exc:
        raise UsageError(f"--region: {exc}") from None
    cleaned = value.strip().lower()
    return domain, cleaned if cleaned in REGIONS or cleaned in DOMAINS else domain


class TenantCommand:
    """The actions, against the Vault the config names."""

    def __init__(self, config: Config, *, as_json: bool) -> None:
        self._config = config
        self._as_json = as_json

    def check_tenant(self, tenant: str) -> None:
        """Refuse an id the proxy would refuse (or that would walk the KV tree) before any I/O."""
        pattern = self._config.tenant.pattern
        try:
            check_tenant_id(tenant, pattern)
        except InvalidTenant:
            raise UsageError(
                f"invalid tenant id {shown_tenant(tenant)}: it must match tenant.pattern "
                f"{pattern.pattern} and be one Vault path segment"
            ) from None

    def where(self, tenant: str) -> str:
        return f"{self._config.vault.kv_mount}/{self._path(tenant)}"

    async def set(self, tenant: str, client_id: str, secret: str, region: str, domain: str) -> int:
        record = {"client_id": client_id, "client_secret": secret, "region": region}
        async with self._session() as vault:
            existed = await vault.read(self._path(tenant)) is not None
            await vault.write(self._path(tenant), record)
        action = "updated" if existed else "created"
        summary = {
            "tenant": tenant,
            "action": action,
            "path": self.where(tenant),
            "client_id": client_id,
            "client_secret": mask_secret(secret),
            "region": region,
            "domain": domain,
        }
        self._print(
            summary,
            f"tenant {tenant!r} {action} at {self.where(tenant)} (client id {client_id}, "
            f"region {domain}, secret {mask_secret(secret)})",
        )
        return EXIT_OK

    async def show(self, tenant: str) -> int:
        async with self._session() as vault:
            data = await vault.read(self._path(tenant))
        if data is None:
            return fail(self._missing(tenant))
        row = self._describe(tenant, data)
        if self._as_json:
            self._print(row, "")
        else:
            for key, value in row.items():
                if value is not None and key != "problem":
                    print(f"{key + ':':<15}{value}")
        if row["problem"]:
            # The record is there but the proxy could not use it: not a success.
            return fail(f"tenant {tenant!r} at {self.where(tenant)}: {row['problem']}")
        return EXIT_OK

    async def list(self) -> int:
        template = self._config.vault.path
        before, after = template.split("{tenant}", 1)
        directory, _, partial = before.rpartition("/")
        async with self._session() as vault:
            keys = await vault.list_keys(directory)
            tenants = sorted(
                tenant
                for tenant in (_tenant_of(key, partial, after) for key in keys)
                if tenant is not None and self._config.tenant.pattern.fullmatch(tenant)
            )
            limit = asyncio.Semaphore(LIST_CONCURRENCY)

            async def describe(tenant: str) -> dict[str, Any]:
                async with limit:
                    try:
                        data = await vault.read(self._path(tenant))
                    except ProxyError as exc:
                        return {"tenant": tenant, "problem": exc.message}
                return self._describe(tenant, data or {})

            rows = await asyncio.gather(*(describe(tenant) for tenant in tenants))
        if self._as_json:
            print(json.dumps(rows, indent=2))
        else:
            print(format_table(rows), end="")
        return EXIT_OK

    async def verify(self, tenant: str) -> int:
        async with self._session() as vault:
            data = await vault.read(self._path(tenant))
        if data is None:
            return fail(self._missing(tenant))
        try:
            credentials = parse_record(tenant, data)
            genesys = self._config.genesys
            ssl_context: ssl.SSLContext | bool = True
            if genesys.ca_file is not None:
                ssl_context = ssl.create_default_context(cafile=str(genesys.ca_file))
            connector = aiohttp.TCPConnector(ssl=ssl_context)
            async with aiohttp.ClientSession(connector=connector, trust_env=False) as http:
                fetcher = GenesysTokenFetcher(
                    http,
                    genesys.login_url,
                    timeout=genesys.timeout,
                    connect_timeout=genesys.connect_timeout,
                )
                token = await fetcher.fetch(credentials)
        except ProxyError as exc:
            message = _failure_message(exc, self._config.genesys.login_url, data)
            if self._as_json:
                result = {"tenant": tenant, "ok": False, "error": exc.code, "message": message}
                print(json.dumps(result, indent=2))
            return fail(f"tenant {tenant!r} failed verification: {message}")
        login = genesys.login_url.format(domain=credentials.region)
        result = {
            "tenant": tenant,
            "ok": True,
            "domain": credentials.region,
            "login_url": login,
            "expires_in": round(token.lifetime),
        }
        self._print(
            result,
            f"OK: tenant {tenant!r} got a token from {login} "
            f"(region {credentials.region}, valid for {token.lifetime:.0f} s)",
        )
        return EXIT_OK

    async def delete(self, tenant: str) -> int:
        async with self._session() as vault:
            if await vault.read(self._path(tenant)) is None:
                return fail(self._missing(tenant))
            await vault.delete(self._path(tenant))
        self._print(
            {"tenant": tenant, "deleted": True, "path": self.where(tenant)},
            f"tenant {tenant!r} deleted from {self.where(tenant)}",
        )
        return EXIT_OK

    def _describe(self, tenant: str, data: Mapping[str, Any]) -> dict[str, Any]:
        """A record for display: every secret masked; a broken record says what is wrong."""
        secret = record_field(data, "client_secret")
        row: dict[str, Any] = {
            "tenant": tenant,
            "path": self.where(tenant),
            "client_id": record_field(data, "client_id"),
            "client_secret": mask_secret(secret) if isinstance(secret, str) else None,
            "region": data.get("region"),
            "domain": None,
            "problem": None,
        }
        try:
            row["domain"] = parse_record(tenant, data).region
        except InvalidTenantCredentials as exc:
            row["problem"] = exc.message
        return row

    def _path(self, tenant: str) -> str:
        return self._config.vault.path.format(tenant=tenant)

    def _missing(self, tenant: str) -> str:
        return f"no credential record for tenant {tenant!r} at {self.where(tenant)}"

    def _print(self, data: Mapping[str, Any], text: str) -> None:
        print(json.dumps(data, indent=2) if self._as_json else text)

    def _session(self) -> VaultAdmin:
        from proxy.vault.admin_ops import VaultAdmin

        return VaultAdmin(self._config.vault)


def _tenant_of(key: str, partial: str, after: str) -> str | None:
    """The tenant id a listed key stands for under the path template, or None."""
    if not key.startswith(partial):
        return None
    rest = key[len(partial) :]
    if after:  # `{tenant}` names a folder: only folder keys count
        return rest[:-1] if rest.endswith("/") and len(rest) > 1 else None
    return rest if rest and not rest.endswith("/") else None
