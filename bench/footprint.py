"""Measure the sidecar's memory and CPU, idle and under load, to size its Kubernetes resources.

Starts the Genesys simulator and the real proxy (`genesys-token-proxy serve`, file credentials)
as separate processes, then reads the proxy's RSS and CPU time from /proc: once idle, once while a
bounded number of requests for many tenants go through it.

    python bench/footprint.py [--tenants 50] [--requests 20000] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import yaml

TICKS = os.sysconf("SC_CLK_TCK")


def find_free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mib(pid: int) -> float:
    """Resident set size of `pid` in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time `pid` has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def wait_ready(url: str, deadline: float = 30.0) -> None:
    async with aiohttp.ClientSession() as session:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} never became ready")


async def load(base: str, tenants: list[str], total: int, concurrency: int) -> int:
    """Send `total` GETs spread over `tenants`; returns how many answered 200."""
    ok = 0
    counter = iter(range(total))
    async with aiohttp.ClientSession() as session:

        async def worker() -> None:
            nonlocal ok
            for i in counter:
                headers = {"X-Tenant-ID": tenants[i % len(tenants)]}
                url = f"{base}/api/v2/organizations/me"
                async with session.get(url, headers=headers) as response:
                    body = await response.read()
                    ok += response.status == 200
                    if response.status != 200 and ok == 0:
                        print(f"{response.status} {body[:200]!r}", file=sys.stderr)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=50)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    args = parser.parse_args()

    sim_port, port, admin_port = find_free_port(), find_free_port(), find_free_port()
    tenants = [f"bench-{i:03d}" for i in range(args.tenants)]
    client_secret = secrets.token_urlsafe(24)  # made up per run; only this simulator knows it
    clients = [f"--client=bench-client-{t}:{client_secret}:mypurecloud.ie" for t in tenants]
    with tempfile.TemporaryDirectory() as tmp:
        creds = Path(tmp) / "tenants.yaml"
        creds.write_text(
            yaml.safe_dump(
                {
                    t: {
                        "client_id": f"bench-client-{t}",
                        "client_secret": client_secret,
                        "region": "eu-west-1",
                    }
                    for t in tenants
                }
            )
        )
        sim_url = f"http://127.0.0.1:{sim_port}"
        config = Path(tmp) / "proxy.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "listen": {"port": port},
                    "admin": {"port": admin_port},
                    "credentials": {"source": "file", "file": str(creds)},
                    "genesys": {
                        "api_url": sim_url + "/api/{domain}",
                        "login_url": sim_url + "/login/{domain}",
                    },
                    "log": {"level": "warning"},
                }
            )
        )
        sim = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "proxy.simulator", f"--port={sim_port}", "--api-rpm=0"),
            *("--token-rpm=100000", *clients),
            stdout=subprocess.DEVNULL,
        )
        proxy = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", "serve", "--config", str(config)
        )
        try:
            await wait_ready(f"http://127.0.0.1:{admin_port}/readyz")
            base = f"http://127.0.0.1:{port}"
            print(f"started:      RSS {rss_mib(proxy.pid):6.1f} MiB")
            cpu0 = cpu_seconds(proxy.pid)
            await asyncio.sleep(args.idle_seconds)
            idle_cpu = (cpu_seconds(proxy.pid) - cpu0) / args.idle_seconds
            print(f"idle:         RSS {rss_mib(proxy.pid):6.1f} MiB, CPU {idle_cpu * 1000:.1f} m")
            await load(base, tenants, args.tenants * 2, 8)  # every tenant has a token
            print(f"warm:         RSS {rss_mib(proxy.pid):6.1f} MiB ({args.tenants} tenants)")
            cpu0, t0 = cpu_seconds(proxy.pid), time.monotonic()
            ok = await load(base, tenants, args.requests, args.concurrency)
            wall, cpu = time.monotonic() - t0, cpu_seconds(proxy.pid) - cpu0
            print(
                f"loaded:       RSS {rss_mib(proxy.pid):6.1f} MiB after {ok}/{args.requests} OK,"
                f" {args.requests / wall:.0f} req/s, CPU {cpu / wall * 1000:.0f} m,"
                f" {cpu / args.requests * 1000:.2f} CPU-ms per request"
            )
        finally:
            for process in (proxy, sim):
                process.terminate()
                await process.wait()


if __name__ == "__main__":
    asyncio.run(main())
