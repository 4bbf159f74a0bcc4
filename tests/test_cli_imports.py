"""The command line's modules import in any order, and catch the daemon's errors without it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imported_after(code: str) -> set[str]:
    listing = "print(' '.join(m for m in sys.modules if m.startswith('proxy')))"
    probe = f"{code}\nimport sys\n{listing}"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


@pytest.mark.parametrize(
    "first", ["proxy.tenant_cli", "proxy.cli", "proxy.cli_base", "proxy.injector.command"]
)
def test_each_cli_module_imports_first_without_a_cycle(first: str) -> None:
    modules = imported_after(f"import {first}")
    assert first in modules
    # The subcommand modules lean on cli_base, never on cli itself.
    if first != "proxy.cli":
        assert "proxy.cli" not in modules


def test_the_cli_catches_startup_errors_without_importing_the_daemon() -> None:
    modules = imported_after("import proxy.cli\nfrom proxy.errors import StartupError")
    assert "proxy.server" not in modules
    assert "proxy.app" not in modules
    from proxy.errors import StartupError
    from proxy.server import StartupError as from_server

    assert from_server is StartupError
