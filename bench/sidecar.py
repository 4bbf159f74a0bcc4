"""The side-by-side benchmark: direct to a fast upstream, through nginx, a plain aiohttp
pass-through and the proxy.

One run starts, on loopback: nginx as the upstream (a small JSON answer), nginx as a proxy
setting a static Authorization header (the practical limit), a plain aiohttp pass-through on
uvloop with a static header (`bench.passthrough`: the framework's own cost), and
genesys-token-proxy with its tenant in a real OpenBao and its login served by the Genesys
simulator. Each path gets the same wrk load; what differs is what stands between wrk and the
upstream. Per path it measures requests/s at a fixed connection count, CPU µs per request of the
in-between processes (from /proc), latency at one connection (the added latency, without
queueing) and resident memory (anonymous and file-backed, idle and after the load). The
proxy / pass-through ratios are taken within each run, so load from elsewhere on the machine
hits both alike.
"""

from __future__ import annotations

import json
import secrets
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import report
from bench.procs import BenchError, Resident, cpu_seconds, process_tree, resident
from bench.services import (
    UPSTREAM_BODY,
    Service,
    Simulator,
    http_get,
    nginx_proxy,
    nginx_upstream,
    openbao,
    passthrough,
    simulator,
    token_proxy,
)
from bench.tools import require_programs
from bench.wrk import WrkResult, run_wrk, write_script

TENANT = "bench"
REGION = "ap-south-1"
DOMAIN = "aps1.pure.cloud"
CLIENT_ID = "bench-client"
REQUEST_PATH = "/api/v2/organizations/me"
HEADERS = {"X-Tenant-ID": TENANT}
PATHS = ("direct", "nginx", "passthrough", "proxy")
LABELS = {
    "direct": "direct",
    "nginx": "nginx (static header)",
    "passthrough": "aiohttp pass-through",
    "proxy": "genesys-token-proxy",
}
WARMUP_SECONDS = 1.0
# Issue 15's targets for the proxy, measured against the pass-through and direct in the same run.
TARGET_CPU_VS_PASSTHROUGH = 1.1
TARGET_ADDED_P50_MS = 0.25
TARGET_ADDED_P99_MS = 0.6
TARGET_IDLE_RSS_MB = 45.0


@dataclass(frozen=True)
class Settings:
    duration: float
    connections: int
    threads: int
    runs: int


@dataclass(frozen=True)
class Target:
    """One path under test: where wrk sends requests and whose CPU the path costs."""

    name: str
    url: str
    pids: list[int]  # the in-between processes; empty for direct
    idle: Resident | None = None  # memory after start and one answered request


@dataclass(frozen=True)
class Sample:
    """One path measured once."""

    rps: float
    cpu_us: float | None  # CPU µs per request of the in-between processes
    upstream_cpu_us: float  # the upstream's, the same on every path if the load is the same
    p50_ms: float
    p99_ms: float
    rss_mb: float | None  # after the load
    rss_anon_mb: float | None
    rss_file_mb: float | None
    idle_rss_mb: float | None
    idle_rss_anon_mb: float | None
    idle_rss_file_mb: float | None


@dataclass(frozen=True)
class Rig:
    """Everything running: the three paths and the upstream they all end at."""

    targets: list[Target]
    upstream_pids: list[int]
    wrk: str
    script: Path
    simulator: Simulator

    def target(self, name: str) -> Target:
        return next(target for target in self.targets if target.name == name)


@dataclass(frozen=True)
class StandIns:
    """Genesys and Vault stand-ins for the bench tenant, and the proxy config that uses them."""

    upstream: Service
    simulator: Simulator
    config: dict[str, Any]


def genesys_stand_ins(stack: ExitStack, nginx: str, workdir: Path) -> StandIns:
    """nginx as Genesys' API, OpenBao holding the bench tenant, the simulator as its login service.

    The client secret is made up per run: only this run's simulator knows it.
    """
    upstream = stack.enter_context(nginx_upstream(nginx, workdir / "upstream"))
    bao = stack.enter_context(openbao(workdir / "openbao"))
    secret = secrets.token_urlsafe(24)
    bao.put_tenants({TENANT: {"client_id": CLIENT_ID, "client_secret": secret, "region": REGION}})
    client = {"client_id": CLIENT_ID, "client_secret": secret, "domain": DOMAIN}
    sim = stack.enter_context(simulator(workdir / "simulator", [client]))
    # Only what the setup needs: every other key keeps the default a user would have.
    config = {
        "vault": {"address": bao.address, "auth": {"token": bao.root_token}},
        "genesys": {"api_url": upstream.url + "/api/{domain}", "login_url": sim.login_url_template},
    }
    return StandIns(upstream, sim, config)


