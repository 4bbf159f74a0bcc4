"""What every subcommand module shares: the program name, exit codes, usage errors, the config.

`proxy.cli` builds the parser from the subcommand modules (`tenant_cli`, `injector.command`);
they import this module, never `proxy.cli`, so the command line has no import cycle.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import NoReturn

from proxy.config import Config, load_config

PROG = "genesys-token-proxy"
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad command-line usage (exit 2)."""


class Parser(argparse.ArgumentParser):
    """argparse, but its errors are one line and raised rather than printed with usage."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def config_path(path: Path | None, env: Mapping[str, str]) -> Path | None:
    """The config file of a command: --config, else $GENESYS_PROXY_CONFIG, else none."""
    if path is None and env.get("GENESYS_PROXY_CONFIG"):
        path = Path(env["GENESYS_PROXY_CONFIG"])
    return path


def resolve_config(path: Path | None, env: Mapping[str, str]) -> Config:
    """The config for a command: --config, else $GENESYS_PROXY_CONFIG, else the defaults."""
    return load_config(config_path(path, env), env)


def fail(message: str, code: int = EXIT_FAILURE) -> int:
    """Print the one error line a command ends with; returns `code` for the caller to return."""
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code
