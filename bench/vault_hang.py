"""A hung Vault and a burst of cold tenants: what each request and `/readyz` wait.

    python -m bench.vault_hang [--tenants 64] [--vault-timeout S] [--workdir DIR]

Starts OpenBao, the Genesys simulator and the proxy as processes (bench/services.py), serves one
tenant so it is cached, then freezes OpenBao with SIGSTOP and sends, all at once, one request
for each of `--tenants` uncached tenants, one for the cached tenant and one `GET /readyz`.
Prints how long each waited and what it got, then how many of the cold reads reached OpenBao
(its audit log, after SIGCONT), and how long after SIGCONT a new tenant was served again.
`--vault-timeout` sets `vault.timeout` (left out, the proxy's default applies; a proxy from
before that key existed must be run without it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp

from bench.services import openbao, simulator, token_proxy
from bench.token_path import DOMAIN, REGION, client_of, tenants_named

ME = "/api/v2/organizations/me"


async def timed_get(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[float, int, str]:
    """(seconds, status, X-Proxy-Error or the readiness body) of one GET."""
    started = time.monotonic()
    async with http.get(url, headers=headers or {}) as response:
        body = await response.text()
        detail = response.headers.get("X-Proxy-Error", "") or body.strip()
        return time.monotonic() - started, response.status, detail


async def burst(proxy_url: str, admin_url: str, cold: list[str], cached: str) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
        cold_requests = [
            timed_get(http, proxy_url + ME, {"X-Tenant-ID": tenant}) for tenant in cold
        ]
        cached_request = timed_get(http, proxy_url + ME, {"X-Tenant-ID": cached})
        ready_request = timed_get(http, admin_url + "/readyz")
        results = await asyncio.gather(*cold_requests, cached_request, ready_request)
        # Vault is known down now (or still hung): what a second wave of cold requests waits.
        second = await asyncio.gather(
            *(timed_get(http, proxy_url + ME, {"X-Tenant-ID": t}) for t in cold[:16])
        )
    cold_results, (cached_result, ready_result) = results[:-2], results[-2:]
    waits = [seconds for seconds, _, _ in cold_results]
    return {
        "cold_seconds": {
            "min": min(waits),
            "median": statistics.median(waits),
            "max": max(waits),
        },
        "cold_answers": dict(Counter(f"{status} {code}" for _, status, code in cold_results)),
        "second_wave_max_seconds": max(seconds for seconds, _, _ in second),
        "second_wave_answers": dict(Counter(f"{status} {code}" for _, status, code in second)),
        "cached_seconds": cached_result[0],
        "cached_status": cached_result[1],
        "readyz_seconds": ready_result[0],
        "readyz": f"{ready_result[1]} {ready_result[2]}",
    }


async def until_served(proxy_url: str, tenant: str, limit: float = 120.0) -> float:
    """Seconds until a request for `tenant` is answered 200."""
    started = time.monotonic()
    async with aiohttp.ClientSession() as http:
        while time.monotonic() - started < limit:
            _, status, _ = await timed_get(http, proxy_url + ME, {"X-Tenant-ID": tenant})
            if status == 200:
                return time.monotonic() - started
            await asyncio.sleep(0.05)
    return float("inf")


def run(tenants: int, vault_timeout: float | None, work: Path) -> dict[str, Any]:
    cold = tenants_named("cold-", tenants + 1)
    cold, newcomer = cold[:-1], cold[-1]
    cached = "cached-00000"
    names = [cached, newcomer, *cold]
    with ExitStack() as stack:
        bao = stack.enter_context(openbao(work / "openbao"))
        bao.put_tenants({t: {**client_of(t), "region": REGION} for t in names})
        clients = [{**client_of(t), "domain": DOMAIN} for t in names]
        sim = stack.enter_context(simulator(work / "simulator", clients))
        vault: dict[str, Any] = {"address": bao.address, "auth": {"token": bao.root_token}}
        if vault_timeout is not None:
            vault["timeout"] = vault_timeout
        config = {
            "genesys": {"api_url": sim.api_url_template, "login_url": sim.login_url_template},
            "vault": vault,
            "log": {"access": False},
        }
        proxy = stack.enter_context(token_proxy(work / "proxy", config))
        proxy_url = proxy.service.url
        admin_url = f"http://127.0.0.1:{proxy.admin_port}"
        asyncio.run(until_served(proxy_url, cached))
        os.kill(bao.child.pid, signal.SIGSTOP)
        try:
            result = asyncio.run(burst(proxy_url, admin_url, cold, cached))
        finally:
            os.kill(bao.child.pid, signal.SIGCONT)
        result["recovery_seconds"] = asyncio.run(until_served(proxy_url, newcomer))
        reads = bao.tenant_reads()
    result["cold_reads_reaching_openbao"] = sum(reads[t] for t in cold)
    result["tenants"] = tenants
    result["vault_timeout"] = vault_timeout
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=64)
    parser.add_argument("--vault-timeout", type=float, default=None)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-vault-hang-") as scratch:
        result = run(args.tenants, args.vault_timeout, args.workdir or Path(scratch))
    seconds = result["cold_seconds"]
    print(
        f"{result['tenants']} cold requests, Vault frozen: waited "
        f"{seconds['min']:.2f} / {seconds['median']:.2f} / {seconds['max']:.2f} s "
        f"(min / median / max), answers {result['cold_answers']}; "
        f"16 more after that waited at most {result['second_wave_max_seconds']:.2f} s "
        f"({result['second_wave_answers']}); cached tenant {result['cached_status']} in "
        f"{result['cached_seconds']:.3f} s; /readyz {result['readyz']} in "
        f"{result['readyz_seconds']:.3f} s; cold reads that reached OpenBao "
        f"{result['cold_reads_reaching_openbao']}; a new tenant served "
        f"{result['recovery_seconds']:.2f} s after SIGCONT",
        file=sys.stderr,
    )
    print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
