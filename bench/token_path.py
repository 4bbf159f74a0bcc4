"""The token path: cold requests over many tenants, and memory with many tenants cached.

A burst of `per_tenant` concurrent requests for each of `tenants` tenants, none of them seen
before, must cost exactly one Vault read and one token fetch per tenant (single-flight), counted
where they land: OpenBao's audit log and the simulator's login counter. Then the proxy's
resident memory once `memory_tenants` tenants' records and tokens are cached.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench import report
from bench.procs import BenchError, resident
from bench.services import OpenBao, openbao, simulator, token_proxy

REQUEST_PATH = "/api/v2/organizations/me"
TENANT_HEADER = "X-Tenant-ID"
DOMAIN, REGION = "mypurecloud.ie", "eu-west-1"
WARM_CONCURRENCY = 64


@dataclass(frozen=True)
class Settings:
    tenants: int
    per_tenant: int
    memory_tenants: int
    memory_source: str  # "vault" or "file"


@dataclass(frozen=True)
class BurstResult:
    """What a burst of requests got back, and how long the last answer took."""

    requests: int
    statuses: dict[int, int]
    seconds: float

    @property
    def all_ok(self) -> bool:
        return self.statuses == {200: self.requests}


async def cold_burst(base_url: str, tenants: Sequence[str], per_tenant: int) -> BurstResult:
    """`per_tenant` requests for every tenant, all sent at once on their own connections."""
    # Interleaved, so every tenant's requests are in flight together rather than one after another.
    order = [tenant for _ in range(per_tenant) for tenant in tenants]
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        statuses = await asyncio.gather(*(_get(session, base_url, t) for t in order))
        seconds = time.perf_counter() - started
    return BurstResult(len(order), dict(Counter(statuses)), seconds)


async def warm(base_url: str, tenants: Iterable[str], concurrency: int) -> BurstResult:
    """One request per tenant, `concurrency` at a time: fills the proxy's caches."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    gate = asyncio.Semaphore(concurrency)

    async def one(session: aiohttp.ClientSession, tenant: str) -> int:
        async with gate:
            return await _get(session, base_url, tenant)

    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        statuses = await asyncio.gather(*(one(session, t) for t in tenants))
        seconds = time.perf_counter() - started
    return BurstResult(len(statuses), dict(Counter(statuses)), seconds)


async def _get(session: aiohttp.ClientSession, base_url: str, tenant: str) -> int:
    async with session.get(
        base_url.rstrip("/") + REQUEST_PATH, headers={TENANT_HEADER: tenant}
    ) as answer:
        await answer.read()
        return answer.status


