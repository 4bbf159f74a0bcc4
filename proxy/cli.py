"""The `genesys-token-proxy` command: parse arguments and the environment, build a Config, run.

Exit codes: 0 success, 2 bad usage or config, 1 anything else. Every error is one line.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NoReturn

from proxy import __version__
from proxy.config import Config, load_config
from proxy.errors import ConfigError
from proxy.injector.command import add_inject_command
from proxy.ops.logs import configure_logging

PROG = "genesys-token-proxy"
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad command-line usage (exit 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but its errors are one line and raised rather than printed with usage."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument(
        "--config",
        metavar="FILE",
        type=Path,
        help="YAML config file (default: $GENESYS_PROXY_CONFIG, else built-in defaults)",
    )
    parser = _Parser(prog=PROG, description="Inject per-tenant Genesys Cloud tokens.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True
    commands.add_parser("serve", parents=[common], help="run the proxy daemon")
    check = commands.add_parser(
        "check-config", parents=[common], help="validate a config file and exit"
    )
    check.add_argument("--print", action="store_true", help="print the resolved config")
    demo = commands.add_parser(
        "demo", help="run the proxy against a built-in Genesys simulator (no account needed)"
    )
    demo.add_argument("--port", type=_port, default=8080, help="proxy port (default 8080)")
    demo.add_argument("--admin-port", type=_port, default=9090, help="admin port (default 9090)")
    add_inject_command(commands)
    from proxy.tenant_cli import add_tenant_commands  # imports this module: import it late

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


def config_path(path: Path | None, env: Mapping[str, str]) -> Path | None:
    """The config file of a command: --config, else $GENESYS_PROXY_CONFIG, else none."""
    if path is None and env.get("GENESYS_PROXY_CONFIG"):
        path = Path(env["GENESYS_PROXY_CONFIG"])
    return path


def resolve_config(path: Path | None, env: Mapping[str, str]) -> Config:
    """The config for a command: --config, else $GENESYS_PROXY_CONFIG, else the defaults."""
    return load_config(config_path(path, env), env)


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
    from proxy.server import StartupError

    try:
        if args.command == "check-config":
            config = resolve_config(args.config, env)
            if args.print:
                print(config)
            print(f"{PROG}: config OK")
            return EXIT_OK
        if args.command == "serve":
            path = config_path(args.config, env)
            config = load_config(path, env)
            configure_logging(config.log)
            from proxy.server import run

            run(config, path, env)  # the path and env again for reloads
            return EXIT_OK
        if args.command == "tenant":
            from proxy.tenant_cli import run_tenant_command

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


def _fail(code: int, message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    logging.shutdown()
    return code
