"""Drive `wrk` and read its summary as JSON (a Lua `done` hook prints it, exact to the µs)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bench.procs import BenchError

MARKER = "WRK_JSON "
# wrk calls done() once at the end; latency percentiles are in microseconds.
_DONE_SCRIPT = """\
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"requests":%d,"duration_us":%d,"bytes":%d,"errors_connect":%d,"errors_read":%d,' ..
    '"errors_write":%d,"errors_status":%d,"errors_timeout":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\\n',
    "MARKER", summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean))
end
"""


@dataclass(frozen=True)
class WrkResult:
    """What one wrk run measured."""

    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p99_ms: float

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds


def write_script(work: Path) -> Path:
    """The Lua hook file, written once per benchmark run."""
    script = work / "done.lua"
    script.write_text(_DONE_SCRIPT.replace('"MARKER"', json.dumps(MARKER)), encoding="utf-8")
    return script


def run_wrk(
    wrk: str,
    script: Path,
    url: str,
    *,
    connections: int,
    threads: int,
    seconds: float,
    headers: Mapping[str, str],
) -> WrkResult:
    """Load `url` for `seconds`; refuse a run that saw any error, since it measured failures."""
    argv = [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "5s",
        "-s",
        str(script),
    ]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    argv.append(url)
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=seconds + 60)
    line = next((x for x in done.stdout.splitlines() if x.startswith(MARKER)), None)
    if done.returncode != 0 or line is None:
        raise BenchError(f"wrk failed on {url}: {done.stderr.strip() or done.stdout.strip()}")
    summary = json.loads(line.removeprefix(MARKER))
    errors = sum(value for key, value in summary.items() if key.startswith("errors_"))
    if summary["requests"] == 0 or errors:
        raise BenchError(f"wrk on {url}: {summary['requests']} requests, errors {summary}")
    return WrkResult(
        requests=summary["requests"],
        seconds=summary["duration_us"] / 1e6,
        errors=errors,
        p50_ms=summary["p50_us"] / 1000,
        p99_ms=summary["p99_us"] / 1000,
    )
