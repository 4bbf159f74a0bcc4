"""`genesys-token-proxy inject` as operators run it: flags, one-line errors, TLS, SIGTERM."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import time
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import find_free_port
from tests.injector_support import (
    EXAMPLE_INJECTED,
    admission_review,
    make_tls_files,
    pod_from_deployment,
)
from tests.test_lifecycle import command, run_cli

pytestmark = pytest.mark.slow


async def test_inject_command_serves_reviews_over_tls_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    tls = make_tls_files(tmp_path)
    port = find_free_port()
    process = await asyncio.create_subprocess_exec(
        *command(
            "inject",
            f"--tls-cert={tls.cert}",
            f"--tls-key={tls.key}",
            "--host=127.0.0.1",
            f"--port={port}",
            "--image=registry.example/gtp:9.9.9",
        ),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    url = f"https://127.0.0.1:{port}"
    client_tls = ssl.create_default_context(cafile=str(tls.ca))
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_tls)) as s:
            deadline = time.monotonic() + 30
            while True:
                assert process.returncode is None, "the injector exited early"
                try:
                    async with s.get(f"{url}/healthz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    assert time.monotonic() < deadline, "the injector never answered"
                await asyncio.sleep(0.1)
            review = admission_review(pod_from_deployment(EXAMPLE_INJECTED))
            async with s.post(f"{url}/mutate", json=review) as response:
                answer = await response.json()
        patch = json.loads(base64.b64decode(answer["response"]["patch"]))
        images = [op["value"][0]["image"] for op in patch if op["path"] == "/spec/initContainers"]
        assert images == ["registry.example/gtp:9.9.9"]  # the --image flag reached the sidecar
    finally:
        process.terminate()
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    err = stderr.decode()
    assert process.returncode == 0, err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        ([], "--tls-cert"),
        (["--tls-cert=/nonexistent/tls.crt", "--tls-key=/nonexistent/tls.key"], "--tls-cert"),
        (["--memory-request=lots"], "--memory-request"),
        (["--config-map=Bad_Name"], "--config-map"),
        (["--port=70000"], "--port"),
        (["--sidecar=sometimes"], "--sidecar"),
    ],
)
def test_bad_flags_are_one_line_errors_naming_the_flag(
    tmp_path: Path, flags: list[str], named: str
) -> None:
    tls = make_tls_files(tmp_path)
    if flags and not any(f.startswith("--tls-") for f in flags):
        flags = [f"--tls-cert={tls.cert}", f"--tls-key={tls.key}", *flags]

    result = run_cli("inject", *flags)

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert named in lines[0]


def test_a_key_that_does_not_match_the_certificate_is_named(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path)
    other = make_tls_files(tmp_path, prefix="other")

    result = run_cli("inject", f"--tls-cert={tls.cert}", f"--tls-key={other.key}")

    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "genesys-token-proxy: error: config error: --tls-key: does not match --tls-cert"
        " (KEY_VALUES_MISMATCH)"
    ]


def test_a_file_that_is_not_a_certificate_is_named(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")

    result = run_cli("inject", f"--tls-cert={junk}", f"--tls-key={tls.key}")

    assert result.returncode == 2
    assert "--tls-cert:" in result.stderr
    assert "not a PEM certificate" in result.stderr


def test_a_port_in_use_is_exit_1(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path)
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli(
            "inject",
            f"--tls-cert={tls.cert}",
            f"--tls-key={tls.key}",
            "--host=127.0.0.1",
            f"--port={port}",
        )
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "--port" in result.stderr
