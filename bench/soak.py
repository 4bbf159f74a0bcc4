"""Soak test: minutes of mixed traffic through a real proxy process, with one Vault restart.

    python bench/soak.py --duration 180 --rate 300

Everything runs on loopback and is torn down at the end: an OpenBao dev server (restarted once,
mid-run, and re-seeded, as a dev server comes back empty), the Genesys simulator (in a child
process, so its counters survive to the report), and the proxy as `python -m proxy serve`, whose
own RSS and open file descriptors are read from /proc. Tokens live `--token-lifetime` seconds
and credential records `--credentials-ttl`, so both are refreshed many times, some of them while
Vault is down.

Deliberate errors, counted apart: requests for unknown tenants (404 unknown_tenant), for
malformed tenant ids (400 invalid_tenant), and for tenants first seen while Vault is down
(503 vault_unavailable). Any other non-2xx answer is an unexpected error. The run is bounded by
`--duration` and `--max-requests`; it exits 1 on an unexpected error or an expired token seen
by the simulator, and with `--strict` also on RSS growth of 10 % or more or on fd growth.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import hvac

ROOT = Path(__file__).resolve().parent.parent
REGION = "ap-south-1"
DOMAIN = "aps1.pure.cloud"
ROOT_TOKEN = "soak-root"
# Answers the script provokes on purpose: (status, X-Proxy-Error).
DELIBERATE = {
    (404, "unknown_tenant"),
    (400, "invalid_tenant"),
    (503, "vault_unavailable"),
}


# -- processes ---------------------------------------------------------------------------------


def free_port(pair: bool = False) -> int:
    """A free loopback port; with `pair`, its successor is free too (OpenBao's cluster port)."""
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if not pair:
            return port
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no free loopback port")


def wait_http(url: str, timeout: float = 30.0) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with opener.open(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer 200 within {timeout:g} s")


def stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Bao:
    """An OpenBao dev server that can be stopped and started again on the same address."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.address = f"http://127.0.0.1:{free_port(pair=True)}"
        binary = Path(sys.executable).parent / "bao"
        self.binary = str(binary) if binary.exists() else shutil.which("bao") or "bao"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        env["HOME"] = str(self.home)
        with (self.home / "bao.log").open("ab") as log:
            self.process = subprocess.Popen(
                [
                    self.binary,
                    "server",
                    "-dev",
                    "-dev-no-store-token",
                    f"-dev-root-token-id={ROOT_TOKEN}",
                    f"-dev-listen-address={self.address.removeprefix('http://')}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.home,
            )
        wait_http(f"{self.address}/v1/sys/health")

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)

    def seed(self, tenants: list[str]) -> None:
        client = hvac.Client(url=self.address, token=ROOT_TOKEN, timeout=5)
        for tenant in tenants:
            client.secrets.kv.v2.create_or_update_secret(
                path=f"genesys/tenants/{tenant}",
                secret={
                    "client_id": f"client-{tenant}",
                    "client_secret": secret_of(tenant),
                    "region": REGION,
                },
                mount_point="secret",
            )


def secret_of(tenant: str) -> str:
    return f"fake-soak-secret-{tenant}"


@dataclass(frozen=True)
class ProcStats:
    """A process's resident memory and open file descriptors, by what they are."""

    rss_kib: int
    fds: int
    kinds: dict[str, int]

    def describe(self) -> str:
        return ", ".join(f"{kind} {n}" for kind, n in sorted(self.kinds.items()))


def proc_stats(pid: int, peers: dict[int, str]) -> ProcStats:
    """RSS and fds of a process, from /proc; sockets are named by the port at the other end."""
    rss = 0
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    sockets: dict[str, tuple[int, int, str]] = {}
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}", encoding="ascii") as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
                sockets[inode] = (
                    int(local.split(":")[1], 16),
                    int(remote.split(":")[1], 16),
                    state,
                )
    kinds: collections.Counter[str] = collections.Counter()
    fd_dir = f"/proc/{pid}/fd"
    names = os.listdir(fd_dir)
    for name in names:
        try:
            target = os.readlink(f"{fd_dir}/{name}")
        except OSError:
            continue
        if not target.startswith("socket:["):
            kinds["files, pipes, epoll"] += 1
            continue
        local_port, remote_port, state = sockets.get(target[8:-1], (0, 0, ""))
        if state == "0A":
            kinds["listening"] += 1
        else:
            kinds[peers.get(remote_port) or peers.get(local_port) or "other sockets"] += 1
    return ProcStats(rss, len(names), dict(kinds))


# -- the simulator child -------------------------------------------------------------------------


async def serve_simulator(lifetime: float) -> None:
    """Child mode: run the simulator; print its URL, then its counters when told to stop."""
    from proxy.simulator import GenesysSimulator

    tenants = json.loads(sys.stdin.readline())
    sim = GenesysSimulator(api_requests_per_minute=None, token_requests_per_minute=300)
    for tenant in tenants:
        sim.add_client(
            f"client-{tenant}", secret_of(tenant), domain=DOMAIN, token_lifetime=lifetime
        )
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, done.set)
    async with sim.running() as running:
        print(running.base_url, flush=True)
        await done.wait()
    counters = {
        "token_requests": sim.token_requests(),
        "tokens_issued": sim.tokens_issued(),
        "api_requests": sim.api_requests(),
        "api_401s": sim.api_401s(),
        "expired_tokens_seen": sim.expired_tokens_seen(),
    }
    print(json.dumps(counters), flush=True)


