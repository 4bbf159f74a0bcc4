"""The soak script itself works: a few seconds of it, at a low rate (the real run is minutes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_a_short_soak_runs_clean_through_a_vault_restart() -> None:
    args = ["--duration", "5", "--rate", "20", "--tenants", "3", "--outage", "1", "--rest", "1"]
    result = subprocess.run(
        [sys.executable, "bench/soak.py", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Vault is back (restarted empty, re-seeded)" in output
    assert "unexpected errors: 0" in output
    assert '"expired_tokens_seen": 0' in output
    assert "proxy RSS KiB: launch" in output
    assert "verdict: PASS" in output
