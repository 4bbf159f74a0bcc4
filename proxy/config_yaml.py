"""A Config written back as YAML: every key, commented, loading back to the same Config.

`render_config()` is what `check-config --print` and `init-config` print. Keys come from the
dataclasses in `proxy.config`, so a key added there is printed without a change here (give it a
note in `NOTES`; a test asks for one). Secrets (fields declared with `repr=False`) are printed as
`<redacted>`, which `load_config()` refuses, so a printed file never passes for a working one.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from proxy.config import REDACTED, VAULT_ENV, Config
from proxy.errors import ConfigError

COMMENT_COLUMN = 33

# One line per key (or section) for the reader of a printed config; keep them short. Keys other
# branches are adding (listen.allowed_hosts, vault.timeout, genesys.rate_limit.*) have theirs
# already: a note for a key that does not exist is never printed.
NOTES: dict[str, str] = {
    "listen": "the app-facing proxy listener",
    "listen.host": "keep it on loopback: the pod's app is the only client",
    "listen.port": "0 lets the kernel pick a free port",
    "listen.max_body_bytes": "larger request bodies get 413 body_too_large",
    "listen.shutdown_grace": "seconds in-flight requests get after SIGTERM",
    "listen.idle_timeout": "seconds a connection may wait between requests, or a body stall",
    "listen.allowed_hosts": "Host names accepted besides loopback ones; ['*']: any",
    "admin": "/metrics, /healthz, /readyz, /admin",
    "admin.host": "not loopback (a pod IP): /admin* then needs token_file",
    "admin.port": "Prometheus and the kubelet's probes come here",
    "admin.token_file": "bearer token for /admin*, re-read when the file changes",
    "tenant": "which tenant a request is for",
    "tenant.header": "the header naming the tenant; removed before forwarding",
    "tenant.pattern": "ids that do not match get 400 invalid_tenant",
    "tenant.default": "tenant used when the header is absent",
    "tenant.max_tenants": "most tenants whose records and tokens are cached at once",
    "credentials": "where tenants' OAuth clients come from",
    "credentials.source": "vault | file",
    "credentials.file": "source=file: YAML {tenant: {client_id, client_secret, region}}",
    "credentials.ttl": "seconds a credential record stays cached",
    "credentials.negative_ttl": "seconds an unknown tenant is remembered as unknown",
    "credentials.stale_ttl": "seconds past ttl a record is still used while Vault is down",
    "vault": "VAULT_ADDR, VAULT_NAMESPACE, VAULT_CACERT, VAULT_TOKEN fill unset keys",
    "vault.address": "http(s) URL of Vault or OpenBao",
    "vault.namespace": "Vault Enterprise / OpenBao namespace",
    "vault.ca_cert": "CA bundle for Vault's TLS",
    "vault.kv_mount": "the KV secrets engine's mount",
    "vault.kv_version": "1 | 2",
    "vault.path": "one secret per tenant: client_id, client_secret, region",
    "vault.timeout": "seconds a Vault call may take for a request, queueing included",
    "vault.auth": "how the proxy logs in to Vault",
    "vault.auth.method": "token | kubernetes | approle",
    "vault.auth.token": "token: a literal (prefer $VAULT_TOKEN) ...",
    "vault.auth.token_file": "... or a file, re-read when it changes (Vault Agent sink)",
    "vault.auth.role": "kubernetes: the Vault role ($GENESYS_PROXY_VAULT_ROLE)",
    "vault.auth.jwt_file": "kubernetes: the service-account token, read at every login",
    "vault.auth.role_id": "approle: the role id",
    "vault.auth.secret_id_file": "approle: file holding the secret id",
    "vault.auth.mount": "auth mount path; null: the method's name",
    "genesys": "Genesys Cloud; {domain} is the tenant's region domain",
    "genesys.api_url": "where API requests go",
    "genesys.login_url": "where tokens come from (POST .../oauth/token)",
    "genesys.ca_file": "extra CA bundle for both (a TLS-inspecting egress proxy)",
    "genesys.refresh_at": "refresh in the background after this fraction of a token's life",
    "genesys.timeout": "seconds to wait for the upstream (between reads)",
    "genesys.connect_timeout": "seconds to connect to the upstream",
    "genesys.rate_limit": "absorbing Genesys' per-token rate limits",
    "genesys.rate_limit.max_wait": "seconds a request may be held for budget or a Retry-After",
    "genesys.rate_limit.retries": "upstream 429s replayed per request",
    "genesys.rate_limit.tokens_per_tenant": "tokens a tenant may hold at once",
    "genesys.rate_limit.max_waiting": "requests of one tenant held at once; more: rate_limited",
    "log": "on stderr",
    "log.level": "debug | info | warning | error",
    "log.format": "text | json",
    "log.access": "one proxy.access line per request on the proxy listener",
    "metrics": "on the admin listener's /metrics",
    "metrics.tenant_label": "false drops the tenant label, for sidecars serving huge fleets",
    "local_token_endpoint": "serve GET /auth/token and POST /oauth/token",
}

_ENV_OF = {".".join(keys): var for var, keys in VAULT_ENV.items()}


def render_config(
    config: Config, env: Mapping[str, str] | None = None, *, header: Sequence[str] = ()
) -> str:
    """The config as commented YAML; `env` says which values came from environment variables.

    A secret that came from the environment is printed as null (the same environment fills it
    again on load); any other secret as `<redacted>`.
    """
    lines = [f"# {line}" if line else "#" for line in header]
    if lines:
        lines.append("")
    _render_section(config, "", 0, env or {}, lines)
    return "\n".join(lines) + "\n"


def defaults_template() -> str:
    """What `init-config` writes: every key at its default, commented."""
    return render_config(
        Config(),
        header=(
            "genesys-token-proxy configuration: every key, with its default.",
            "Every key is optional: delete the ones you keep at their default.",
            "Check it with:  genesys-token-proxy check-config --config FILE",
        ),
    )


def apply_settings(data: Any, settings: Sequence[str]) -> dict[str, Any]:
    """`KEY=VALUE` pairs (`vault.address=http://...`) merged into a parsed YAML document.

    VALUE is read as YAML (`8080` is a number, `null` is null, `[a, b]` a list); the result
    still goes through `parse_config`, which names any bad key or value.
    """
    merged: dict[str, Any] = dict(data) if isinstance(data, dict) else {}
    for setting in settings:
        key, equals, raw = setting.partition("=")
        key = key.strip()
        if not equals or not key or any(not part for part in key.split(".")):
            # Not echoed: the value could be a secret typed in the wrong place.
            raise ConfigError("--set", "expects KEY=VALUE (vault.address=http://...)")
        if key in secret_keys():
            raise ConfigError(
                key,
                "is a secret and never taken from the command line (ps and shell history "
                "would keep it): use its environment variable or a file key",
            )
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(key, f"--set value {raw!r} is not valid YAML") from exc
        section = merged
        *parents, leaf = key.split(".")
        for index, part in enumerate(parents):
            child = section.get(part)
            if child is None:
                child = section[part] = {}
            elif isinstance(child, dict):
                child = section[part] = dict(child)
            else:
                raise ConfigError(".".join(parents[: index + 1]), "must be a mapping")
            section = child
        section[leaf] = value
    return merged


def secret_keys(section: Any = None, prefix: str = "") -> set[str]:
    """Dotted names of the config's secrets: the dataclass fields declared `repr=False`."""
    section = Config() if section is None else section
    keys: set[str] = set()
    for item in dataclasses.fields(section):
        value = getattr(section, item.name)
        if dataclasses.is_dataclass(value):
            keys |= secret_keys(value, f"{prefix}{item.name}.")
        elif not item.repr:
            keys.add(f"{prefix}{item.name}")
    return keys


