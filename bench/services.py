"""The services a benchmark runs on loopback, each a context manager that stops what it starts.

nginx_upstream   the fast upstream: nginx answering a small JSON body on every path
nginx_proxy      the practical limit: nginx forwarding with a static Authorization header
passthrough      the framework's own cost: a plain aiohttp pass-through on uvloop, static header
openbao          a real `bao server -dev` with a file audit device, to count Vault reads
simulator        the project's Genesys simulator (login service and API) in its own process
token_proxy      genesys-token-proxy itself: `python -m proxy serve --config FILE`
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hvac
import yaml

from bench.procs import BenchError, Child, free_port, free_port_pair, started, wait_for_port
from bench.tools import bao_binary

REPO = Path(__file__).resolve().parent.parent
# What the fast upstream answers: about the size of a small Genesys API answer.
UPSTREAM_BODY = json.dumps(
    {
        "id": "6b3c2a0e-5d1f-4b8a-9f2e-1c7d8e9f0a1b",
        "name": "Bench User",
        "state": "active",
        "email": "bench.user@example.com",
        "version": 7,
        "selfUri": "/api/v2/users/6b3c2a0e-5d1f-4b8a-9f2e-1c7d8e9f0a1b",
    },
    separators=(",", ":"),
)
# Made up per run: nginx's static header stands in for the token the proxy would inject.
STATIC_TOKEN = secrets.token_urlsafe(32)
BAO_ROOT_TOKEN = "bench-root"
TENANT_PATH = "genesys/tenants/{tenant}"
_NO_PROXIES = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
    """GET over loopback, ignoring any HTTP_PROXY: (status, body); errors are statuses too."""
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with _NO_PROXIES.open(request, timeout=10) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@dataclass
class Service:
    """A running service: its process and the loopback port it answers on."""

    child: Child
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


# -- nginx ---------------------------------------------------------------------------------------

_NGINX_MAIN = """\
daemon off;
master_process on;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {work}/client_body;
    proxy_temp_path {work}/proxy_temp;
    fastcgi_temp_path {work}/fastcgi_temp;
    uwsgi_temp_path {work}/uwsgi_temp;
    scgi_temp_path {work}/scgi_temp;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
{server}
}}
"""

_UPSTREAM_SERVER = """\
    server {{
        listen 127.0.0.1:{port};
        location / {{
            default_type application/json;
            return 200 '{body}';
        }}
    }}
"""

# The practical limit: what a static-token sidecar would do, with the same hop-by-hop care.
_PROXY_SERVER = """\
    upstream genesys {{
        server 127.0.0.1:{upstream_port};
        keepalive 128;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://genesys/api/{domain}/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Tenant-ID "";
            proxy_set_header Authorization "Bearer {token}";
        }}
    }}
"""


@contextmanager
def _nginx(name: str, nginx: str, work: Path, server: str, port: int) -> Iterator[Service]:
    work.mkdir(parents=True)
    conf = work / "nginx.conf"
    conf.write_text(_NGINX_MAIN.format(work=work, server=server), encoding="utf-8")
    # -e: nginx would otherwise open /var/log/nginx/error.log before reading the config.
    argv = [nginx, "-p", str(work), "-c", str(conf), "-e", str(work / "error.log")]
    with started(name, argv, work / "stdout.log") as child:
        wait_for_port(child, port)
        yield Service(child, port)


@contextmanager
def nginx_upstream(nginx: str, work: Path) -> Iterator[Service]:
    """nginx answering `UPSTREAM_BODY` with 200 on every path."""
    port = free_port()
    server = _UPSTREAM_SERVER.format(port=port, body=UPSTREAM_BODY)
    with _nginx("nginx upstream", nginx, work, server, port) as service:
        yield service


@contextmanager
def nginx_proxy(nginx: str, work: Path, upstream_port: int, domain: str) -> Iterator[Service]:
    """nginx forwarding `/x` to the upstream's `/api/{domain}/x` with a static Authorization."""
    port = free_port()
    server = _PROXY_SERVER.format(
        port=port, upstream_port=upstream_port, domain=domain, token=STATIC_TOKEN
    )
    with _nginx("nginx proxy", nginx, work, server, port) as service:
        yield service


# -- the plain aiohttp pass-through ---------------------------------------------------------------


@contextmanager
def passthrough(
    work: Path, upstream_url: str, *, wrapper: Sequence[str] = (), start_timeout: float = 20.0
) -> Iterator[Service]:
    """`python -m bench.passthrough` forwarding `/x` to `upstream_url` + `/x`, static token.

    `wrapper` goes before the command (valgrind, say).
    """
    work.mkdir(parents=True)
    port = free_port()
    argv = [*wrapper, sys.executable, "-m", "bench.passthrough", "--port", str(port)]
    argv += ["--upstream", upstream_url]
    env = dict(os.environ, BENCH_PASSTHROUGH_TOKEN=STATIC_TOKEN)
    with started(
        "aiohttp pass-through", argv, work / "passthrough.log", env=env, cwd=REPO
    ) as child:
        wait_for_port(child, port, start_timeout)
        yield Service(child, port)


# -- OpenBao -------------------------------------------------------------------------------------