@contextmanager
def rig(workdir: Path, programs: dict[str, str]) -> Iterator[Rig]:
    """Start the upstream, nginx as a proxy, OpenBao, the simulator and the proxy; check answers."""
    with ExitStack() as stack:
        stand_ins = genesys_stand_ins(stack, programs["nginx"], workdir)
        upstream, sim = stand_ins.upstream, stand_ins.simulator
        limit = stack.enter_context(
            nginx_proxy(programs["nginx"], workdir / "nginx-proxy", upstream.port, DOMAIN)
        )
        proxy = stack.enter_context(token_proxy(workdir / "proxy", stand_ins.config))
        plain = stack.enter_context(
            passthrough(workdir / "passthrough", f"{upstream.url}/api/{DOMAIN}")
        )
        started = [
            Target("direct", f"{upstream.url}/api/{DOMAIN}{REQUEST_PATH}", []),
            Target("nginx", limit.url + REQUEST_PATH, process_tree(limit.child.pid)),
            Target("passthrough", plain.url + REQUEST_PATH, process_tree(plain.child.pid)),
            Target(
                "proxy", proxy.service.url + REQUEST_PATH, process_tree(proxy.service.child.pid)
            ),
        ]
        targets = []
        for target in started:
            _check_answers(target)
            idle = resident(target.pids) if target.pids else None
            targets.append(Target(target.name, target.url, target.pids, idle))
        yield Rig(
            targets, process_tree(upstream.child.pid), programs["wrk"], write_script(workdir), sim
        )


def run(settings: Settings, *, install: bool, workdir: Path) -> dict[str, Any]:
    """Start everything, measure every path `settings.runs` times, print and return the summary."""
    programs = require_programs(["nginx", "wrk"], install=install)
    info = {"machine": report.machine(), "software": report.software(programs)}
    with rig(workdir, programs) as running:
        runs: list[dict[str, Sample]] = []
        for number in range(1, settings.runs + 1):
            print(f"bench: run {number}/{settings.runs}", file=sys.stderr, flush=True)
            runs.append({t.name: _measure(t, running, settings) for t in running.targets})
        # Should be 1: a figure that includes token fetches would measure the cold path.
        info["token_fetches"] = running.simulator.counters()["tokens_issued"]
    summary = _summarise(runs, settings, info)
    print(_table(summary))
    print(json.dumps(summary, separators=(",", ":")))
    return summary


def load(
    running: Rig, target: Target, *, connections: int, threads: int, seconds: float
) -> WrkResult:
    """wrk against one path, with the tenant header every path gets."""
    return run_wrk(
        running.wrk,
        running.script,
        target.url,
        connections=connections,
        threads=threads,
        seconds=seconds,
        headers=HEADERS,
    )


def _check_answers(target: Target) -> None:
    status, body = http_get(target.url, HEADERS)
    if status != 200 or body.decode() != UPSTREAM_BODY:
        raise BenchError(f"{target.name} answered {status} {body[:200]!r}, not the upstream's body")


def _measure(target: Target, running: Rig, settings: Settings) -> Sample:
    def busy(seconds: float) -> WrkResult:
        return load(
            running,
            target,
            connections=settings.connections,
            threads=settings.threads,
            seconds=seconds,
        )

    busy(WARMUP_SECONDS)
    upstream = running.upstream_pids
    before, upstream_before = cpu_seconds(target.pids), cpu_seconds(upstream)
    throughput = busy(settings.duration)
    spent = cpu_seconds(target.pids) - before
    upstream_spent = cpu_seconds(upstream) - upstream_before
    latency = load(running, target, connections=1, threads=1, seconds=settings.duration)
    memory = resident(target.pids) if target.pids else None
    idle = target.idle
    return Sample(
        rps=throughput.requests_per_second,
        cpu_us=spent / throughput.requests * 1e6 if target.pids else None,
        upstream_cpu_us=upstream_spent / throughput.requests * 1e6,
        p50_ms=latency.p50_ms,
        p99_ms=latency.p99_ms,
        rss_mb=memory.total if memory else None,
        rss_anon_mb=memory.anon if memory else None,
        rss_file_mb=memory.file if memory else None,
        idle_rss_mb=idle.total if idle else None,
        idle_rss_anon_mb=idle.anon if idle else None,
        idle_rss_file_mb=idle.file if idle else None,
    )


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def _summarise(
    runs: list[dict[str, Sample]], settings: Settings, info: dict[str, Any]
) -> dict[str, Any]:
    """Medians over runs per path; ratios are taken within each run (noise hits its paths alike)."""
    paths: dict[str, dict[str, float | None]] = {}
    for name in PATHS:
        samples = [asdict(run[name]) for run in runs]
        paths[name] = {key: report.median([s[key] for s in samples]) for key in samples[0]}
        direct = [run["direct"] for run in runs]
        paths[name]["added_p50_ms"] = report.median(
            [run[name].p50_ms - d.p50_ms for run, d in zip(runs, direct, strict=True)]
        )
        paths[name]["added_p99_ms"] = report.median(
            [run[name].p99_ms - d.p99_ms for run, d in zip(runs, direct, strict=True)]
        )
        cpu = paths[name]["cpu_us"]
        paths[name]["vcpu_per_1k_rps"] = None if cpu is None else cpu / 1000

    def per_run(fn: Callable[[dict[str, Sample]], float | None]) -> float | None:
        return report.median([fn(run) for run in runs])

    ratios = {
        "proxy_vs_passthrough_cpu": per_run(
            lambda r: _ratio(r["proxy"].cpu_us, r["passthrough"].cpu_us)
        ),
        "proxy_vs_passthrough_rps": per_run(lambda r: _ratio(r["proxy"].rps, r["passthrough"].rps)),
        "proxy_vs_passthrough_added_p50": per_run(
            lambda r: _ratio(
                r["proxy"].p50_ms - r["direct"].p50_ms, r["passthrough"].p50_ms - r["direct"].p50_ms
            )
        ),
        "passthrough_vs_nginx_cpu": per_run(
            lambda r: _ratio(r["passthrough"].cpu_us, r["nginx"].cpu_us)
        ),
        "proxy_vs_nginx_cpu": per_run(lambda r: _ratio(r["proxy"].cpu_us, r["nginx"].cpu_us)),
        "proxy_vs_nginx_rps": per_run(lambda r: _ratio(r["proxy"].rps, r["nginx"].rps)),
        "proxy_vs_nginx_p50": per_run(lambda r: _ratio(r["proxy"].p50_ms, r["nginx"].p50_ms)),
        "proxy_vs_direct_rps": per_run(lambda r: _ratio(r["proxy"].rps, r["direct"].rps)),
        "proxy_vs_direct_p50": per_run(lambda r: _ratio(r["proxy"].p50_ms, r["direct"].p50_ms)),
        "nginx_vs_direct_rps": per_run(lambda r: _ratio(r["nginx"].rps, r["direct"].rps)),
    }
    proxy = paths["proxy"]
    cpu_ratio = ratios["proxy_vs_passthrough_cpu"]
    idle_rss = proxy["idle_rss_mb"]
    targets = {
        "cpu_le_1.1x_passthrough": cpu_ratio is not None and cpu_ratio <= TARGET_CPU_VS_PASSTHROUGH,
        "added_p50_le_0.25ms": (proxy["added_p50_ms"] or 0) <= TARGET_ADDED_P50_MS,
        "added_p99_le_0.6ms": (proxy["added_p99_ms"] or 0) <= TARGET_ADDED_P99_MS,
        "idle_rss_le_45mb": idle_rss is not None and idle_rss <= TARGET_IDLE_RSS_MB,
    }
    return {
        "bench": "sidecar",
        "settings": asdict(settings),
        **info,
        "paths": paths,
        "ratios": ratios,
        "targets_met": targets,
        "runs_raw": [{name: asdict(s) for name, s in run.items()} for run in runs],
    }


