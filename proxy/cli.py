"""The `genesys-token-proxy` command: parse arguments and the environment, build a Config, run.

Exit codes: 0 success, 2 bad usage or config, 1 anything else. Every error is one line.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from proxy import __version__
from proxy.cli_base import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    PROG,
    Parser,
    UsageError,
    config_path,
    fail,
    resolve_config,
)
from proxy.config import Config, load_config, parse_config
from proxy.config_yaml import apply_settings, defaults_template, render_config
from proxy.errors import ConfigError, StartupError
from proxy.injector.command import add_inject_command
from proxy.ops.logs import configure_logging
from proxy.tenant_cli import add_tenant_commands, run_tenant_command


def build_parser() -> argparse.ArgumentParser:
    common = Parser(add_help=False)
    common.add_argument(
        "--config",
        metavar="FILE",
        type=Path,
        help="YAML config file (default: $GENESYS_PROXY_CONFIG, else built-in defaults)",
    )
    settings = Parser(add_help=False)
    settings.add_argument(
        "--set",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        dest="settings",
        help="override one key, e.g. --set vault.address=https://vault:8200 (repeatable)",
    )
    parser = Parser(prog=PROG, description="Inject per-tenant Genesys Cloud tokens.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands.required = True
    commands.add_parser("serve", parents=[common], help="run the proxy daemon")
    check = commands.add_parser(
        "check-config", parents=[common, settings], help="validate a config file and exit"
    )
    check.add_argument(
        "--print",
        action="store_true",
        help="print the resolved config as commented YAML (secrets as <redacted>)",
    )
    init = commands.add_parser(
        "init-config",
        parents=[settings],
        help="write a complete, commented config to start from (every key at its default)",
    )
    init.add_argument(
        "--output", "-o", metavar="FILE", type=Path, help="write to FILE (default: stdout)"
    )
    init.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    demo = commands.add_parser(
        "demo", help="run the proxy against a built-in Genesys simulator (no account needed)"
    )
    demo.add_argument("--port", type=_port, default=8080, help="proxy port (default 8080)")
    demo.add_argument("--admin-port", type=_port, default=9090, help="admin port (default 9090)")
    add_inject_command(commands)
    add_tenant_commands(commands)
    return parser


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number 0-65535")
    return port


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Entry point of the console script and `python -m proxy`; returns the exit code."""
    env = os.environ if env is None else env
    try:
        args = build_parser().parse_args(argv)
        return _dispatch(args, env)
    except UsageError as exc:
        return _fail(EXIT_USAGE, str(exc))
    except ConfigError as exc:
        return _fail(EXIT_USAGE, f"config error: {exc}")
    except KeyboardInterrupt:
        return EXIT_FAILURE


def _dispatch(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    try:
        if args.command == "check-config":
            config = _config_with_settings(args.config, args.settings, env)
            if args.print:
                print(render_config(config, env, header=_printed_header(args.config)), end="")
            else:
                print(f"{PROG}: config OK")
            return EXIT_OK
        if args.command == "init-config":
            return _init_config(args)
        if args.command == "serve":
            path = config_path(args.config, env)
            config = load_config(path, env)
            configure_logging(config.log)
            from proxy.server import run

            run(config, path, env)  # the path and env again for reloads
            return EXIT_OK
        if args.command == "tenant":
            return run_tenant_command(args, env)
        if args.command == "demo":
            from proxy.demo import run_demo

            run_demo(args.port, args.admin_port)
            return EXIT_OK
        if args.command == "inject":
            from proxy.injector.command import run_inject_command

            run_inject_command(args)
            return EXIT_OK
    except StartupError as exc:
        return _fail(EXIT_FAILURE, str(exc))
    raise UsageError(f"unknown command {args.command!r}")


def _config_with_settings(
    path: Path | None, settings: Sequence[str], env: Mapping[str, str]
) -> Config:
    """`resolve_config`, then the `--set` overrides, validated together."""
    if not settings:
        return resolve_config(path, env)
    if path is None and env.get("GENESYS_PROXY_CONFIG"):
        path = Path(env["GENESYS_PROXY_CONFIG"])
    import yaml

    data: Any = {}
    if path is not None:
        load_config(path, env)  # the file's own errors first, naming the file's key
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return parse_config(apply_settings(data, settings), env)


def _printed_header(path: Path | None) -> tuple[str, ...]:
    source = f"from {path}" if path is not None else "the built-in defaults"
    return (
        f"genesys-token-proxy configuration, resolved {source} and the environment.",
        "Every key is shown; secrets as <redacted>, which loading refuses: fill them in or",
        "leave the key out and set its environment variable (VAULT_TOKEN).",
    )


def _init_config(args: argparse.Namespace) -> int:
    text = defaults_template()
    if args.settings:
        # The chosen values, still with every other key at its default and every note.
        config = parse_config(apply_settings({}, args.settings))
        text = render_config(
            config,
            header=(
                "genesys-token-proxy configuration: every key, with its default or the value",
                "given to init-config --set. Check it with:",
                "  genesys-token-proxy check-config --config FILE",
            ),
        )
    if args.output is None:
        print(text, end="")
        return EXIT_OK
    output: Path = args.output
    if output.exists() and not args.force:
        return fail(f"{output} exists: pass --force to overwrite it")
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        return fail(f"cannot write {output}: {exc.strerror}")
    print(f"{PROG}: wrote {output}; check it with: {PROG} check-config --config {output}")
    return EXIT_OK


def _fail(code: int, message: str) -> int:
    fail(message, code)
    logging.shutdown()
    return code