def tenants_named(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{index:05d}" for index in range(count)]


def client_of(tenant: str) -> dict[str, str]:
    """The simulator client of a benchmark tenant (obviously fake secret)."""
    return {"client_id": f"client-{tenant}", "client_secret": f"fake-secret-{tenant}"}


def run(settings: Settings, *, workdir: Path) -> int:
    """Run both measurements, print them and a JSON line; 1 if a count was not as expected."""
    result: dict[str, Any] = {"bench": "token-path", "settings": asdict(settings)}
    result["machine"] = report.machine()
    with openbao(workdir / "openbao") as bao:
        result["cold_burst"] = _cold_burst(bao, settings, workdir / "burst")
        if settings.memory_tenants:
            result["memory"] = _memory(bao, settings, workdir / "memory")
    burst = result["cold_burst"]
    print(
        f"cold burst: {burst['requests']} requests over {settings.tenants} tenants, "
        f"all answered in {burst['seconds']:.2f} s, statuses {burst['statuses']}; "
        f"token fetches {burst['token_fetches']} (expected {settings.tenants}), "
        f"Vault reads {burst['vault_reads']} (expected {settings.tenants}, "
        f"at most {burst['max_vault_reads_per_tenant']} per tenant)"
    )
    if "memory" in result:
        mem = result["memory"]
        print(
            f"memory: {mem['tenants']} tenants cached ({mem['source']} source, warmed in "
            f"{mem['warm_seconds']:.1f} s): RSS {mem['rss_mb']:.1f} MB "
            f"(anon {mem['rss_anon_mb']:.1f} + file {mem['rss_file_mb']:.1f}), idle "
            f"{mem['rss_idle_mb']:.1f} MB (anon {mem['rss_idle_anon_mb']:.1f} + file "
            f"{mem['rss_idle_file_mb']:.1f}), {mem['kb_per_tenant']:.2f} KB per tenant"
        )
    print(json.dumps(result, separators=(",", ":")))
    ok = burst["ok"] and result.get("memory", {}).get("ok", True)
    return 0 if ok else 1


def _cold_burst(bao: OpenBao, settings: Settings, work: Path) -> dict[str, Any]:
    tenants = tenants_named("burst-", settings.tenants)
    print(f"bench: storing {len(tenants)} tenants in OpenBao", file=sys.stderr, flush=True)
    bao.put_tenants({t: {**client_of(t), "region": REGION} for t in tenants})
    clients = [{**client_of(t), "domain": DOMAIN} for t in tenants]
    with ExitStack() as stack:
        sim = stack.enter_context(simulator(work / "simulator", clients))
        config = _proxy_config(sim.api_url_template, sim.login_url_template)
        config["vault"] = {"address": bao.address, "auth": {"token": bao.root_token}}
        proxy = stack.enter_context(token_proxy(work / "proxy", config))
        print(
            f"bench: {settings.per_tenant} concurrent cold requests for each tenant",
            file=sys.stderr,
            flush=True,
        )
        burst = asyncio.run(cold_burst(proxy.service.url, tenants, settings.per_tenant))
        fetches = sim.counters()["token_requests"]
    reads = bao.tenant_reads()
    ours = [reads[t] for t in tenants]
    return {
        **asdict(burst),
        "token_fetches": fetches,
        "vault_reads": sum(ours),
        "max_vault_reads_per_tenant": max(ours, default=0),
        "ok": burst.all_ok and fetches == len(tenants) and ours == [1] * len(tenants),
    }


def _memory(bao: OpenBao, settings: Settings, work: Path) -> dict[str, Any]:
    count = settings.memory_tenants
    tenants = tenants_named("mem-", count)
    records = {t: {**client_of(t), "region": REGION} for t in tenants}
    config = _proxy_config("", "")
    config["tenant"] = {"max_tenants": max(count, 10_000)}
    if settings.memory_source == "vault":
        print(f"bench: storing {count} tenants in OpenBao", file=sys.stderr, flush=True)
        bao.put_tenants(records)
        config["vault"] = {"address": bao.address, "auth": {"token": bao.root_token}}
    else:
        work.mkdir(parents=True)
        credentials = work / "tenants.yaml"
        credentials.write_text(yaml.safe_dump(records), encoding="utf-8")
        config["credentials"] = {"source": "file", "file": str(credentials)}
    clients = [{**client_of(t), "domain": DOMAIN} for t in tenants]
    with ExitStack() as stack:
        sim = stack.enter_context(simulator(work / "simulator", clients))
        config["genesys"] = _proxy_config(sim.api_url_template, sim.login_url_template)["genesys"]
        proxy = stack.enter_context(token_proxy(work / "proxy", config))
        pid = [proxy.service.child.pid]
        idle = resident(pid)
        print(f"bench: one request for each of {count} tenants", file=sys.stderr, flush=True)
        warmed = asyncio.run(warm(proxy.service.url, tenants, WARM_CONCURRENCY))
        cached = resident(pid)
        issued = sim.counters()["tokens_issued"]
    if not warmed.all_ok:
        raise BenchError(f"warming {count} tenants got statuses {warmed.statuses}")
    return {
        "tenants": count,
        "source": settings.memory_source,
        "warm_seconds": warmed.seconds,
        "tokens_issued": issued,
        "rss_idle_mb": idle.total,
        "rss_idle_anon_mb": idle.anon,
        "rss_idle_file_mb": idle.file,
        "rss_mb": cached.total,
        "rss_anon_mb": cached.anon,
        "rss_file_mb": cached.file,
        "kb_per_tenant": (cached.total - idle.total) * 1024 / count,
        "ok": issued == count,
    }


def _proxy_config(api_url: str, login_url: str) -> dict[str, Any]:
    return {"genesys": {"api_url": api_url, "login_url": login_url}}