# -- traffic -------------------------------------------------------------------------------------


@dataclass
class Tally:
    """What the load generator saw."""

    answers: collections.Counter[tuple[int, str]] = field(default_factory=collections.Counter)
    failures: collections.Counter[str] = field(default_factory=collections.Counter)
    latencies: list[float] = field(default_factory=list)
    sent: int = 0

    def record(self, status: int, code: str | None, seconds: float) -> None:
        self.answers[(status, code or "-")] += 1
        self.latencies.append(seconds)

    @property
    def unexpected(self) -> int:
        bad = sum(
            n
            for (status, code), n in self.answers.items()
            if status >= 300 and (status, code) not in DELIBERATE
        )
        return bad + sum(self.failures.values())


@dataclass
class Plan:
    known: list[str]
    late: list[str]
    proxy_url: str
    outage_started: asyncio.Event


async def one_request(
    session: aiohttp.ClientSession, plan: Plan, tally: Tally, rng: random.Random
) -> None:
    roll = rng.random()
    tenant = rng.choice(plan.known)
    method, path, data = "GET", "/api/v2/users?pageSize=5", None
    if roll < 0.50:
        path = "/api/v2/organizations/me"
    elif roll < 0.70:
        pass
    elif roll < 0.80:
        method, path, data = "POST", "/api/v2/sim/echo", json.dumps({"n": rng.random()}).encode()
    elif roll < 0.84:
        path = "/auth/token"
    elif roll < 0.87:
        path = "/api/v2/sim/blob?bytes=65536"
    elif roll < 0.93:
        if plan.outage_started.is_set():
            tenant = rng.choice(plan.late)  # first seen during or after the Vault outage
    elif roll < 0.97:
        tenant = f"ghost-{rng.randrange(1_000_000)}"  # unknown: 404, a flood of distinct ids
    else:
        tenant = rng.choice(["../etc", "a/b", "-x", "sp ace"])  # invalid: 400
    started = time.monotonic()
    try:
        async with session.request(
            method, plan.proxy_url + path, data=data, headers={"X-Tenant-ID": tenant}
        ) as response:
            await response.read()
            tally.record(
                response.status, response.headers.get("X-Proxy-Error"), time.monotonic() - started
            )
    except (aiohttp.ClientError, TimeoutError) as exc:
        tally.failures[type(exc).__name__] += 1


