"""`check-config --print` and `init-config`: YAML that loads back to the same config."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config import REDACTED, Config, load_config, parse_config
from proxy.config_yaml import NOTES, apply_settings, defaults_template, render_config
from proxy.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent

# Every key away from its default, the secret one included.
EVERYTHING_CHANGED: dict[str, Any] = {
    "listen": {"host": "::1", "port": 0, "max_body_bytes": 1, "shutdown_grace": 2.5,
               "idle_timeout": 7},
    "admin": {"host": "0.0.0.0", "port": 9191, "token_file": "/run/admin token"},
    "tenant": {"header": "X-Org", "pattern": "^[a-z]{1,8}( #x)?$", "default": "acme",
               "max_tenants": 3},
    "credentials": {"source": "file", "file": "/etc/tenants: a file.yaml", "ttl": 0.5,
                    "negative_ttl": 1, "stale_ttl": 0},
    "vault": {"address": "https://vault.example:8200", "namespace": "team/a",
              "ca_cert": "/etc/ca.pem", "kv_mount": "kv", "kv_version": 1,
              "path": "tenants/{tenant}/genesys",
              "auth": {"method": "approle", "token": "fake-vault-token-0123", "token_file": "/t",
                       "role": "r", "jwt_file": "/jwt", "role_id": "role-1",
                       "secret_id_file": "/sid", "mount": "approle-2"}},
    "genesys": {"api_url": "http://127.0.0.1:9/api/{domain}",
                "login_url": "http://127.0.0.1:9/login/{domain}", "ca_file": "/g.pem",
                "refresh_at": 0.5, "timeout": 1.25, "connect_timeout": 0.75},
    "log": {"level": "debug", "format": "json", "access": False},
    "metrics": {"tenant_label": False},
    "local_token_endpoint": False,
}  # fmt: skip


def dotted_keys(section: Any, prefix: str = "") -> list[str]:
    keys = []
    for item in dataclasses.fields(section):
        value = getattr(section, item.name)
        key = f"{prefix}{item.name}"
        keys.append(key)
        if dataclasses.is_dataclass(value):
            keys += dotted_keys(value, f"{key}.")
    return keys


def without_secrets(data: dict[str, Any]) -> dict[str, Any]:
    copy = yaml.safe_load(yaml.safe_dump(data))
    copy["vault"]["auth"].pop("token")
    return copy


@pytest.mark.parametrize(
    "data",
    [{}, without_secrets(EVERYTHING_CHANGED), {"vault": {"auth": {"method": "kubernetes",
     "role": "billing"}}, "tenant": {"pattern": "^'quoted' \"too\"\\n$"}}],
    ids=["defaults", "everything-changed", "kubernetes-and-odd-pattern"],
)  # fmt: skip
def test_printed_config_loads_back_to_the_same_config(data: dict[str, Any]) -> None:
    config = parse_config(data)
    printed = render_config(config)
    assert parse_config(yaml.safe_load(printed)) == config


def test_every_key_is_printed_with_a_note() -> None:
    printed = yaml.safe_load(render_config(parse_config(without_secrets(EVERYTHING_CHANGED))))
    for key in dotted_keys(Config()):
        node: Any = printed
        for part in key.split("."):
            assert isinstance(node, dict), key
            assert part in node, f"{key} is missing from check-config --print"
            node = node[part]
        assert key in NOTES, f"give {key} a one-line note in proxy/config_yaml.py NOTES"
    text = render_config(Config())
    for key in ("jwt_file", "role_id", "secret_id_file"):
        assert re.search(rf"^\s+{key}: ", text, re.MULTILINE), key


def test_a_secret_is_printed_redacted_and_refused_on_load() -> None:
    config = parse_config(EVERYTHING_CHANGED)
    printed = render_config(config)
    assert "fake-vault-token-0123" not in printed
    assert f"token: {REDACTED}" in printed
    with pytest.raises(ConfigError) as caught:
        parse_config(yaml.safe_load(printed))
    assert caught.value.key == "vault.auth.token"
    assert "placeholder" in str(caught.value)
    assert "Error" not in str(caught.value)


def test_a_secret_from_the_environment_is_left_to_the_environment() -> None:
    env = {"VAULT_TOKEN": "fake-env-token-4567", "VAULT_ADDR": "https://vault.example:8200"}
    config = parse_config({}, env)
    printed = render_config(config, env)
    assert "fake-env-token-4567" not in printed
    assert "from $VAULT_TOKEN (not printed)" in printed
    assert "from $VAULT_ADDR" in printed
    assert parse_config(yaml.safe_load(printed), env) == config


@pytest.mark.parametrize(
    ("data", "key", "hint"),
    [
        ({"listen": {"prot": 1}}, "listen.prot", "listen.port"),
        ({"vault": {"auth": {"tokne": "x"}}}, "vault.auth.tokne", "vault.auth.token"),
        ({"vault": {"auth": {"roleid": "x"}}}, "vault.auth.roleid", "vault.auth.role_id"),
        ({"genesys": {"login_ulr": "x"}}, "genesys.login_ulr", "genesys.login_url"),
        ({"listne": {}}, "listne", "listen"),
        # The right name under the wrong section.
        ({"listen": {"jwt_file": "/x"}}, "listen.jwt_file", "vault.auth.jwt_file"),
        ({"admin": {"max_tenants": 5}}, "admin.max_tenants", "tenant.max_tenants"),
    ],
)
def test_an_unknown_key_names_the_nearest_valid_one(
    data: dict[str, Any], key: str, hint: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    assert (caught.value.key, caught.value.message, caught.value.hint) == (key, "unknown key", hint)
    assert str(caught.value) == f"{key}: unknown key (did you mean {hint}?)"


@pytest.mark.parametrize("data", [{"frobnicate": 1}, {"listen": {"zzzzzz": 1}}])
def test_a_key_like_nothing_gets_no_hint(data: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    assert caught.value.hint is None
    assert "did you mean" not in str(caught.value)


def test_set_overrides_merge_and_are_validated() -> None:
    data = apply_settings({"listen": {"port": 1}}, ["listen.host=::1", "vault.kv_version=1"])
    assert data == {"listen": {"port": 1, "host": "::1"}, "vault": {"kv_version": 1}}
    with pytest.raises(ConfigError, match="expects KEY=VALUE"):
        apply_settings({}, ["listen.port"])
    with pytest.raises(ConfigError, match="never taken from the command line") as caught:
        apply_settings({}, ["vault.auth.token=fake-secret-on-argv"])
    assert "fake-secret-on-argv" not in str(caught.value)
    with pytest.raises(ConfigError, match=r"listen\.prot: unknown key \(did you mean listen\.port"):
        parse_config(apply_settings({}, ["listen.prot=1"]))


def test_the_defaults_template_is_the_defaults() -> None:
    assert parse_config(yaml.safe_load(defaults_template())) == Config()


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "GENESYS_"))}
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env={**clean, **(env or {})},
        check=False,
    )  # fmt: skip


def test_check_config_print_output_is_a_config_file(tmp_path: Path) -> None:
    source = tmp_path / "source.yaml"
    source.write_text(yaml.safe_dump(EVERYTHING_CHANGED))
    result = cli("check-config", "--config", str(source), "--print")
    assert result.returncode == 0, result.stderr
    assert "fake-vault-token-0123" not in result.stdout
    printed = tmp_path / "printed.yaml"
    printed.write_text(result.stdout.replace(REDACTED, "fake-vault-token-0123"))
    assert load_config(printed) == load_config(source)
    # Unchanged, the placeholder is refused: exit 2, one line naming the key.
    printed.write_text(result.stdout)
    refused = cli("check-config", "--config", str(printed))
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1
    assert "vault.auth.token: is <redacted>" in refused.stderr


def test_init_config_writes_a_file_check_config_accepts(tmp_path: Path) -> None:
    target = tmp_path / "proxy.yaml"
    sim = "http://127.0.0.1:9100"
    written = cli(
        "init-config", "--output", str(target),
        "--set", f"genesys.api_url={sim}/api/{{domain}}",
        "--set", f"genesys.login_url={sim}/login/{{domain}}",
    )  # fmt: skip
    assert written.returncode == 0, written.stderr
    config = load_config(target)
    assert config.genesys.api_url == f"{sim}/api/{{domain}}"
    assert dataclasses.replace(config, genesys=Config().genesys) == Config()
    assert "# " in target.read_text()  # commented
    assert cli("check-config", "--config", str(target)).returncode == 0
    again = cli("init-config", "--output", str(target))
    assert again.returncode == 1
    assert "exists: pass --force" in again.stderr
    assert cli("init-config", "--output", str(target), "--force").returncode == 0
    assert load_config(target) == Config()
    bad = cli("init-config", "--set", "genesys.login_ulr=x")
    assert bad.returncode == 2
    assert "did you mean genesys.login_url?" in bad.stderr
