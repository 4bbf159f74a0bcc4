"""The daemon as users run it: the console script, `demo`, `check-config`, SIGTERM draining."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from proxy.simulator import GenesysSimulator
from tests.conftest import find_free_port

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).parent / "genesys-token-proxy"

pytestmark = pytest.mark.slow


def command(*args: str) -> list[str]:
    """The installed console script when present (as users run it), else `python -m proxy`."""
    if SCRIPT.exists():
        return [str(SCRIPT), *args]
    return [sys.executable, "-m", "proxy", *args]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(*args),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        check=False,
    )


class Daemon:
    """A proxy process started by a test, always stopped at the end."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            command(*args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
        )
        self.output = ""

    async def wait_ready(self, admin_port: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise AssertionError(f"the daemon exited early: {self.finish()}")
                try:
                    async with session.get(f"http://127.0.0.1:{admin_port}/readyz") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError(f"the daemon did not become ready: {self.finish()}")

    def finish(self, timeout: float = 30) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            out, err = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, err = self.process.communicate()
        self.output += out + err
        return self.output


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.finish(timeout=5)


def test_check_config_accepts_the_example() -> None:
    result = run_cli("check-config", "--config", "config/proxy.example.yaml")
    assert result.returncode == 0, result.stderr
    assert "config OK" in result.stdout


def test_check_config_names_the_bad_key_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("listen:\n  port: 99999\n")
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "listen.port" in lines[0]
    assert "Traceback" not in result.stderr


def test_config_comes_from_the_environment_variable(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("tenant:\n  patern: x\n")
    result = run_cli("check-config", env={"GENESYS_PROXY_CONFIG": str(path)})
    assert result.returncode == 2
    assert "tenant.patern: unknown key" in result.stderr


def test_bad_usage_is_one_line_and_exit_2() -> None:
    result = run_cli("serve", "--no-such-flag")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "--no-such-flag" in result.stderr
    result = run_cli()
    assert result.returncode == 2


def test_python_dash_m_proxy_is_the_same_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0
    assert result.stdout.startswith("genesys-token-proxy ")


def test_a_port_in_use_is_one_line_and_exit_1(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "proxy.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "listen": {"port": port},
                    "admin": {"port": 0},
                    "credentials": {"source": "file", "file": str(tmp_path / "t.yaml")},
                }
            )
        )
        (tmp_path / "t.yaml").write_text("{}\n")
        result = run_cli("serve", "--config", str(config))
    assert result.returncode == 1
    error_lines = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(error_lines) == 1
    assert f"127.0.0.1:{port}" in error_lines[0]
    assert "Traceback" not in result.stderr


async def test_demo_works_out_of_the_box(daemons: list[Daemon]) -> None:
    port, admin_port = find_free_port(), find_free_port()
    daemon = Daemon(["demo", "--port", str(port), "--admin-port", str(admin_port)])
    daemons.append(daemon)
    await daemon.wait_ready(admin_port)
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{port}/api/v2/organizations/me"
        async with session.get(url, headers={"X-Tenant-ID": "demo"}) as response:
            assert response.status == 200
            assert (await response.json())["name"] == "Demo Org Mumbai"
        async with session.get(url, headers={"X-Tenant-ID": "demo-eu"}) as response:
            assert (await response.json())["name"] == "Demo Org Dublin"
        async with session.get(url, headers={"X-Tenant-ID": "nobody"}) as response:
            assert response.status == 404
    output = daemon.finish()
    assert daemon.process.returncode == 0, output
    assert f"curl -s http://127.0.0.1:{port}/api/v2/organizations/me" in output


async def test_sigterm_lets_the_in_flight_request_finish_then_exits_0(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    simulator = GenesysSimulator()
    simulator.add_client(
        "client-drain", "fake-secret-drain-0001", domain="mypurecloud.ie", org_name="Drain"
    )
    async with simulator.running() as sim:
        tenants = tmp_path / "tenants.yaml"
        tenants.write_text(
            yaml.safe_dump(
                {
                    "drain": {
                        "client_id": "client-drain",
                        "client_secret": "fake-secret-drain-0001",
                        "region": "eu-west-1",
                    }
                }
            )
        )
        port, admin_port = find_free_port(), find_free_port()
        config = tmp_path / "proxy.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "listen": {"port": port, "shutdown_grace": 10},
                    "admin": {"port": admin_port},
                    "credentials": {"source": "file", "file": str(tenants)},
                    "genesys": {
                        "api_url": sim.api_url_template,
                        "login_url": sim.login_url_template,
                    },
                    "log": {"level": "debug"},
                }
            )
        )
        daemon = Daemon(["serve", "--config", str(config)])
        daemons.append(daemon)
        await daemon.wait_ready(admin_port)
        async with aiohttp.ClientSession() as session:
            slow = asyncio.create_task(
                session.get(
                    f"http://127.0.0.1:{port}/api/v2/sim/slow?seconds=1.5",
                    headers={"X-Tenant-ID": "drain"},
                )
            )
            await _wait_until(lambda: sim.api_requests() >= 1 or slow.done())
            daemon.process.send_signal(signal.SIGTERM)
            ready = await _status_when_up(session, f"http://127.0.0.1:{admin_port}/readyz")
            assert not slow.done()  # readiness went while the request was still in flight
            response: Any = await slow
            assert response.status == 200
            assert (await response.json())["slept"] == pytest.approx(1.5)
            response.release()
        assert ready == 503
        await asyncio.to_thread(daemon.process.wait, 20)
        output = daemon.finish()
    assert daemon.process.returncode == 0, output
    assert "fake-secret-drain-0001" not in output
    for token in sim.issued_tokens():
        assert token not in output


async def _wait_until(condition: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never became true"
        await asyncio.sleep(0.02)


async def _status_when_up(
    session: aiohttp.ClientSession, url: str, timeout: float = 10
) -> int | None:
    """The readiness status once SIGTERM was handled: the first answer that is not 200.

    Polled rather than slept on: a fixed pause would only guess when the signal was handled.
    None if the listener is already gone.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            async with session.get(url) as response:
                if response.status != 200:
                    return response.status
        except aiohttp.ClientError:
            return None
        assert time.monotonic() < deadline, "readiness never changed after SIGTERM"
        await asyncio.sleep(0.02)
