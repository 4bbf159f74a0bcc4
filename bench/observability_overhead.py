"""What the metrics and the access log cost per proxied request.

    python bench/observability_overhead.py [--iterations N] [--requests N]

All figures are CPU time of this process (steadier than wall time on a shared machine).

Part 1, in isolation, best of 5 runs, microseconds per request: the hooks one forwarded request
triggers (a cache hit, an upstream answer with rate-limit headers, the finished request), the
access-log line in both formats as the writer thread formats it, the same line through
`logging` (how 0.1 wrote it, on the request path; to /dev/null: a busy stderr would cost more),
and for comparison what one prometheus_client `.labels().inc()` costs.

Part 2, end to end, best of 8 alternating rounds: sequential GETs through the real proxy (file
credentials) to the Genesys simulator, all on one event loop, with the access log on (JSON) and
off; the difference is what the log line costs a whole request (its writer thread included:
process CPU counts every thread).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import yaml
from prometheus_client import CollectorRegistry, Counter

from proxy.app import ACCESS_LOG
from proxy.config import parse_config
from proxy.ops.access_log import json_line, redact_target, text_line
from proxy.ops.logs import JsonFormatter, TextFormatter
from proxy.ops.metrics import Metrics
from proxy.server import Server
from proxy.simulator import GenesysSimulator

HEADERS = {
    "inin-ratelimit-allowed": "300",
    "inin-ratelimit-count": "17",
    "inin-ratelimit-reset": "42",
}
TARGET = "/api/v2/analytics/conversations/details?pageSize=25&interval=2026-11-01/2026-11-02"


def best_of(runs: int, iterations: int, body: Callable[[], None]) -> float:
    """Microseconds per call of `body`, best of `runs`."""
    best = float("inf")
    for _ in range(runs):
        started = time.process_time_ns()
        for _ in range(iterations):
            body()
        best = min(best, (time.process_time_ns() - started) / iterations / 1000)
    return best


async def end_to_end(requests: int, rounds: int = 8) -> list[tuple[str, float]]:
    """Mean microseconds per proxied GET, with the access log on and off."""
    sim = GenesysSimulator(api_requests_per_minute=None)
    client_secret = secrets.token_urlsafe(24)  # made up per run; only this simulator knows it
    sim.add_client("bench-client", client_secret, domain="aps1.pure.cloud")
    devnull = open(os.devnull, "w")  # noqa: SIM115, ASYNC230 (before anything is served)
    stderr, sys.stderr = sys.stderr, devnull  # where the access log's writer writes
    rows = []
    async with sim.running():
        with tempfile.TemporaryDirectory() as tmp:
            records = Path(tmp) / "tenants.yaml"
            record = {
                "client_id": "bench-client",
                "client_secret": client_secret,
                "region": "ap-south-1",
            }
            records.write_text(yaml.safe_dump({"bench": record}), encoding="utf-8")
            config = parse_config(
                {
                    "listen": {"port": 0},
                    "admin": {"port": 0},
                    "credentials": {"source": "file", "file": str(records)},
                    "genesys": {
                        "api_url": sim.api_url_template,
                        "login_url": sim.login_url_template,
                    },
                    "log": {"format": "json"},
                }
            )
            server = Server(config)
            access = server.proxy_app[ACCESS_LOG]
            await server.startup()
            try:
                url = f"http://127.0.0.1:{server.proxy_port}/api/v2/organizations/me"
                async with aiohttp.ClientSession() as session:
                    headers = {"X-Tenant-ID": "bench"}
                    for _ in range(200):  # warm up: the token, the connections
                        async with session.get(url, headers=headers) as response:
                            await response.read()
                    # Alternating rounds, best of each: other load on the machine comes and goes.
                    best = {True: float("inf"), False: float("inf")}
                    for _ in range(rounds):
                        for enabled in (True, False):
                            access.enabled = enabled
                            started = time.process_time_ns()
                            for _ in range(requests):
                                async with session.get(url, headers=headers) as response:
                                    await response.read()
                            access.flush()  # its lines' cost counts in this round
                            elapsed = (time.process_time_ns() - started) / requests / 1000
                            best[enabled] = min(best[enabled], elapsed)
                    rows.append(("access log on (json)", best[True]))
                    rows.append(("access log off", best[False]))
            finally:
                await server.shutdown()
    sys.stderr = stderr
    devnull.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
    n = args.iterations

    metrics = Metrics(CollectorRegistry())
    for tenant in (f"tenant-{i}" for i in range(100)):
        metrics.token_fetch(tenant, "success")

    def hooks() -> None:
        metrics.request_started()
        metrics.cache_lookup(hit=True)
        metrics.upstream_answered("tenant-7", HEADERS, 0.042)
        metrics.request_finished("tenant-7", "GET", 200, 0.043, failed=False)

    # What one prometheus_client counter update costs, for comparison with the hooks above.
    uncached = Counter("reference", "", ["tenant", "method", "status"], registry=None)

    def labels_lookup() -> None:
        uncached.labels("tenant-7", "GET", "200").inc()

    logger = logging.getLogger("bench.access")
    logger.propagate = False
    devnull = open(os.devnull, "w")  # noqa: SIM115
    handler = logging.StreamHandler(devnull)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    fields = {
        "tenant": "tenant-7",
        "method": "GET",
        "path": TARGET,
        "status": 200,
        "upstream_status": 200,
        "duration_ms": 43.1,
        "correlation_id": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
        "error": None,
    }

    def log_line() -> None:
        logger.info("request", extra=fields)

    rows = [("metric hooks of one forwarded request", best_of(5, n, hooks))]
    rows.append(("  vs. one prometheus_client .labels().inc()", best_of(5, n, labels_lookup)))
    rows.append(
        ("redact_target (query with 2 params)", best_of(5, n, lambda: redact_target(TARGET)))
    )
    handler.setFormatter(TextFormatter())
    rows.append(("logging's access line (0.1), text", best_of(5, n // 4, log_line)))
    handler.setFormatter(JsonFormatter())
    rows.append(("logging's access line (0.1), json", best_of(5, n // 4, log_line)))
    logger.setLevel(logging.WARNING)
    rows.append(("access-log line, level warning (off)", best_of(5, n, log_line)))
    devnull.close()
    entry = (
        time.time(),
        "tenant-7",
        "GET",
        TARGET,
        200,
        200,
        0.0431,
        fields["correlation_id"],
        None,
    )
    rows.append(
        ("access line formatted by the writer, text", best_of(5, n // 4, lambda: text_line(entry)))
    )
    rows.append(
        ("access line formatted by the writer, json", best_of(5, n // 4, lambda: json_line(entry)))
    )

    print(f"{'in isolation, per request':<42} µs")
    for name, micros in rows:
        print(f"{name:<42} {micros:6.2f}")
    print(f"\n{'end to end, mean per request':<42} µs")
    for name, micros in asyncio.run(end_to_end(args.requests)):
        print(f"{name:<42} {micros:6.0f}")


if __name__ == "__main__":
    main()
