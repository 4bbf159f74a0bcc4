"""Config loading: defaults, the example file, environment, and errors that name the key."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config import Config, load_config, parse_config
from proxy.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_match_the_contract() -> None:
    config = load_config(None)
    assert config == Config()
    assert (config.listen.host, config.listen.port) == ("127.0.0.1", 8080)
    assert config.listen.max_body_bytes == 10_485_760
    assert (config.admin.host, config.admin.port) == ("127.0.0.1", 9090)
    assert config.tenant.header == "X-Tenant-ID"
    assert config.tenant.pattern.fullmatch("acme-01.prod_x")
    assert config.credentials.source == "vault"
    assert config.vault.kv_mount == "secret"
    assert config.vault.kv_version == 2
    assert config.vault.path == "genesys/tenants/{tenant}"
    assert config.genesys.api_url == "https://api.{domain}"
    assert config.genesys.login_url == "https://login.{domain}"
    assert config.genesys.refresh_at == 0.8
    assert config.local_token_endpoint is True


def _config_keys(section: object, prefix: str = "") -> set[str]:
    """Every key path of a config (`vault.auth.method`), from its dataclasses."""
    keys: set[str] = set()
    for field in dataclasses.fields(section):  # type: ignore[arg-type]
        value = getattr(section, field.name)
        if dataclasses.is_dataclass(value):
            keys |= _config_keys(value, f"{prefix}{field.name}.")
        else:
            keys.add(prefix + field.name)
    return keys


def _yaml_keys(data: dict[str, Any], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for key, value in data.items():
        if isinstance(value, dict) and value:
            keys |= _yaml_keys(value, f"{prefix}{key}.")
        else:
            keys.add(prefix + key)
    return keys


def test_example_file_documents_every_key_and_loads_to_the_defaults() -> None:
    example = ROOT / "config" / "proxy.example.yaml"
    data = yaml.safe_load(example.read_text(encoding="utf-8"))
    # Every key written out, not merely defaults by omission: an empty file would load too.
    assert isinstance(data, dict), "the example config is empty"
    assert _yaml_keys(data) == _config_keys(Config())
    assert load_config(example) == Config()


def test_empty_file_is_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing\n")
    assert load_config(path) == Config()


def test_vault_environment_fills_unset_keys_only() -> None:
    env = {
        "VAULT_ADDR": "http://10.0.0.1:8200",
        "VAULT_TOKEN": "fake-root-token",
        "VAULT_NAMESPACE": "team-a",
        "VAULT_CACERT": "/etc/ca.pem",
    }
    config = parse_config({}, env)
    assert config.vault.address == "http://10.0.0.1:8200"
    assert config.vault.auth.token == "fake-root-token"
    assert config.vault.namespace == "team-a"
    assert str(config.vault.ca_cert) == "/etc/ca.pem"
    config = parse_config({"vault": {"address": "https://vault:8200"}}, env)
    assert config.vault.address == "https://vault:8200"


def test_repr_redacts_the_vault_token() -> None:
    config = parse_config({"vault": {"auth": {"token": "fake-secret-token-xyz"}}})
    assert "fake-secret-token-xyz" not in repr(config)
    assert "fake-secret-token-xyz" not in str(config)
    assert config.vault.auth.token == "fake-secret-token-xyz"


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"listen": {"prot": 8080}}, "listen.prot"),
        ({"bogus": 1}, "bogus"),
        ({"listen": {"port": 70000}}, "listen.port"),
        ({"listen": {"port": "8080"}}, "listen.port"),
        ({"listen": {"port": True}}, "listen.port"),
        ({"listen": {"max_body_bytes": -1}}, "listen.max_body_bytes"),
        ({"admin": {"port": -5}}, "admin.port"),
        ({"admin": "loopback"}, "admin"),
        ({"tenant": {"pattern": "([a-z"}}, "tenant.pattern"),
        ({"tenant": {"header": "X Tenant"}}, "tenant.header"),
        ({"tenant": {"header": "Authorization"}}, "tenant.header"),
        ({"tenant": {"default": "../etc"}}, "tenant.default"),
        ({"credentials": {"source": "postgres"}}, "credentials.source"),
        ({"credentials": {"source": "file"}}, "credentials.file"),
        ({"credentials": {"ttl": "long"}}, "credentials.ttl"),
        ({"credentials": {"stale_ttl": -1}}, "credentials.stale_ttl"),
        ({"listen": {"port\nx": 1}}, "listen.'port\\nx'"),
        ({"vault": {"kv_version": 3}}, "vault.kv_version"),
        ({"vault": {"path": "genesys/{tenant}/{other}"}}, "vault.path"),
        ({"vault": {"path": "genesys/static"}}, "vault.path"),
        ({"vault": {"address": "vault:8200"}}, "vault.address"),
        ({"vault": {"auth": {"method": "ldap"}}}, "vault.auth.method"),
        ({"vault": {"auth": {"method": "kubernetes"}}}, "vault.auth.role"),
        ({"vault": {"auth": {"method": "approle", "role_id": "r"}}}, "vault.auth.secret_id_file"),
        ({"vault": {"auth": {"extra": 1}}}, "vault.auth.extra"),
        ({"genesys": {"api_url": "api.{domain}"}}, "genesys.api_url"),
        ({"genesys": {"login_url": "ftp://login.{domain}"}}, "genesys.login_url"),
        ({"genesys": {"api_url": "https://api.{region}"}}, "genesys.api_url"),
        ({"genesys": {"refresh_at": 1.5}}, "genesys.refresh_at"),
        ({"genesys": {"timeout": 0}}, "genesys.timeout"),
        ({"log": {"level": "loud"}}, "log.level"),
        ({"local_token_endpoint": "yes"}, "local_token_endpoint"),
    ],
)
def test_bad_values_name_the_offending_key(data: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    assert caught.value.key == key
    assert str(caught.value).startswith(f"{key}: ")


def test_url_template_error_shows_the_template_not_a_formatted_url() -> None:
    with pytest.raises(ConfigError, match=r"'api\.\{domain\}' needs an http"):
        parse_config({"genesys": {"api_url": "api.{domain}"}})


def test_a_document_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(path)


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("listen:\n  port: 8080\n bad: [\n")
    with pytest.raises(ConfigError, match="line"):
        load_config(path)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "nope.yaml")
    assert caught.value.key == "--config"


def test_file_source_and_url_templates_load(tmp_path: Path) -> None:
    config = parse_config(
        {
            "credentials": {"source": "file", "file": str(tmp_path / "t.yaml")},
            "genesys": {"api_url": "http://127.0.0.1:9999/api/{domain}/"},
            "tenant": {"default": "acme"},
        }
    )
    assert config.credentials.file == tmp_path / "t.yaml"
    assert config.genesys.api_url == "http://127.0.0.1:9999/api/{domain}"
    assert config.tenant.default == "acme"
