"""A/B: the working tree's proxy against another revision's, in one run, loads interleaved.

On a shared machine CPU per request moves by tens of percent between runs minutes apart, which
is as much as a change is worth. This runs both proxies (and the plain aiohttp pass-through) at
once against the same upstream, OpenBao and simulator, and loads them in turn, round after round:
whatever the machine does meanwhile hits all of them alike, and the per-round ratio new / base
is what the change did.

    bench/run compare --against HEAD~1 [--rounds 6] [--duration 4]
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import report
from bench.procs import BenchError, cpu_split, process_tree, syscalls
from bench.services import REPO, passthrough, token_proxy
from bench.sidecar import (
    DOMAIN,
    HEADERS,
    REQUEST_PATH,
    WARMUP_SECONDS,
    genesys_stand_ins,
)
from bench.tools import require_programs
from bench.wrk import WrkResult, run_wrk, write_script

NAMES = ("base", "new", "passthrough")
LATENCY_SECONDS = 2.0


@dataclass(frozen=True)
class Settings:
    against: str
    rounds: int
    duration: float
    connections: int


def checkout(revision: str, into: Path) -> str:
    """The `proxy` package of `revision`, extracted under `into`; returns the full commit id."""
    done = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--verify", f"{revision}^{{commit}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"--against {revision}: not a revision of this repository")
    commit = done.stdout.strip()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", commit, "proxy"],
        capture_output=True,
        check=True,
    )
    into.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return commit


def run(settings: Settings, *, install: bool, workdir: Path) -> int:
    programs = require_programs(["nginx", "wrk"], install=install)
    commit = checkout(settings.against, workdir / "base-tree")
    script = write_script(workdir)
    cpu: dict[str, list[float]] = {name: [] for name in NAMES}
    system: dict[str, list[float]] = {name: [] for name in NAMES}
    writes: dict[str, list[float]] = {name: [] for name in NAMES}
    reads: dict[str, list[float]] = {name: [] for name in NAMES}
    p50: dict[str, list[float]] = {name: [] for name in NAMES}
    with ExitStack() as stack:
        stand_ins = genesys_stand_ins(stack, programs["nginx"], workdir)
        upstream, config = stand_ins.upstream, stand_ins.config
        base = stack.enter_context(
            token_proxy(workdir / "base", config, source=workdir / "base-tree")
        ).service
        new = stack.enter_context(token_proxy(workdir / "new", config)).service
        plain = stack.enter_context(
            passthrough(workdir / "passthrough", f"{upstream.url}/api/{DOMAIN}")
        )
        services = {"base": base, "new": new, "passthrough": plain}
        for number in range(settings.rounds):
            print(f"bench: round {number + 1}/{settings.rounds}", file=sys.stderr, flush=True)
            # Alternate the order, so neither is always measured just after the other.
            order = NAMES if number % 2 == 0 else tuple(reversed(NAMES))
            for name in order:
                service = services[name]
                pids = process_tree(service.child.pid)
                url = service.url + REQUEST_PATH

                def load(seconds: float, url: str = url, connections: int = 0) -> WrkResult:
                    return run_wrk(
                        programs["wrk"],
                        script,
                        url,
                        connections=connections or settings.connections,
                        threads=1,
                        seconds=seconds,
                        headers=HEADERS,
                    )

                load(WARMUP_SECONDS)
                (user0, sys0), (reads0, writes0) = cpu_split(pids), syscalls(pids)
                requests = load(settings.duration).requests
                (user1, sys1), (reads1, writes1) = cpu_split(pids), syscalls(pids)
                p50[name].append(load(LATENCY_SECONDS, connections=1).p50_ms)
                cpu[name].append((user1 + sys1 - user0 - sys0) / requests * 1e6)
                system[name].append((sys1 - sys0) / requests * 1e6)
                reads[name].append((reads1 - reads0) / requests)
                writes[name].append((writes1 - writes0) / requests)
    ratios = [n / b for n, b in zip(cpu["new"], cpu["base"], strict=True)]
    new_vs_plain = [n / p for n, p in zip(cpu["new"], cpu["passthrough"], strict=True)]
    base_vs_plain = [b / p for b, p in zip(cpu["base"], cpu["passthrough"], strict=True)]
    result: dict[str, Any] = {
        "bench": "compare",
        "against": settings.against,
        "commit": commit,
        "settings": {
            "rounds": settings.rounds,
            "duration": settings.duration,
            "connections": settings.connections,
        },
        "machine": report.machine(),
        "cpu_us": cpu,
        "median_cpu_us": {name: report.median(values) for name, values in cpu.items()},
        "median_system_us": {name: report.median(values) for name, values in system.items()},
        "reads_per_request": {name: report.median(values) for name, values in reads.items()},
        "writes_per_request": {name: report.median(values) for name, values in writes.items()},
        "median_p50_ms_1_connection": {name: report.median(v) for name, v in p50.items()},
        "new_vs_base": report.median(ratios),
        "new_vs_passthrough": report.median(new_vs_plain),
        "base_vs_passthrough": report.median(base_vs_plain),
    }
    rows = [
        [
            name,
            report.fmt(result["median_cpu_us"][name]),
            report.fmt(result["median_system_us"][name]),
            report.fmt(result["reads_per_request"][name], 2),
            report.fmt(result["writes_per_request"][name], 2),
            report.fmt(result["median_p50_ms_1_connection"][name], 3),
            " ".join(f"{v:.0f}" for v in cpu[name]),
        ]
        for name in NAMES
    ]
    print(
        f"CPU µs per request, {settings.connections} connections, {settings.duration:g} s per "
        f"load, {settings.rounds} rounds; base is {settings.against} ({commit[:10]})"
    )
    header = [
        "proxy",
        "median",
        "of it system",
        "read calls/req",
        "write calls/req",
        "p50 ms (1 conn)",
        "per round",
    ]
    print(report.table(header, rows))
    print(
        f"new / base: {result['new_vs_base']:.3f} (median of per-round ratios: "
        f"{' '.join(f'{r:.3f}' for r in ratios)}); vs pass-through: new "
        f"{result['new_vs_passthrough']:.2f}x, base {result['base_vs_passthrough']:.2f}x"
    )
    print(json.dumps(result, separators=(",", ":")))
    return 0
