"""Facts about the machine and the software a benchmark ran on, for its JSON line and table."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path


def machine() -> dict[str, object]:
    """CPU model, cores, memory and load: the context a figure needs to be compared."""
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1),
        "kernel": platform.release(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def software(programs: Mapping[str, str]) -> dict[str, str]:
    """Versions of Python, the proxy's stack and the external programs used."""
    found: dict[str, str] = {"python": platform.python_version()}
    for package in ("genesys-token-proxy", "aiohttp", "uvloop"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    for name, path in programs.items():
        flag = "-v" if name == "nginx" else "--version"
        done = subprocess.run([path, flag], capture_output=True, text=True, check=False)
        text = (done.stdout + done.stderr).strip().splitlines()
        found[name] = text[0] if text else "unknown"
    return found


def median(values: Sequence[float | None]) -> float | None:
    """The median of the values that are there (None where nothing was measured)."""
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain text table, first column left-aligned, the rest right-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        return "  ".join(cells)

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(header), rule, *(line(row) for row in rows)])
