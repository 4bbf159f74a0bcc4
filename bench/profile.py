"""Profile the proxy under wrk load with py-spy, and rank where its CPU goes.

The same rig as the sidecar comparison; py-spy samples the proxy process while wrk loads it,
then the collapsed stacks are ranked three ways: by the function on top of the stack (self
time), by every function on the stack (inclusive time) and by the module on top (where a
change would have to be made). Sampling slows the proxy: take figures from `sidecar`, not here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bench import report
from bench.procs import BenchError
from bench.services import REPO
from bench.sidecar import load, rig
from bench.tools import require_programs

ATTACH_SECONDS = 1.0
CALLER_DEPTH = 3
IDLE_WORKER = "_worker (concurrent/futures/thread.py)"


@dataclass(frozen=True)
class Settings:
    duration: float
    connections: int
    rate: int
    top: int


@dataclass(frozen=True)
class Ranking:
    """Sample counts by function (self and inclusive), by module, and the top function's callers."""

    total: int
    idle_dropped: int
    self_time: Counter[str]
    inclusive: Counter[str]
    modules: Counter[str]
    top_callers: Counter[str]


def py_spy() -> str:
    """py-spy beside this Python, else on PATH, else installed from PyPI into this environment."""
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return str(beside)
    found = shutil.which("py-spy")
    if found is not None:
        return found
    print("bench: installing py-spy with pip", file=sys.stderr, flush=True)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "py-spy"], check=False
    )
    if done.returncode != 0 or not beside.exists():
        raise BenchError("py-spy is missing and `pip install py-spy` failed")
    return str(beside)


def run(settings: Settings, *, install: bool, workdir: Path) -> int:
    """Profile the proxy path under load and print the rankings; the raw stacks stay in workdir."""
    programs = require_programs(["nginx", "wrk"], install=install)
    spy = py_spy()
    stacks = workdir / "proxy.stacks"
    with rig(workdir, programs) as running:
        target = running.target("proxy")
        seconds = settings.duration + 2 * ATTACH_SECONDS
        argv = [spy, "record", "--pid", str(target.pids[0]), "--duration", f"{seconds:g}"]
        argv += ["--rate", str(settings.rate), "--format", "raw", "--output", str(stacks)]
        with (workdir / "py-spy.log").open("wb") as log:
            recorder = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
            time.sleep(ATTACH_SECONDS)
            result = load(
                running,
                target,
                connections=settings.connections,
                threads=1,
                seconds=settings.duration,
            )
            if recorder.wait(timeout=seconds + 30) != 0 or not stacks.exists():
                raise BenchError(f"py-spy failed; see {workdir / 'py-spy.log'}")
    ranking = rank(stacks.read_text(encoding="utf-8"))
    print(
        f"profile of the proxy: {ranking.total} samples at {settings.rate} Hz while wrk sent "
        f"{result.requests_per_second:,.0f} req/s over {settings.connections} connections "
        f"(slowed by sampling; {ranking.idle_dropped} samples of idle pool threads left out); "
        f"stacks in {stacks}"
    )
    top = ranking.self_time.most_common(1)[0][0]
    for title, column, counts in (
        ("self time (function on top of the stack)", "function", ranking.self_time),
        ("inclusive time (function anywhere on the stack)", "function", ranking.inclusive),
        ("self time by module", "module", ranking.modules),
        (f"callers of {top}", "callers, innermost first", ranking.top_callers),
    ):
        rows = [
            [name, f"{100 * count / ranking.total:.1f}"]
            for name, count in counts.most_common(settings.top)
        ]
        print()
        print(title)
        print(report.table([column, "%"], rows))
    return 0


def rank(collapsed: str) -> Ranking:
    """Rank py-spy's raw output: lines of `frame;frame;...;frame count`, innermost last."""
    stacks: list[tuple[list[str], int]] = []
    idle = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = stack.split(";")
        # A thread-pool worker parked in queue.get() looks busy to py-spy; it is not.
        if _function(frames[-1]) == IDLE_WORKER:
            idle += int(count_text)
            continue
        stacks.append((frames, int(count_text)))
    if not stacks:
        raise BenchError("py-spy recorded no samples of the proxy")
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    modules: Counter[str] = Counter()
    for frames, count in stacks:
        names = [_function(frame) for frame in frames]
        self_time[names[-1]] += count
        modules[_module(frames[-1])] += count
        for name in set(names):
            inclusive[name] += count
    # The top function is usually a socket send: who calls it tells which write it is.
    top = self_time.most_common(1)[0][0]
    callers: Counter[str] = Counter()
    for frames, count in stacks:
        names = [_function(frame) for frame in frames]
        if names[-1] == top:
            callers[" < ".join(reversed(names[-CALLER_DEPTH - 1 : -1]))] += count
    return Ranking(sum(self_time.values()), idle, self_time, inclusive, modules, callers)


def _function(frame: str) -> str:
    """`name (path/to/module.py:123)` -> `name (module.py)`: lines of one function merged."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rpartition(":")[0] or where.rstrip(")")
    return f"{name} ({_short(path)})"


def _module(frame: str) -> str:
    where = frame.partition(" (")[2].rstrip(")")
    return _short(where.rpartition(":")[0] or where)


def _short(path: str) -> str:
    """A path from its package on: `aiohttp/web_protocol.py`, `proxy/forward.py`, `asyncio/...`."""
    if "site-packages/" in path:
        return path.rpartition("site-packages/")[2]
    if path.startswith(str(REPO) + "/"):
        return path.removeprefix(str(REPO) + "/")
    stdlib = re.search(r"/lib/python3\.\d+/(.*)", path)
    return stdlib.group(1) if stdlib else path
