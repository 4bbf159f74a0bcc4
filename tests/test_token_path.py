"""The token path under a cold burst: one Vault read and one token fetch per tenant, counted.

The same burst as `bench/run token-path` (bench/token_path.py), with counts taken where the
work lands: OpenBao's audit log and the simulator's login service. Counts only, never times.
"""

from __future__ import annotations

import json
import resource
from collections import Counter
from typing import Any

from bench.token_path import cold_burst
from tests.conftest import OpenBao, ProxyHarness

TENANTS = 100
REQUESTS_PER_TENANT = 10


def vault_reads(openbao: OpenBao, paths: set[str]) -> Counter[str]:
    """Reads of each of `paths` in OpenBao's audit log, in one pass over it."""
    reads: Counter[str] = Counter()
    with openbao.audit_path.open(encoding="utf-8") as audit:
        for line in audit:
            entry: dict[str, Any] = json.loads(line)
            request = entry.get("request", {})
            if (
                entry.get("type") == "request"
                and request.get("operation") == "read"
                and request.get("path") in paths
            ):
                reads[request["path"]] += 1
    return reads


def raise_open_files_limit(wanted: int = 8192) -> None:
    """Client, proxy and simulator share this process: 1,000 connections need ~3,000 files."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


async def test_cold_burst_over_many_tenants_reads_vault_and_fetches_a_token_once_per_tenant(
    harness: ProxyHarness, openbao: OpenBao
) -> None:
    raise_open_files_limit()
    tenants = [harness.add_tenant(f"burst{index:03d}") for index in range(TENANTS)]
    await harness.start()

    burst = await cold_burst(harness.base_url, [t.id for t in tenants], REQUESTS_PER_TENANT)

    assert burst.statuses == {200: TENANTS * REQUESTS_PER_TENANT}
    assert {t.client_id: harness.sim.token_requests(t.client_id) for t in tenants} == {
        t.client_id: 1 for t in tenants
    }
    assert harness.sim.token_requests() == TENANTS
    paths = {f"secret/data/genesys/tenants/{t.id}" for t in tenants}
    assert vault_reads(openbao, paths) == Counter(dict.fromkeys(paths, 1))
    assert harness.credentials.reads == TENANTS
    # Every request reached the API with its own tenant's token.
    assert harness.sim.api_requests() == TENANTS * REQUESTS_PER_TENANT
    assert {t.client_id: harness.sim.api_requests(t.client_id) for t in tenants} == {
        t.client_id: REQUESTS_PER_TENANT for t in tenants
    }