def _table(summary: dict[str, Any]) -> str:
    settings = summary["settings"]
    header = [
        "path",
        "req/s",
        "CPU µs/req",
        "x pass-through",
        "p50 ms",
        "p99 ms",
        "+p50 ms",
        "+p99 ms",
        "idle RSS MB (anon+file)",
        "loaded RSS MB",
        "upstream µs/req",
    ]
    rows = []
    for name in PATHS:
        p = summary["paths"][name]
        added = name != "direct"
        versus = None
        if p["cpu_us"] is not None and summary["paths"]["passthrough"]["cpu_us"]:
            versus = p["cpu_us"] / summary["paths"]["passthrough"]["cpu_us"]
        idle = "—"
        if p["idle_rss_mb"] is not None:
            idle = (
                f"{p['idle_rss_mb']:.1f} ({p['idle_rss_anon_mb']:.1f}+{p['idle_rss_file_mb']:.1f})"
            )
        rows.append(
            [
                LABELS[name],
                report.fmt(p["rps"], 0),
                report.fmt(p["cpu_us"]),
                report.fmt(versus, 2),
                report.fmt(p["p50_ms"], 3),
                report.fmt(p["p99_ms"], 3),
                report.fmt(p["added_p50_ms"] if added else None, 3),
                report.fmt(p["added_p99_ms"] if added else None, 3),
                idle,
                report.fmt(p["rss_mb"]),
                report.fmt(p["upstream_cpu_us"]),
            ]
        )
    r = summary["ratios"]
    met = summary["targets_met"]
    lines = [
        f"medians of {settings['runs']} runs; {settings['connections']} connections, "
        f"{settings['threads']} wrk thread(s), {settings['duration']:g} s per measurement; "
        f"p50/p99 at 1 connection; + is over direct; load average "
        f"{summary['machine']['loadavg_1m']} at the start",
        report.table(header, rows),
        f"proxy vs pass-through (median of per-run ratios): CPU/req "
        f"{report.fmt(r['proxy_vs_passthrough_cpu'], 2)}x, "
        f"req/s {report.fmt(r['proxy_vs_passthrough_rps'], 2)}x, "
        f"added p50 {report.fmt(r['proxy_vs_passthrough_added_p50'], 2)}x; "
        f"pass-through vs nginx CPU/req {report.fmt(r['passthrough_vs_nginx_cpu'], 2)}x; "
        f"proxy vs nginx: CPU/req {report.fmt(r['proxy_vs_nginx_cpu'], 2)}x, "
        f"req/s {report.fmt(r['proxy_vs_nginx_rps'], 2)}x",
        "targets: " + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in met.items()),
    ]
    return "\n".join(lines)
