"""Measure the sidecar's memory and CPU, idle and under load, to size its Kubernetes resources.

Starts the Genesys simulator and the real proxy (`genesys-token-proxy serve`, file credentials)
as separate processes, then reads the proxy's RSS and CPU time from /proc: once idle, once while a
bounded number of requests for many tenants go through it. Resident memory is shown as
/proc/<pid>/status splits it: anonymous (the process's own heap and objects: what each pod pays),
file-backed (shared libraries and extension modules, which pods of one image on a node can share
through the page cache) and shared memory. For comparison, the idle memory of the plain aiohttp
pass-through (`bench.passthrough`: aiohttp and uvloop, nothing of the proxy's own).

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
REPO = Path(__file__).resolve().parent.parent


def find_free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def memory_mib(pid: int) -> dict[str, float]:
    """VmRSS and its parts RssAnon, RssFile, RssShmem of `pid`, in MiB."""
    found: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
            found[name] = int(value.split()[0]) / 1024
    if "VmRSS" not in found:
        raise RuntimeError(f"no VmRSS for pid {pid}")
    return found


def memory_text(pid: int) -> str:
    """`RSS 45.9 MiB (anon 30.4, file 15.6, shmem 0.0)`."""
    m = memory_mib(pid)
    return (
        f"RSS {m['VmRSS']:6.1f} MiB (anon {m.get('RssAnon', 0):5.1f}, "
        f"file {m.get('RssFile', 0):5.1f}, shmem {m.get('RssShmem', 0):4.1f})"
    )


async def passthrough_idle(upstream: str, seconds: float) -> str:
    """The plain aiohttp pass-through's memory once started and idle for `seconds`."""
    port = find_free_port()
    env = dict(os.environ, BENCH_PASSTHROUGH_TOKEN=secrets.token_urlsafe(16))
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "bench.passthrough", "--port", str(port), "--upstream", upstream),
        env=env,
        cwd=REPO,
    )
    try:
        end = time.monotonic() + 30
        while time.monotonic() < end:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except OSError:
                await asyncio.sleep(0.1)
        await asyncio.sleep(seconds)
        return memory_text(process.pid)
    finally:
        process.terminate()
        await process.wait()


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
            print(f"started:      {memory_text(proxy.pid)}")
            cpu0 = cpu_seconds(proxy.pid)
            await asyncio.sleep(args.idle_seconds)
            idle_cpu = (cpu_seconds(proxy.pid) - cpu0) / args.idle_seconds
            print(f"idle:         {memory_text(proxy.pid)}, CPU {idle_cpu * 1000:.1f} m")
            plain = await passthrough_idle(sim_url + "/api/mypurecloud.ie", args.idle_seconds)
            print(f"pass-through: {plain} (idle, for comparison)")
            await load(base, tenants, args.tenants * 2, 8)  # every tenant has a token
            print(f"warm:         {memory_text(proxy.pid)} ({args.tenants} tenants)")
            cpu0, t0 = cpu_seconds(proxy.pid), time.monotonic()
            ok = await load(base, tenants, args.requests, args.concurrency)
            wall, cpu = time.monotonic() - t0, cpu_seconds(proxy.pid) - cpu0
            print(
                f"loaded:       {memory_text(proxy.pid)} after {ok}/{args.requests} OK,"
                f" {args.requests / wall:.0f} req/s, CPU {cpu / wall * 1000:.0f} m,"
                f" {cpu / args.requests * 1000:.2f} CPU-ms per request"
            )
        finally:
            for process in (proxy, sim):
                process.terminate()
                await process.wait()


if __name__ == "__main__":
    asyncio.run(main())
