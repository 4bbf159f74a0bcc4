"""Instructions per proxied request, counted by valgrind's callgrind: repeatable on a busy machine.

CPU time from /proc moves with whatever else the machine runs (caches, frequency, other
engineers' test suites); the number of instructions a process executes for a request does not.
This starts the proxy and the plain aiohttp pass-through under `valgrind --tool=callgrind` with
instrumentation off (so start-up is not counted and is faster), turns it on, sends a warm-up,
zeroes the counters, sends exactly `requests` GETs one after another on one keep-alive connection
and dumps the counters: instructions of every thread of the process (its user-space code: Python,
uvloop, OpenSSL, libc; not the kernel's), divided by the requests. The same upstream as
`sidecar`, the proxy's tenant in a real OpenBao, its token from the Genesys simulator.

    bench/run instructions [--requests 300]
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import report
from bench.procs import BenchError
from bench.services import (
    Service,
    passthrough,
    token_proxy,
)
from bench.sidecar import (
    DOMAIN,
    HEADERS,
    REQUEST_PATH,
    genesys_stand_ins,
)
from bench.tools import require_programs

WARMUP_REQUESTS = 30
# Under valgrind a Python process starts about ten times slower.
START_TIMEOUT = 180.0
_TOTALS = re.compile(r"^(?:totals|summary):\s*(\d+)", re.MULTILINE)


@dataclass(frozen=True)
class Settings:
    requests: int


def run(settings: Settings, *, install: bool, workdir: Path) -> int:
    programs = require_programs(["nginx"], install=install)
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} is missing: `apt-get install valgrind`")
    counts: dict[str, float] = {}
    with ExitStack() as stack:
        stand_ins = genesys_stand_ins(stack, programs["nginx"], workdir)
        upstream, config = stand_ins.upstream, stand_ins.config
        for name in ("passthrough", "proxy"):
            work = workdir / name
            wrapper = _valgrind(work / "callgrind.out")
            service: Service
            if name == "proxy":
                service = stack.enter_context(
                    token_proxy(work, config, wrapper=wrapper, start_timeout=START_TIMEOUT)
                ).service
            else:
                service = stack.enter_context(
                    passthrough(
                        work,
                        f"{upstream.url}/api/{DOMAIN}",
                        wrapper=wrapper,
                        start_timeout=START_TIMEOUT,
                    )
                )
            print(f"bench: counting {name}", file=sys.stderr, flush=True)
            counts[name] = _count(service, work, settings.requests)
    result: dict[str, Any] = {
        "bench": "instructions",
        "requests": settings.requests,
        "machine": report.machine(),
        "instructions_per_request": counts,
        "proxy_vs_passthrough": counts["proxy"] / counts["passthrough"],
    }
    rows = [[name, f"{count:,.0f}"] for name, count in counts.items()]
    print(
        f"instructions per request (callgrind, {settings.requests} sequential GETs on one "
        "keep-alive connection, after a warm-up)"
    )
    print(report.table(["path", "instructions/req"], rows))
    print(f"proxy vs pass-through: {result['proxy_vs_passthrough']:.2f}x")
    print(json.dumps(result, separators=(",", ":")))
    return 0


def _valgrind(out_file: Path) -> list[str]:
    return [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out_file}.%p",
    ]


def _count(service: Service, work: Path, requests: int) -> float:
    """Instructions per request of the valgrind process behind `service`."""
    pid = str(service.child.pid)
    _control(["--instr=on", pid])
    connection = http.client.HTTPConnection("127.0.0.1", service.port, timeout=60)
    try:
        _get(connection, WARMUP_REQUESTS)
        _control(["--zero", pid])
        _get(connection, requests)
        _control(["--dump", pid])
    finally:
        connection.close()
    dumps = sorted(work.glob("callgrind.out.*"), key=lambda path: path.stat().st_mtime)
    if not dumps:
        raise BenchError(f"callgrind wrote no dump in {work}")
    found = _TOTALS.search(dumps[-1].read_text(encoding="utf-8", errors="replace"))
    if found is None:
        raise BenchError(f"no totals in {dumps[-1]}")
    return int(found.group(1)) / requests


def _get(connection: http.client.HTTPConnection, count: int) -> None:
    for _ in range(count):
        connection.request("GET", REQUEST_PATH, headers=dict(HEADERS))
        answer = connection.getresponse()
        answer.read()
        if answer.status != 200:
            raise BenchError(f"answered {answer.status} under valgrind")


def _control(args: Sequence[str]) -> None:
    done = subprocess.run(
        ["callgrind_control", *args], capture_output=True, text=True, check=False, timeout=120
    )
    if done.returncode != 0:
        raise BenchError(f"callgrind_control {' '.join(args)} failed: {done.stderr.strip()}")
