"""Rate limits: one burst of three times a token's budget, passed through, absorbed, or pooled.

The simulator (its own process) gives each token `budget` API requests per `window` seconds, as
Genesys gives 300 per 60 s. The app sends `factor` times the budget at once, on as many
connections, to a proxy in one of three modes:

    pass-through  genesys.rate_limit.max_wait: 0         (what every other sidecar does)
    absorbed      the defaults (max_wait 5, one token)
    pool          tokens_per_tenant: 3

Per mode: the answers the app got (200, the proxy's own 429 rate_limited, Genesys' 429), the
429s Genesys sent (each one a request the app or the proxy wasted), and the p50/p99 of the app's
latency, medians over `runs` bursts. Every burst uses a tenant of its own, so its tokens start
with full windows.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench import report
from bench.services import simulator, token_proxy

REQUEST_PATH = "/api/v2/organizations/me"
TENANT_HEADER = "X-Tenant-ID"
DOMAIN, REGION = "mypurecloud.ie", "eu-west-1"
MODES: dict[str, dict[str, float]] = {
    "pass-through": {"max_wait": 0},
    "absorbed": {},
    "pool": {"tokens_per_tenant": 3},
}


@dataclass(frozen=True)
class Settings:
    budget: int
    windows: tuple[float, ...]
    factor: int
    runs: int


@dataclass(frozen=True)
class Answer:
    status: int
    proxy_error: str | None
    seconds: float


@dataclass(frozen=True)
class BurstResult:
    """What one burst got back, and what Genesys sent meanwhile."""

    ok: int
    rate_limited: int  # the proxy's own 429 rate_limited: nothing reached Genesys
    genesys_429_to_app: int
    other: dict[int, int]
    genesys_429_sent: int
    genesys_requests: int
    p50_ms: float
    p99_ms: float
    seconds: float


async def burst(base_url: str, tenant: str, count: int) -> tuple[list[Answer], float]:
    """`count` requests for `tenant`, all at once, each on its own connection."""
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.perf_counter()
        answers = await asyncio.gather(*(_get(session, base_url, tenant) for _ in range(count)))
        seconds = time.perf_counter() - started
    return answers, seconds


async def _get(session: aiohttp.ClientSession, base_url: str, tenant: str) -> Answer:
    started = time.perf_counter()
    async with session.get(
        base_url.rstrip("/") + REQUEST_PATH, headers={TENANT_HEADER: tenant}
    ) as answer:
        await answer.read()
        return Answer(
            answer.status, answer.headers.get("X-Proxy-Error"), time.perf_counter() - started
        )


def summarize(
    answers: list[Answer], seconds: float, genesys_429s: int, genesys_requests: int
) -> BurstResult:
    statuses = Counter(answer.status for answer in answers)
    ours = sum(1 for a in answers if a.status == 429 and a.proxy_error == "rate_limited")
    latencies = sorted(answer.seconds * 1000 for answer in answers)
    percentiles = statistics.quantiles(latencies, n=100, method="inclusive")
    other = {s: n for s, n in statuses.items() if s not in (200, 429)}
    return BurstResult(
        ok=statuses[200],
        rate_limited=ours,
        genesys_429_to_app=statuses[429] - ours,
        other=other,
        genesys_429_sent=genesys_429s,
        genesys_requests=genesys_requests,
        p50_ms=statistics.median(latencies),
        p99_ms=percentiles[98],
        seconds=seconds,
    )


def run(settings: Settings, *, workdir: Path) -> int:
    """Every window, every mode, `runs` bursts; print a table per window and a JSON line."""
    result: dict[str, Any] = {"bench": "ratelimit", "settings": asdict(settings)}
    result["machine"] = report.machine()
    result["windows"] = {}
    for window in settings.windows:
        medians = _one_window(settings, window, workdir / f"window-{window:g}")
        result["windows"][f"{window:g}"] = medians
        _print_table(settings, window, medians)
    result["software"] = report.software({})
    print(json.dumps(result, separators=(",", ":")))
    return 0


def _one_window(settings: Settings, window: float, work: Path) -> dict[str, dict[str, Any]]:
    tenants = {mode: [f"{_slug(mode)}-{n}" for n in range(settings.runs)] for mode in MODES}
    everyone = [tenant for names in tenants.values() for tenant in names]
    clients = [
        {"client_id": f"client-{t}", "client_secret": f"fake-secret-{t}", "domain": DOMAIN}
        for t in everyone
    ]
    records = {
        t: {"client_id": f"client-{t}", "client_secret": f"fake-secret-{t}", "region": REGION}
        for t in everyone
    }
    work.mkdir(parents=True)
    credentials = work / "tenants.yaml"
    credentials.write_text(yaml.safe_dump(records), encoding="utf-8")
    limits = ["--api-limit", str(settings.budget), "--api-window", str(window)]
    count = settings.budget * settings.factor
    medians: dict[str, dict[str, Any]] = {}
    with ExitStack() as stack:
        sim = stack.enter_context(simulator(work / "simulator", clients, limits))
        for mode, overrides in MODES.items():
            config = {
                "credentials": {"source": "file", "file": str(credentials)},
                "genesys": {
                    "api_url": sim.api_url_template,
                    "login_url": sim.login_url_template,
                    "rate_limit": overrides,
                },
                "log": {"access": False},
            }
            with token_proxy(work / _slug(mode), config) as proxy:
                runs = []
                for tenant in tenants[mode]:
                    print(
                        f"bench: {mode}, {window:g} s window: {count} requests at once",
                        file=sys.stderr,
                        flush=True,
                    )
                    before = sim.counters()
                    answers, seconds = asyncio.run(burst(proxy.service.url, tenant, count))
                    after = sim.counters()
                    runs.append(
                        summarize(
                            answers,
                            seconds,
                            after["rate_limited"] - before["rate_limited"],
                            after["api_requests"] - before["api_requests"],
                        )
                    )
            medians[mode] = _medians(runs)
    return medians


def _medians(runs: list[BurstResult]) -> dict[str, Any]:
    fields = (
        "ok",
        "rate_limited",
        "genesys_429_to_app",
        "genesys_429_sent",
        "genesys_requests",
        "p50_ms",
        "p99_ms",
        "seconds",
    )
    summary: dict[str, Any] = {
        name: report.median([float(getattr(run, name)) for run in runs]) for name in fields
    }
    summary["other"] = [run.other for run in runs if run.other]
    summary["runs"] = [asdict(run) for run in runs]
    return summary


def _print_table(settings: Settings, window: float, medians: dict[str, dict[str, Any]]) -> None:
    count = settings.budget * settings.factor
    print(
        f"\n{count} requests at once; Genesys allows {settings.budget} per token per "
        f"{window:g} s; medians of {settings.runs} runs"
    )
    header = (
        "mode",
        "app 200",
        "app 429 (proxy)",
        "app 429 (Genesys)",
        "429s Genesys sent",
        "p50 ms",
        "p99 ms",
        "burst s",
    )
    rows = []
    for mode, m in medians.items():
        rows.append(
            (
                mode,
                report.fmt(m["ok"], 0),
                report.fmt(m["rate_limited"], 0),
                report.fmt(m["genesys_429_to_app"], 0),
                report.fmt(m["genesys_429_sent"], 0),
                report.fmt(m["p50_ms"], 0),
                report.fmt(m["p99_ms"], 0),
                report.fmt(m["seconds"], 2),
            )
        )
    print(report.table(header, rows))
    for mode, m in medians.items():
        if m["other"]:
            print(f"  {mode}: other statuses {m['other']}")


def _slug(mode: str) -> str:
    return mode.replace("-", "")
