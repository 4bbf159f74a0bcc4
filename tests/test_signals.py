"""Signals as operators send them to the real daemon: SIGTERM's bounded drain, SIGHUP's reload,
config-file changes (as Kubernetes makes them), signals that must not kill, and the access log
losing no line on the way out."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from proxy.simulator import GenesysSimulator
from proxy.simulator.endpoints import TRICKLE_CHUNK
from tests.conftest import find_free_port
from tests.test_lifecycle import ROOT, command

pytestmark = pytest.mark.slow

CLIENT_ID, CLIENT_SECRET = "client-signals", secrets.token_urlsafe(24)  # made up per run


class Daemon:
    """A proxy process whose output goes to a file: a pipe nobody reads would fill and block it."""

    def __init__(self, args: list[str], output: Path) -> None:
        self._output_path = output
        with output.open("wb") as sink:
            self.process = subprocess.Popen(
                command(*args), stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT
            )

    async def wait_ready(self, admin_port: int, timeout: float = 30) -> None:
        url = f"http://127.0.0.1:{admin_port}/readyz"
        async with aiohttp.ClientSession() as session:

            async def ready() -> bool:
                assert self.process.poll() is None, f"the daemon exited: {self.finish()}"
                try:
                    async with session.get(url) as response:
                        return response.status == 200
                except aiohttp.ClientError:
                    return False

            await wait_for(ready, "the daemon to be ready", timeout)

    def finish(self, timeout: float = 30) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        return self._output_path.read_text(encoding="utf-8", errors="replace")


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.finish(timeout=5)


class Setup:
    """A simulator, a credentials file with tenant `acme`, and a daemon config file."""

    def __init__(self, tmp_path: Path, sim: GenesysSimulator) -> None:
        self.sim = sim
        self.port, self.admin_port = find_free_port(), find_free_port()
        self.tenants = tmp_path / "tenants.yaml"
        record = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "region": "eu-west-1"}
        self.tenants.write_text(yaml.safe_dump({"acme": record, "globex": record}))
        self.config_path = tmp_path / "proxy.yaml"
        self.output = tmp_path / "daemon.log"

    def config(self, **sections: Any) -> dict[str, Any]:
        config: dict[str, Any] = {
            "listen": {"port": self.port, "shutdown_grace": 3},
            "admin": {"port": self.admin_port},
            "credentials": {"source": "file", "file": str(self.tenants)},
            "genesys": {
                "api_url": self.sim.api_url_template,
                "login_url": self.sim.login_url_template,
            },
            "log": {"format": "json"},
        }
        for name, values in sections.items():
            config[name] = {**config.get(name, {}), **values}
        return config

    def write(self, config: dict[str, Any], path: Path | None = None) -> None:
        (path or self.config_path).write_text(yaml.safe_dump(config))

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def reloads(self, session: aiohttp.ClientSession, outcome: str) -> float:
        async with session.get(f"http://127.0.0.1:{self.admin_port}/metrics") as response:
            text = await response.text()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "genesys_proxy_config_reloads_total" and sample.labels == {
                    "outcome": outcome
                }:
                    return float(sample.value)
        raise AssertionError("genesys_proxy_config_reloads_total is missing")


@asynccontextmanager
async def running(tmp_path: Path) -> AsyncIterator[Setup]:
    simulator = GenesysSimulator()
    simulator.add_client(CLIENT_ID, CLIENT_SECRET, domain="mypurecloud.ie", org_name="Signals")
    async with simulator.running() as sim:
        yield Setup(tmp_path, sim)


async def start(setup: Setup, daemons: list[Daemon], config: Path | None = None) -> Daemon:
    daemon = Daemon(["serve", "--config", str(config or setup.config_path)], setup.output)
    daemons.append(daemon)
    await daemon.wait_ready(setup.admin_port)
    return daemon


def log_entries(output: str) -> list[dict[str, Any]]:
    entries = []
    for line in output.splitlines():
        if line.startswith("{"):
            entries.append(json.loads(line))
    return entries


async def wait_for(condition: Any, what: str, timeout: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await condition():
        assert loop.time() < deadline, f"gave up waiting for {what}"
        await asyncio.sleep(0.05)


# -- SIGTERM: a bounded drain ----------------------------------------------------------------------


async def test_sigterm_cuts_a_download_still_streaming_when_the_grace_ends_and_exits_0(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    # The download lasts 5 s; the grace is 3 s. aiohttp's own runner waited the grace, then
    # waited it again: the download finished in that second wait, 2x the grace.
    chunks = 50
    async with running(tmp_path) as setup:
        setup.write(setup.config())
        daemon = await start(setup, daemons)
        received_before = received_after = 0
        complete = False
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                setup.url(f"/api/v2/sim/trickle?chunks={chunks}&interval=0.1"),
                headers={"X-Tenant-ID": "acme"},
            ) as response,
        ):
            assert response.status == 200
            received_before = len(await response.content.readexactly(len(TRICKLE_CHUNK)))
            daemon.process.send_signal(signal.SIGTERM)
            try:
                async for chunk in response.content.iter_any():
                    received_after += len(chunk)
                complete = response.content.is_eof() and (
                    received_before + received_after == chunks * len(TRICKLE_CHUNK)
                )
            except aiohttp.ClientPayloadError:
                complete = False
        returncode = await asyncio.to_thread(daemon.process.wait, 30)
        output = daemon.finish()
    assert returncode == 0, output
    # The request got its grace: the answer kept streaming after SIGTERM ...
    assert received_after > 0
    # ... and was cut when the grace ended, while the simulator was still producing it.
    assert not complete, output
    assert "cutting 1 requests still running" in output
    # Its access line is there, marked as cut.
    access = [e for e in log_entries(output) if e["logger"] == "proxy.access"]
    assert [(e["path"], e["status"]) for e in access] == [
        (f"/api/v2/sim/trickle?chunks={chunks}&interval=0.1", 499)
    ]


async def test_a_second_sigterm_cuts_the_grace_short(tmp_path: Path, daemons: list[Daemon]) -> None:
    async with running(tmp_path) as setup:
        setup.write(setup.config(listen={"shutdown_grace": 120}))
        daemon = await start(setup, daemons)
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                setup.url("/api/v2/sim/trickle?chunks=100000&interval=0.05"),
                headers={"X-Tenant-ID": "acme"},
            ) as response,
        ):
            await response.content.readexactly(len(TRICKLE_CHUNK))
            daemon.process.send_signal(signal.SIGTERM)
            # Still streaming after the first: the grace is under way.
            await response.content.readexactly(len(TRICKLE_CHUNK))
            daemon.process.send_signal(signal.SIGTERM)
            with pytest.raises(aiohttp.ClientPayloadError):
                await _read_to_the_end(response)
        # Well before the 120 s grace (the wait's own timeout would fail the test).
        returncode = await asyncio.to_thread(daemon.process.wait, 60)
        output = daemon.finish()
    assert returncode == 0, output
    assert "SIGTERM again: cutting the shutdown grace short" in output


async def test_sigterm_during_traffic_loses_no_access_log_line(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    async with running(tmp_path) as setup:
        setup.write(setup.config())
        daemon = await start(setup, daemons)
        answered: list[str] = []
        stop = asyncio.Event()

        async def client(worker: int) -> None:
            async with aiohttp.ClientSession() as session:
                for n in range(10_000):
                    if stop.is_set():
                        return
                    target = f"/api/v2/sim/echo?worker={worker}&n={n}"
                    try:
                        async with session.get(
                            setup.url(target), headers={"X-Tenant-ID": "acme"}
                        ) as response:
                            await response.read()
                            answered.append(target)
                    except aiohttp.ClientError:
                        return  # the listener stopped accepting: this client is done

        workers = [asyncio.create_task(client(worker)) for worker in range(8)]
        await wait_for(lambda: _at_least(answered, 200), "traffic to get going")
        daemon.process.send_signal(signal.SIGTERM)
        returncode = await asyncio.to_thread(daemon.process.wait, 30)
        stop.set()
        await asyncio.gather(*workers)
        output = daemon.finish()
    assert returncode == 0, output
    logged = {e["path"] for e in log_entries(output) if e["logger"] == "proxy.access"}
    missing = [target for target in answered if target not in logged]
    assert len(answered) >= 200
    assert missing == [], f"{len(missing)} of {len(answered)} answered requests have no line"


async def _read_to_the_end(response: aiohttp.ClientResponse) -> None:
    while await response.content.read(1024):
        pass


async def _at_least(items: list[str], count: int) -> bool:
    return len(items) >= count


# -- SIGHUP and the config file: reload ------------------------------------------------------------


async def test_sighup_applies_reloadable_keys_and_reports_the_rest_as_needing_a_restart(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    async with running(tmp_path) as setup:
        # Access lines are info lines: off at level warning.
        setup.write(setup.config(log={"level": "warning"}))
        daemon = await start(setup, daemons)
        async with aiohttp.ClientSession() as session:
            async with session.get(setup.url("/api/v2/organizations/me")) as response:
                assert response.headers["X-Proxy-Error"] == "missing_tenant"
            new_port = find_free_port()
            setup.write(
                setup.config(
                    log={"level": "info"},
                    tenant={"default": "globex", "pattern": "^[a-z]+$"},
                    listen={"port": new_port},
                )
            )
            daemon.process.send_signal(signal.SIGHUP)
            await wait_for(
                lambda: _reloaded(setup, session, "success", 1), "the reload to be counted"
            )
            # The daemon is still there, with the new tenant rules and its old port.
            async with session.get(setup.url("/api/v2/organizations/me")) as response:
                assert response.status == 200, await response.text()
            async with session.get(
                setup.url("/api/v2/organizations/me"), headers={"X-Tenant-ID": "Acme1"}
            ) as response:
                assert response.headers["X-Proxy-Error"] == "invalid_tenant"
            assert daemon.process.poll() is None
        output = daemon.finish()
    assert daemon.process.returncode == 0, output
    entries = log_entries(output)
    messages = [e["message"] for e in entries]
    assert any("listen.port changed; a restart is needed" in m for m in messages), messages
    applied = next(m for m in messages if m.startswith("config reloaded (SIGHUP)"))
    assert "tenant.default" in applied
    assert "tenant.pattern" in applied
    assert "log.level" in applied
    assert "listen.port" not in applied
    # log.level applied: the requests after the reload have access lines, the one before not.
    access = [e for e in entries if e["logger"] == "proxy.access"]
    assert [(e["tenant"], e["status"]) for e in access] == [("globex", 200), (None, 400)]


async def test_a_config_that_does_not_load_is_logged_by_key_and_the_running_one_stays(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    async with running(tmp_path) as setup:
        setup.write(setup.config(tenant={"default": "acme"}))
        daemon = await start(setup, daemons)
        async with aiohttp.ClientSession() as session:
            setup.write(setup.config(tenant={"default": "acme", "patern": "x"}))
            daemon.process.send_signal(signal.SIGHUP)
            await wait_for(lambda: _reloaded(setup, session, "error", 1), "the failed reload")
            async with session.get(setup.url("/api/v2/organizations/me")) as response:
                assert response.status == 200
            assert await setup.reloads(session, "success") == 0
        output = daemon.finish()
    assert daemon.process.returncode == 0, output
    errors = [e["message"] for e in log_entries(output) if e["level"] == "error"]
    assert any("the running config stays" in m and "tenant.patern" in m for m in errors), errors


async def test_a_configmap_update_through_a_symlink_swap_is_reloaded_without_a_signal(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    # How the kubelet updates a mounted ConfigMap: files in a timestamped directory, a `..data`
    # link to it, the file a link through `..data`; an update writes a new directory and
    # renames a new `..data` link over the old one. No signal is sent.
    async with running(tmp_path) as setup:
        mount = tmp_path / "mount"
        mount.mkdir()
        (mount / "..v1").mkdir()
        setup.write(setup.config(), mount / "..v1" / "proxy.yaml")
        os.symlink("..v1", mount / "..data")
        os.symlink("..data/proxy.yaml", mount / "proxy.yaml")
        daemon = await start(setup, daemons, config=mount / "proxy.yaml")
        async with aiohttp.ClientSession() as session:
            async with session.get(setup.url("/api/v2/organizations/me")) as response:
                assert response.headers["X-Proxy-Error"] == "missing_tenant"
            (mount / "..v2").mkdir()
            setup.write(setup.config(tenant={"default": "acme"}), mount / "..v2" / "proxy.yaml")
            os.symlink("..v2", mount / "..data_tmp")
            os.rename(mount / "..data_tmp", mount / "..data")
            await wait_for(
                lambda: _reloaded(setup, session, "success", 1), "the file check to see it"
            )
            async with session.get(setup.url("/api/v2/organizations/me")) as response:
                assert response.status == 200
        output = daemon.finish()
    assert daemon.process.returncode == 0, output
    assert any(
        m.startswith("config reloaded (file changed): applied tenant.default")
        for m in (e["message"] for e in log_entries(output))
    )


async def test_sigusr1_and_sigusr2_do_not_kill_the_daemon(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    async with running(tmp_path) as setup:
        setup.write(setup.config(tenant={"default": "acme"}))
        daemon = await start(setup, daemons)
        daemon.process.send_signal(signal.SIGUSR1)
        daemon.process.send_signal(signal.SIGUSR2)
        # A signal the daemon handles: once it has, all three were delivered (they were sent
        # first, and a pending SIGUSR1 with its default action would have ended the process).
        daemon.process.send_signal(signal.SIGHUP)
        async with aiohttp.ClientSession() as session:
            await wait_for(lambda: _reloaded(setup, session, "success", 1), "the SIGHUP reload")
            async with session.get(setup.url("/api/v2/organizations/me")) as response:
                assert response.status == 200
        assert daemon.process.poll() is None
        output = daemon.finish()
    assert daemon.process.returncode == 0, output
    messages = [e["message"] for e in log_entries(output)]
    assert any(m.startswith("SIGUSR1 received: ignored") for m in messages), messages
    assert any(m.startswith("SIGUSR2 received: ignored") for m in messages), messages


async def _reloaded(
    setup: Setup, session: aiohttp.ClientSession, outcome: str, count: float
) -> bool:
    try:
        return await setup.reloads(session, outcome) >= count
    except aiohttp.ClientError:
        return False