def _render_section(
    section: Any, prefix: str, depth: int, env: Mapping[str, str], lines: list[str]
) -> None:
    indent = "  " * depth
    for item in dataclasses.fields(section):
        key = f"{prefix}{item.name}"
        value = getattr(section, item.name)
        if dataclasses.is_dataclass(value):
            lines.append(_with_note(f"{indent}{item.name}:", NOTES.get(key)))
            _render_section(value, f"{key}.", depth + 1, env, lines)
            if depth == 0:
                lines.append("")
            continue
        note = NOTES.get(key)
        var = _ENV_OF.get(key)
        from_env = var is not None and value is not None and env.get(var) == str(value)
        if not item.repr:  # a secret
            if from_env:
                value, note = None, f"from ${var} (not printed)"
            elif value is not None:
                value = REDACTED
        elif from_env:
            note = f"from ${var}" + (f"; {note}" if note else "")
        lines.append(_with_note(f"{indent}{item.name}: {_scalar(value)}", note))
    if depth == 0 and lines and lines[-1] == "":
        lines.pop()


def _with_note(text: str, note: str | None) -> str:
    if not note:
        return text
    if len(text) < COMMENT_COLUMN - 1:
        return f"{text.ljust(COMMENT_COLUMN - 1)} # {note}"
    # A long value: the note goes on its own line above it, at the key's indent.
    indent = text[: len(text) - len(text.lstrip())]
    return f"{indent}# {note}\n{text}"


def _scalar(value: Any) -> str:
    """One value in YAML flow style, on one line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, re.Pattern):
        return _scalar(value.pattern)
    if isinstance(value, Path):
        return _scalar(str(value))
    if isinstance(value, frozenset | set):
        return _scalar(sorted(value, key=str))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_scalar(item) for item in value) + "]"
    if isinstance(value, Mapping):
        pairs = (f"{_scalar(str(key))}: {_scalar(item)}" for key, item in value.items())
        return "{" + ", ".join(pairs) + "}"
    text = str(value)
    dumped = yaml.safe_dump(text, default_flow_style=True, width=1 << 30, allow_unicode=True)
    dumped = dumped.removesuffix("\n").removesuffix("\n...")
    if "\n" in dumped or "#" in text:
        # JSON strings are YAML double-quoted scalars: one line, whatever the text holds.
        return json.dumps(text)
    return dumped