@dataclass
class OpenBao:
    """A running OpenBao dev server (KV v2 at secret/) that audits every request to a file."""

    child: Child
    address: str
    audit_path: Path
    root_token: str = BAO_ROOT_TOKEN

    def put_tenants(self, records: Mapping[str, Mapping[str, str]], threads: int = 8) -> None:
        """Write each tenant's credential record, a few at a time."""
        # One client per thread: hvac's requests session is not meant to be shared across them.
        local = threading.local()

        def put(item: tuple[str, Mapping[str, str]]) -> None:
            tenant, record = item
            if not hasattr(local, "client"):
                local.client = hvac.Client(url=self.address, token=self.root_token, timeout=10)
            local.client.secrets.kv.v2.create_or_update_secret(
                path=TENANT_PATH.format(tenant=tenant), secret=dict(record), mount_point="secret"
            )

        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(put, records.items()))

    def tenant_reads(self) -> Counter[str]:
        """Reads of each tenant's record, as OpenBao's audit device logged them."""
        prefix = "secret/data/" + TENANT_PATH.format(tenant="")
        reads: Counter[str] = Counter()
        with self.audit_path.open(encoding="utf-8") as audit:
            for line in audit:
                if prefix not in line:
                    continue
                entry = json.loads(line)
                request = entry.get("request", {})
                path = request.get("path", "")
                if entry.get("type") == "request" and request.get("operation") == "read":
                    reads[path.removeprefix(prefix)] += 1
        return reads


@contextmanager
def openbao(work: Path) -> Iterator[OpenBao]:
    """`bao server -dev` on a free loopback port, in-memory, with a file audit device."""
    work.mkdir(parents=True)
    port = free_port_pair()
    address = f"http://127.0.0.1:{port}"
    audit_path = work / "audit.log"
    config = work / "bao.hcl"
    # OpenBao takes audit devices only from its config file.
    config.write_text(
        f'audit "file" "bench" {{\n  options {{\n    file_path = "{audit_path}"\n  }}\n}}\n',
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    env.update(HOME=str(work), BAO_ADDR=address)
    argv = [
        bao_binary(),
        "server",
        "-dev",
        "-dev-no-store-token",
        f"-dev-root-token-id={BAO_ROOT_TOKEN}",
        f"-dev-listen-address=127.0.0.1:{port}",
        f"-config={config}",
    ]
    with started("OpenBao", argv, work / "bao.log", env=env, cwd=work) as child:
        _wait_for_status(child, f"{address}/v1/sys/health", {200})
        yield OpenBao(child, address, audit_path)


# -- the Genesys simulator -----------------------------------------------------------------------


@dataclass
class Simulator:
    """The simulator process: its URL templates for the proxy's config, and its counters."""

    service: Service

    @property
    def login_url_template(self) -> str:
        return self.service.url + "/login/{domain}"

    @property
    def api_url_template(self) -> str:
        return self.service.url + "/api/{domain}"

    def counters(self) -> dict[str, int]:
        status, body = http_get(self.service.url + "/bench/counters")
        if status != 200:
            raise BenchError(f"the simulator's counters answered {status}")
        counters: dict[str, int] = json.loads(body)
        return counters


@contextmanager
def simulator(
    work: Path, clients: Sequence[Mapping[str, str]], extra_args: Sequence[str] = ()
) -> Iterator[Simulator]:
    """`python -m bench.sim_server` knowing `clients` ({client_id, client_secret, domain})."""
    work.mkdir(parents=True)
    clients_file = work / "clients.json"
    clients_file.write_text(json.dumps(list(clients)), encoding="utf-8")
    port = free_port()
    argv = [sys.executable, "-m", "bench.sim_server", "--port", str(port)]
    argv += ["--clients", str(clients_file), *extra_args]
    with started("simulator", argv, work / "simulator.log", cwd=REPO) as child:
        wait_for_port(child, port)
        yield Simulator(Service(child, port))


# -- genesys-token-proxy -------------------------------------------------------------------------


@dataclass
class TokenProxy:
    """The proxy process and its two listeners."""

    service: Service
    admin_port: int


@contextmanager
def token_proxy(
    work: Path,
    config: Mapping[str, Any],
    *,
    wrapper: Sequence[str] = (),
    start_timeout: float = 30.0,
    source: Path = REPO,
) -> Iterator[TokenProxy]:
    """`python -m proxy serve` with `config` plus free loopback ports; ready when it yields.

    `wrapper` goes before the command (valgrind, say); `source` is the tree whose `proxy`
    package runs (another revision's, say).
    """
    work.mkdir(parents=True)
    port, admin_port = free_port(), free_port()
    full = dict(config)
    full["listen"] = {**config.get("listen", {}), "host": "127.0.0.1", "port": port}
    full["admin"] = {**config.get("admin", {}), "host": "127.0.0.1", "port": admin_port}
    config_path = work / "proxy.yaml"
    config_path.write_text(yaml.safe_dump(full), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "GENESYS_PROXY_"))}
    argv = [*wrapper, sys.executable, "-m", "proxy", "serve", "--config", str(config_path)]
    with started("genesys-token-proxy", argv, work / "proxy.log", env=env, cwd=source) as child:
        wait_for_port(child, admin_port, start_timeout)
        _wait_for_status(
            child, f"http://127.0.0.1:{admin_port}/readyz", {200}, timeout=start_timeout
        )
        yield TokenProxy(Service(child, port), admin_port)


def _wait_for_status(child: Child, url: str, wanted: set[int], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        child.check_alive()
        try:
            if http_get(url)[0] in wanted:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise BenchError(f"{child.name} was not ready at {url} within {timeout:g} s")
