"""One access-log line per request: its fields, JSON lines, and query values kept out of it."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from proxy.config import LogConfig
from proxy.ops.access_log import REDACTED, looks_like_secret, redact_target
from proxy.ops.logs import configure_logging
from tests.conftest import ProxyHarness


def access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "proxy.access"]


async def test_access_line_carries_tenant_status_duration_and_correlation_id(
    harness: ProxyHarness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="proxy.access")
    acme = harness.add_tenant("acme")
    await harness.start()
    response = await harness.client.get(
        "/api/v2/users?pageSize=25", headers={"X-Tenant-ID": acme.id}
    )
    assert response.status == 200

    [line] = access_records(caplog)
    assert line.levelname == "INFO"
    assert line.tenant == acme.id  # type: ignore[attr-defined]
    assert line.method == "GET"  # type: ignore[attr-defined]
    assert line.path == "/api/v2/users?pageSize=25"  # type: ignore[attr-defined]
    assert line.status == 200  # type: ignore[attr-defined]
    assert line.upstream_status == 200  # type: ignore[attr-defined]
    assert isinstance(line.duration_ms, float)  # type: ignore[attr-defined]
    assert line.duration_ms > 0  # type: ignore[attr-defined]
    # Genesys' correlation id, as the app saw it in the answer.
    assert line.correlation_id == response.headers["ININ-Correlation-Id"]  # type: ignore[attr-defined]
    assert line.error is None  # type: ignore[attr-defined]


async def test_access_line_of_a_proxy_error_names_its_code(
    harness: ProxyHarness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="proxy.access")
    await harness.start()
    await harness.client.get(
        "/api/v2/users",
        headers={"X-Tenant-ID": f"{harness.prefix}nobody", "ININ-Correlation-Id": "corr-42"},
    )
    await harness.client.get("/api/v2/users", headers={"X-Tenant-ID": "../../etc"})

    unknown, invalid = access_records(caplog)
    assert unknown.status == 404  # type: ignore[attr-defined]
    assert unknown.error == "unknown_tenant"  # type: ignore[attr-defined]
    assert unknown.tenant == f"{harness.prefix}nobody"  # type: ignore[attr-defined]
    assert unknown.upstream_status is None  # type: ignore[attr-defined]
    assert unknown.correlation_id == "corr-42"  # type: ignore[attr-defined]
    # A tenant id that failed the pattern is not logged.
    assert invalid.error == "invalid_tenant"  # type: ignore[attr-defined]
    assert invalid.tenant is None  # type: ignore[attr-defined]


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure_logging() replaces the root handlers: put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in ("aiohttp", "aiohttp.access")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, saved in levels.items():
        logging.getLogger(name).setLevel(saved)


@pytest.mark.usefixtures("restore_logging")
async def test_json_format_writes_one_json_object_per_line(
    harness: ProxyHarness, capsys: pytest.CaptureFixture[str]
) -> None:
    acme = harness.add_tenant("acme")
    bad = harness.add_tenant("bad", vault_secret="fake-wrong-secret-2718")
    configure_logging(LogConfig(level="info", format="json"))
    await harness.start()
    await harness.client.get("/api/v2/users", headers={"X-Tenant-ID": acme.id})
    await harness.client.post(
        "/api/v2/sim/echo?note=a%0Ab", data=b"{}", headers={"X-Tenant-ID": acme.id}
    )
    await harness.client.get("/api/v2/users", headers={"X-Tenant-ID": bad.id})

    lines = capsys.readouterr().err.splitlines()
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all(isinstance(entry, dict) for entry in entries)
    access = [e for e in entries if e["logger"] == "proxy.access"]
    assert [(e["tenant"], e["method"], e["status"]) for e in access] == [
        (acme.id, "GET", 200),
        (acme.id, "POST", 200),
        (bad.id, "GET", 502),
    ]
    assert access[1]["path"] == "/api/v2/sim/echo?note=a%0Ab"
    assert access[2]["error"] == "genesys_auth_failed"
    assert {"duration_ms", "correlation_id", "upstream_status", "time", "level"} <= set(access[0])


@pytest.mark.usefixtures("restore_logging")
async def test_text_format_writes_one_line_per_request(
    harness: ProxyHarness, capsys: pytest.CaptureFixture[str]
) -> None:
    acme = harness.add_tenant("acme")
    configure_logging(LogConfig(level="info", format="text"))
    await harness.start()
    await harness.client.get("/api/v2/users", headers={"X-Tenant-ID": acme.id})

    lines = [line for line in capsys.readouterr().err.splitlines() if " proxy.access " in line]
    assert len(lines) == 1
    assert f"tenant={acme.id} method=GET path=/api/v2/users status=200" in lines[0]


async def test_secret_looking_query_values_never_reach_the_access_log(
    harness: ProxyHarness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="proxy.access")
    acme = harness.add_tenant("acme")
    await harness.start()
    secret = "fake-Secret-Value-0123456789abcdef"
    await harness.client.get(
        f"/api/v2/users?client_secret=x1&q={secret}&pageSize=25",
        headers={"X-Tenant-ID": acme.id},
    )
    [line] = access_records(caplog)
    assert line.path == f"/api/v2/users?client_secret={REDACTED}&q={REDACTED}&pageSize=25"  # type: ignore[attr-defined]
    assert secret not in caplog.text


@pytest.mark.parametrize(
    ("target", "logged"),
    [
        ("/api/v2/users", "/api/v2/users"),
        ("/api/v2/users?pageSize=25&pageNumber=2", "/api/v2/users?pageSize=25&pageNumber=2"),
        ("/x?access_token=abc", f"/x?access_token={REDACTED}"),
        (
            "/x?apiKey=k&Password=p&sig=s",
            f"/x?apiKey={REDACTED}&Password={REDACTED}&sig={REDACTED}",
        ),
        (
            "/x?id=3fa85f64-5717-4562-b3fc-2c963f66afa6",
            "/x?id=3fa85f64-5717-4562-b3fc-2c963f66afa6",
        ),
        (
            "/x?interval=2026-11-01T00:00:00Z/2026-11-02T00:00:00Z",
            "/x?interval=2026-11-01T00:00:00Z/2026-11-02T00:00:00Z",
        ),
        ("/x?t=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig123", f"/x?t={REDACTED}"),
        ("/x?flag&empty=&a=b", "/x?flag&empty=&a=b"),
        ("/x?tok%65n=v", f"/x?tok%65n={REDACTED}"),
    ],
)
def test_redact_target(target: str, logged: str) -> None:
    assert redact_target(target) == logged


def test_uuids_and_words_do_not_look_like_secrets() -> None:
    assert not looks_like_secret("3fa85f64-5717-4562-b3fc-2c963f66afa6")
    assert not looks_like_secret("a-perfectly-ordinary-long-search-phrase")
    assert looks_like_secret("Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MA==")


async def test_access_log_can_be_turned_off_while_metrics_keep_counting(
    harness: ProxyHarness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="proxy.access")
    acme = harness.add_tenant("acme")
    await harness.start({"log": {"access": False}})
    response = await harness.client.get("/api/v2/users", headers={"X-Tenant-ID": acme.id})
    assert response.status == 200
    assert access_records(caplog) == []
    stats = harness.metrics.tenant_stats(acme.id)
    assert stats is not None
    assert stats.requests == 1