async def drive(
    plan: Plan,
    tally: Tally,
    *,
    rate: float,
    until: float,
    max_requests: int,
    concurrency: int,
    rng: random.Random,
) -> None:
    """Open-loop traffic at `rate` per second until the monotonic time `until`."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, trust_env=False
    ) as session:
        in_flight: set[asyncio.Task[None]] = set()
        slots = asyncio.Semaphore(concurrency)
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while time.monotonic() < until and tally.sent < max_requests:
            await slots.acquire()
            task = asyncio.create_task(one_request(session, plan, tally, rng))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            task.add_done_callback(lambda _: slots.release())
            tally.sent += 1
            next_at += 1.0 / rate
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        await asyncio.gather(*in_flight)


async def burst_of_unknown_tenants(plan: Plan, tally: Tally, count: int) -> None:
    """`count` requests at once, each for a different unknown tenant (deliberate 404s)."""
    async with aiohttp.ClientSession(trust_env=False) as session:

        async def one(n: int) -> None:
            started = time.monotonic()
            headers = {"X-Tenant-ID": f"warmup-ghost-{n}"}
            async with session.get(plan.proxy_url + "/api/v2/users", headers=headers) as response:
                await response.read()
                code = response.headers.get("X-Proxy-Error")
                tally.record(response.status, code, time.monotonic() - started)
                tally.sent += 1

        await asyncio.gather(*(one(n) for n in range(count)))


# -- the run -------------------------------------------------------------------------------------


@dataclass
class Services:
    """The processes of one run: OpenBao, the simulator child and the proxy."""

    work: Path
    bao: Bao
    simulator: subprocess.Popen[str] | None = None
    proxy: subprocess.Popen[bytes] | None = None
    proxy_url: str = ""
    peers: dict[int, str] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)

    def start(self, args: argparse.Namespace, tenants: list[str]) -> None:
        self.bao.start()
        self.bao.seed(tenants)
        command = [sys.executable, __file__, "--serve-simulator"]
        self.simulator = subprocess.Popen(
            [*command, "--token-lifetime", str(args.token_lifetime)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert self.simulator.stdin is not None
        assert self.simulator.stdout is not None
        self.simulator.stdin.write(json.dumps(tenants) + "\n")
        self.simulator.stdin.flush()
        sim_url = self.simulator.stdout.readline().strip()
        port, admin_port = free_port(), free_port()
        config = {
            "listen": {"port": port},
            "admin": {"port": admin_port},
            "tenant": {"max_tenants": 1000},
            "credentials": {"ttl": args.credentials_ttl},
            "vault": {"address": self.bao.address, "auth": {"token": ROOT_TOKEN}},
            "genesys": {
                "api_url": sim_url + "/api/{domain}",
                "login_url": sim_url + "/login/{domain}",
                "timeout": 10,
            },
            "log": {"level": "warning"},
        }
        path = self.work / "proxy.yaml"
        path.write_text(json.dumps(config), encoding="utf-8")  # JSON is YAML
        with (self.work / "proxy.log").open("wb") as log:
            self.proxy = subprocess.Popen(
                [sys.executable, "-m", "proxy", "serve", "--config", str(path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env={k: v for k, v in os.environ.items() if not k.startswith("VAULT_")},
            )
        wait_http(f"http://127.0.0.1:{admin_port}/readyz")
        self.proxy_url = f"http://127.0.0.1:{port}"
        sim_port = int(sim_url.rsplit(":", 1)[1])
        vault_port = int(self.bao.address.rsplit(":", 1)[1])
        self.peers = {sim_port: "to Genesys", vault_port: "to Vault", port: "from apps"}

    def stop(self) -> None:
        if self.proxy is not None:
            stop(self.proxy)
        if self.simulator is not None:
            stop(self.simulator)
            assert self.simulator.stdout is not None
            lines = self.simulator.stdout.read().strip().splitlines()
            self.counters = json.loads(lines[-1]) if lines else {}
        self.bao.stop()

    def proxy_stats(self) -> ProcStats:
        assert self.proxy is not None
        return proc_stats(self.proxy.pid, self.peers)


@dataclass
class Measured:
    tally: Tally
    elapsed: float
    launch: ProcStats
    baseline: ProcStats
    end: ProcStats


async def run_traffic(
    args: argparse.Namespace, services: Services, known: list[str], late: list[str]
) -> Measured:
    """Warm up, read the baseline at rest, then traffic with one Vault restart halfway."""
    launch = services.proxy_stats()
    tally = Tally()
    plan = Plan(known, late, services.proxy_url, asyncio.Event())
    drive_kwargs: dict[str, Any] = {
        "rate": args.rate,
        "max_requests": args.max_requests,
        "concurrency": args.concurrency,
        "rng": random.Random(args.seed),
    }
    begin = time.monotonic()

    def say(message: str) -> None:
        print(f"[{time.monotonic() - begin:6.1f}s] {message}", flush=True)

    # Warm-up: every known tenant gets its token, and one burst of distinct unknown tenants
    # makes as many Vault reads at once as the proxy allows, so its Vault connection pool (up
    # to one per Vault worker thread, kept for reuse) is at its working size before the baseline.
    await burst_of_unknown_tenants(plan, tally, args.concurrency)
    await drive(plan, tally, until=begin + min(15.0, args.duration * 0.1), **drive_kwargs)
    # At rest long enough for idle upstream connections to close (aiohttp closes them between
    # 30 and 60 s after last use), so a pool sized for a burst is not mistaken for growth.
    say(f"warmed up; resting {args.rest:g}s before the baseline")
    await asyncio.sleep(args.rest)
    baseline = services.proxy_stats()
    say(f"baseline: proxy RSS {baseline.rss_kib} KiB, {baseline.fds} fds ({baseline.describe()})")
    begin += args.rest  # the rest does not count against the duration

    async def outage() -> None:
        await asyncio.sleep(max(0.0, begin + args.duration / 2 - time.monotonic()))
        plan.outage_started.set()
        say(f"stopping Vault for {args.outage:g}s")
        await asyncio.to_thread(services.bao.stop)
        await asyncio.sleep(args.outage)
        await asyncio.to_thread(services.bao.start)
        await asyncio.to_thread(services.bao.seed, known + late)
        say("Vault is back (restarted empty, re-seeded)")

    restart = asyncio.create_task(outage())
    await drive(plan, tally, until=begin + args.duration, **drive_kwargs)
    await restart
    elapsed = time.monotonic() - begin
    say(f"traffic done; resting {args.rest:g}s before the final reading")
    await asyncio.sleep(args.rest)
    return Measured(tally, elapsed, launch, baseline, services.proxy_stats())


def soak(args: argparse.Namespace) -> int:
    known = [f"soak-{n:03d}" for n in range(args.tenants)]
    late = [f"late-{n:03d}" for n in range(max(2, args.tenants // 5))]
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    services = Services(work, Bao(work))
    try:
        services.start(args, known + late)
        measured = asyncio.run(run_traffic(args, services, known, late))
    finally:
        services.stop()
        log_text = (work / "proxy.log").read_text(encoding="utf-8", errors="replace")
        shutil.rmtree(work, ignore_errors=True)
    return report(args, measured, services.counters, log_text)


def report(
    args: argparse.Namespace, measured: Measured, counters: dict[str, int], log_text: str
) -> int:
    tally, elapsed = measured.tally, measured.elapsed
    launch, baseline, end = measured.launch, measured.baseline, measured.end
    answered = sum(tally.answers.values())
    latencies = sorted(tally.latencies) or [0.0]

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    rss_growth = (end.rss_kib - baseline.rss_kib) / baseline.rss_kib * 100
    fd_growth = end.fds - baseline.fds
    tracebacks = log_text.count("Traceback")
    errors_logged = sum(1 for line in log_text.splitlines() if " ERROR " in line)
    print(
        f"duration: {elapsed:.1f} s, rate asked: {args.rate:g}/s, tenants: {args.tenants}"
        f" (+{max(2, args.tenants // 5)} first seen in the Vault outage)"
    )
    print(f"requests: {tally.sent} sent, {answered} answered, {answered / elapsed:.1f}/s")
    print("answers by status and code:")
    for (status, code), count in sorted(tally.answers.items()):
        kind = (
            "deliberate"
            if (status, code) in DELIBERATE
            else ("ok" if status < 300 else "UNEXPECTED")
        )
        print(f"  {status} {code:<22} {count:>8}  {kind}")
    for name, count in sorted(tally.failures.items()):
        print(f"  transport {name:<22} {count:>8}  UNEXPECTED")
    print(f"unexpected errors: {tally.unexpected}")
    print(f"latency ms: p50 {pct(0.5):.1f}, p99 {pct(0.99):.1f}, max {latencies[-1] * 1000:.1f}")
    print(f"simulator: {json.dumps(counters)}")
    print(f"proxy log: {errors_logged} ERROR lines, {tracebacks} tracebacks")
    print(
        f"proxy RSS KiB: launch {launch.rss_kib}, after warm-up {baseline.rss_kib},"
        f" end {end.rss_kib}"
        f" (growth {rss_growth:+.1f} %)"
    )
    print(
        f"proxy open fds: launch {launch.fds}, after warm-up {baseline.fds}, end {end.fds}"
        f" (growth {fd_growth:+d})"
    )
    print(f"  after warm-up: {baseline.describe()}")
    print(f"  end:           {end.describe()}")
    failed = tally.unexpected > 0 or counters.get("expired_tokens_seen", 1) != 0 or tracebacks > 0
    if args.strict:
        failed = failed or rss_growth >= 10.0 or fd_growth > 0
    print("verdict:", "FAIL" if failed else "PASS")
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--duration", type=float, default=180.0, help="seconds of traffic (default 180)"
    )
    parser.add_argument(
        "--rate", type=float, default=300.0, help="requests per second (default 300)"
    )
    parser.add_argument(
        "--max-requests", type=int, default=1_000_000, help="stop after this many requests"
    )
    parser.add_argument(
        "--tenants", type=int, default=50, help="tenants with traffic from the start"
    )
    parser.add_argument("--concurrency", type=int, default=64, help="most requests in flight")
    parser.add_argument(
        "--token-lifetime", type=float, default=30.0, help="token lifetime at the simulator (s)"
    )
    parser.add_argument(
        "--credentials-ttl", type=float, default=10.0, help="credentials.ttl of the proxy (s)"
    )
    parser.add_argument(
        "--outage", type=float, default=8.0, help="seconds Vault stays down mid-run"
    )
    parser.add_argument(
        "--rest", type=float, default=65.0, help="idle seconds before each RSS/fd reading"
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed of the traffic mix")
    parser.add_argument(
        "--strict", action="store_true", help="also fail on RSS growth >= 10 %% or fd growth"
    )
    parser.add_argument("--serve-simulator", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_simulator:
        asyncio.run(serve_simulator(args.token_lifetime))
        return 0
    if args.duration <= 0 or args.rate <= 0 or args.tenants < 1:
        parser.error("--duration and --rate must be positive, --tenants at least 1")
    return soak(args)


if __name__ == "__main__":
    sys.exit(main())
