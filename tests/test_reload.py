"""Config reload in-process: which keys apply, which need a restart, files that do not load, and
the one file-change stamp (symlink swaps as Kubernetes makes them)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from proxy.config import Config, changed_keys, parse_config, with_keys_from
from proxy.filestamp import FileStamp, FileWatch
from proxy.ops.access_log import AccessLog
from proxy.ops.metrics import Metrics
from proxy.reload import RELOADABLE, Reloader, is_reloadable


class Recorder:
    """A component that remembers each config it was given."""

    def __init__(self) -> None:
        self.configs: list[Config] = []

    def reconfigure(self, config: Config) -> None:
        self.configs.append(config)


def write(path: Path, data: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")


def reloader_for(path: Path, data: dict[str, Any]) -> tuple[Reloader, Recorder, list[str]]:
    write(path, data)
    component, outcomes = Recorder(), []
    reloader = Reloader(parse_config(data), path, {}, [component], on_outcome=outcomes.append)
    return reloader, component, outcomes


def test_changed_keys_name_leaves_and_never_values() -> None:
    old = parse_config({"vault": {"auth": {"token": "fake-token-one-0001"}}})
    new = parse_config(
        {"vault": {"auth": {"token": "fake-token-two-0002"}}, "tenant": {"pattern": "^[a-z]+$"}}
    )
    assert changed_keys(old, new) == ["tenant.pattern", "vault.auth.token"]
    assert changed_keys(old, old) == []


def test_with_keys_from_takes_only_the_named_keys_and_checks_the_result() -> None:
    running = parse_config({"listen": {"port": 1111}, "tenant": {"default": "acme"}})
    loaded = parse_config({"listen": {"port": 2222}, "tenant": {"pattern": "^[a-z]+$"}})
    merged = with_keys_from(running, loaded, ["tenant.pattern"])
    assert merged.listen.port == 1111
    assert merged.tenant.pattern.pattern == "^[a-z]+$"
    assert merged.tenant.default == "acme"
    # A section the config does not have yet (added by a later version) is skipped.
    assert with_keys_from(running, loaded, ["genesys.no_such_section"]) == running


def test_the_contracts_reloadable_keys() -> None:
    for key in (
        "log.level",
        "log.format",
        "log.access",
        "tenant.pattern",
        "tenant.default",
        "credentials.ttl",
        "credentials.negative_ttl",
        "credentials.stale_ttl",
        "genesys.refresh_at",
        "genesys.rate_limit.max_wait",
    ):
        assert is_reloadable(key), key
    for key in ("listen.port", "tenant.header", "vault.address", "genesys.timeout", "logx"):
        assert not is_reloadable(key), key
    assert "genesys.rate_limit" in RELOADABLE


def test_reload_applies_reloadable_keys_and_leaves_the_rest_running(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "proxy.yaml"
    reloader, component, outcomes = reloader_for(path, {"listen": {"port": 1111}})
    write(
        path,
        {
            "listen": {"port": 2222},
            "tenant": {"default": "acme"},
            "vault": {"auth": {"token": "fake-vault-token-4242"}},
        },
    )
    with caplog.at_level(logging.INFO, logger="proxy.reload"):
        assert reloader.reload("SIGHUP")
    [config] = component.configs
    assert config.tenant.default == "acme"
    assert config.listen.port == 1111
    assert config.vault.auth.token is None
    assert reloader.config is config
    assert outcomes == ["success"]
    assert "listen.port, vault.auth.token changed; a restart is needed" in caplog.text
    assert "applied tenant.default" in caplog.text
    assert "fake-vault-token-4242" not in caplog.text


def test_a_file_that_does_not_load_keeps_the_running_config_and_names_the_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "proxy.yaml"
    reloader, component, outcomes = reloader_for(path, {"tenant": {"default": "acme"}})
    running = reloader.config
    for bad, key in (
        ({"tenant": {"default": "acme", "pattern": "^[0-9]+$"}}, "tenant.default"),
        ({"credentials": {"ttl": -1}}, "credentials.ttl"),
        ({"log": {"level": "loud"}}, "log.level"),
    ):
        write(path, bad)
        caplog.clear()
        assert not reloader.reload("SIGHUP")
        assert key in caplog.text
        assert "the running config stays" in caplog.text
    path.write_text("tenant: [unclosed\n", encoding="utf-8")
    assert not reloader.reload("SIGHUP")
    assert "is not valid YAML" in caplog.text
    assert reloader.config is running
    assert component.configs == []
    assert outcomes == ["error"] * 4


def test_a_component_that_fails_does_not_stop_the_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken:
        def reconfigure(self, config: Config) -> None:
            raise RuntimeError("a bug")

    path = tmp_path / "proxy.yaml"
    write(path, {})
    after, outcomes = Recorder(), []
    reloader = Reloader(parse_config({}), path, {}, [Broken(), after], on_outcome=outcomes.append)
    write(path, {"tenant": {"default": "acme"}})
    assert not reloader.reload("SIGHUP")
    assert len(after.configs) == 1
    assert outcomes == ["error"]


def test_file_stamp_sees_a_kubernetes_style_symlink_swap(tmp_path: Path) -> None:
    # The kubelet's layout: proxy.yaml -> ..data/proxy.yaml, ..data -> ..<timestamp>/.
    (tmp_path / "..v1").mkdir()
    (tmp_path / "..v1" / "proxy.yaml").write_text("a: 1\n")
    os.symlink("..v1", tmp_path / "..data")
    os.symlink("..data/proxy.yaml", tmp_path / "proxy.yaml")
    watch = FileWatch(tmp_path / "proxy.yaml")
    assert watch.stamp is not None
    assert not watch.changed()
    # Same size and even the same mtime: only the inode tells the new file from the old.
    (tmp_path / "..v2").mkdir()
    (tmp_path / "..v2" / "proxy.yaml").write_text("a: 2\n")
    old = os.stat(tmp_path / "..v1" / "proxy.yaml")
    os.utime(tmp_path / "..v2" / "proxy.yaml", ns=(old.st_atime_ns, old.st_mtime_ns))
    os.symlink("..v2", tmp_path / "..data_tmp")
    os.rename(tmp_path / "..data_tmp", tmp_path / "..data")
    assert watch.changed()
    assert not watch.changed()
    os.remove(tmp_path / "..v2" / "proxy.yaml")
    assert watch.changed()
    assert watch.stamp is None
    assert FileStamp.of(tmp_path / "nowhere") is None


async def test_the_reloader_reloads_on_request_and_on_a_changed_file(tmp_path: Path) -> None:
    path = tmp_path / "proxy.yaml"
    write(path, {})
    component, outcomes, counted = Recorder(), [], asyncio.Event()

    def on_outcome(outcome: str) -> None:
        outcomes.append(outcome)
        counted.set()

    reloader = Reloader(parse_config({}), path, {}, [component], on_outcome=on_outcome)
    requested = asyncio.Event()
    task = asyncio.create_task(reloader.run(requested, interval=0.01))
    try:
        requested.set()  # as SIGHUP does
        await counted.wait()
        assert outcomes == ["success"]
        assert component.configs == []  # nothing changed
        counted.clear()
        write(path, {"tenant": {"default": "acme", "pattern": "^[a-z]{1,9}$"}})
        await counted.wait()
        assert component.configs[-1].tenant.default == "acme"
        assert outcomes == ["success", "success"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_access_log_reconfigure_takes_the_log_keys() -> None:
    stream = io.StringIO()
    access = AccessLog(Metrics(CollectorRegistry()), parse_config({}).log, stream=stream)
    assert access.enabled
    access.reconfigure(parse_config({"log": {"level": "warning"}}))
    assert not access.enabled
    access.reconfigure(parse_config({"log": {"format": "json"}}))
    assert access.enabled


async def test_a_full_access_log_queue_drops_and_counts_rather_than_holding_requests(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request

    stream = io.StringIO()
    config = parse_config({"log": {"format": "json"}}).log
    access = AccessLog(Metrics(CollectorRegistry()), config, stream=stream, queue_limit=3)

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(text="ok")

    for n in range(5):
        await access.middleware(make_mocked_request("GET", f"/x?n={n}"), handler)
    assert access.dropped == 2
    with caplog.at_level(logging.WARNING, logger="proxy.ops.access_log"):
        assert access.flush()
    assert [json.loads(line)["path"] for line in stream.getvalue().splitlines()] == [
        "/x?n=0",
        "/x?n=1",
        "/x?n=2",
    ]
    assert "2 lines dropped" in caplog.text
