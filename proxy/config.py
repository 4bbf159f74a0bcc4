"""The configuration: one immutable, typed value built once from YAML and the environment.

`load_config()` is the only way in. Every key is optional; unknown keys and bad values raise
`ConfigError` naming the key (`listen.port`). Nothing below the CLI reads the environment.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import yaml
from yarl import URL

from proxy.errors import ConfigError, InvalidTenant
from proxy.tenants.ids import check_tenant_id

DEFAULT_TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
# What `check-config --print` shows in place of a secret; refused on load, wherever it appears.
REDACTED = "<redacted>"

# The standard Vault variables fill these keys when the file leaves them unset.
VAULT_ENV = {
    "VAULT_ADDR": ("vault", "address"),
    "VAULT_NAMESPACE": ("vault", "namespace"),
    "VAULT_CACERT": ("vault", "ca_cert"),
    "VAULT_TOKEN": ("vault", "auth", "token"),
    # Not a Vault variable: the injector sets it per pod, so one ConfigMap serves every role.
    "GENESYS_PROXY_VAULT_ROLE": ("vault", "auth", "role"),
}


@dataclass(frozen=True)
class ListenConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 10 * 1024 * 1024
    shutdown_grace: float = 20.0
    idle_timeout: float = 60.0
    # Host names accepted besides loopback ones while listening on loopback; ("*",): any.
    allowed_hosts: tuple[str, ...] = ()


@dataclass(frozen=True)
class AdminConfig:
    host: str = "127.0.0.1"
    port: int = 9090
    token_file: Path | None = None


@dataclass(frozen=True)
class TenantConfig:
    header: str = "X-Tenant-ID"
    pattern: re.Pattern[str] = re.compile(DEFAULT_TENANT_PATTERN)
    default: str | None = None
    max_tenants: int = 10_000


@dataclass(frozen=True)
class CredentialsConfig:
    source: Literal["vault", "file"] = "vault"
    file: Path | None = None
    ttl: float = 300.0
    negative_ttl: float = 30.0
    stale_ttl: float = 86400.0


@dataclass(frozen=True)
class VaultAuthConfig:
    method: Literal["token", "kubernetes", "approle"] = "token"
    token: str | None = field(default=None, repr=False)
    token_file: Path | None = None
    role: str | None = None
    jwt_file: Path = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
    role_id: str | None = None
    secret_id_file: Path | None = None
    mount: str | None = None

    def __repr__(self) -> str:
        # Every field, the secret ones (repr=False) as <redacted> when set.
        parts = []
        for item in fields(self):
            value = getattr(self, item.name)
            if not item.repr and value is not None:
                value = REDACTED
            parts.append(f"{item.name}={value!r}")
        return f"VaultAuthConfig({', '.join(parts)})"


@dataclass(frozen=True)
class VaultConfig:
    address: str = "http://127.0.0.1:8200"
    namespace: str | None = None
    ca_cert: Path | None = None
    kv_mount: str = "secret"
    kv_version: Literal[1, 2] = 2
    path: str = "genesys/tenants/{tenant}"
    # Seconds a Vault call made for a request may take in all, queueing for a worker included.
    timeout: float = 5.0
    auth: VaultAuthConfig = VaultAuthConfig()


@dataclass(frozen=True)
class RateLimitConfig:
    # Seconds a request may be held for a budget window or a 429's Retry-After; 0: never.
    max_wait: float = 5.0
    retries: int = 2  # upstream 429s replayed per request
    tokens_per_tenant: int = 1
    max_waiting: int = 1000  # requests of one tenant held at once; more get rate_limited


@dataclass(frozen=True)
class GenesysConfig:
    api_url: str = "https://api.{domain}"
    login_url: str = "https://login.{domain}"
    ca_file: Path | None = None
    refresh_at: float = 0.8
    timeout: float = 30.0
    connect_timeout: float = 5.0
    rate_limit: RateLimitConfig = RateLimitConfig()


@dataclass(frozen=True)
class LogConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"
    # One line per proxied request, queued and written in batches by a thread (see
    # proxy.ops.access_log; its cost per request: docs/performance.md).
    access: bool = True


@dataclass(frozen=True)
class MetricsConfig:
    # Off for very large fleets: per-tenant series multiply with every tenant a sidecar serves.
    tenant_label: bool = True


@dataclass(frozen=True)
class Config:
    listen: ListenConfig = ListenConfig()
    admin: AdminConfig = AdminConfig()
    tenant: TenantConfig = TenantConfig()
    credentials: CredentialsConfig = CredentialsConfig()
    vault: VaultConfig = VaultConfig()
    genesys: GenesysConfig = GenesysConfig()
    log: LogConfig = LogConfig()
    metrics: MetricsConfig = MetricsConfig()
    local_token_endpoint: bool = True


def load_config(path: str | Path | None, env: Mapping[str, str] | None = None) -> Config:
    """Read `path` (or only the defaults when None), fill Vault keys from `env`, validate."""
    data: Any = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError("--config", f"cannot read {path}: {exc.strerror}") from exc
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem_mark", None)
            line = f" at line {where.line + 1}" if where is not None else ""
            raise ConfigError("--config", f"{path} is not valid YAML{line}") from exc
        if data is None:
            data = {}
    return parse_config(data, env or {})


def parse_config(data: Any, env: Mapping[str, str] | None = None) -> Config:
    """Build a Config from an already-parsed mapping (the YAML document)."""
    root = _Section(data, "")
    env = env or {}
    vault_data = root.section("vault")
    for var, keys in VAULT_ENV.items():
        value = env.get(var)
        if value:
            _fill_default(vault_data, keys[1:], value)

    listen = root.section("listen")
    admin = root.section("admin")
    tenant = root.section("tenant")
    creds = root.section("credentials")
    auth = vault_data.section("auth")
    genesys = root.section("genesys")
    rate_limit = genesys.section("rate_limit")
    log = root.section("log")
    metrics = root.section("metrics")

    config = Config(
        listen=ListenConfig(
            host=listen.string("host", ListenConfig.host),
            port=listen.port("port", ListenConfig.port),
            max_body_bytes=listen.integer("max_body_bytes", ListenConfig.max_body_bytes, low=0),
            shutdown_grace=listen.number("shutdown_grace", ListenConfig.shutdown_grace, low=0),
            idle_timeout=listen.number("idle_timeout", ListenConfig.idle_timeout, low=0.1),
            allowed_hosts=listen.host_names("allowed_hosts"),
        ),
        admin=AdminConfig(
            host=admin.string("host", AdminConfig.host),
            port=admin.port("port", AdminConfig.port),
            token_file=admin.path("token_file"),
        ),
        tenant=TenantConfig(
            header=tenant.header_name("header", TenantConfig.header),
            pattern=tenant.regex("pattern", DEFAULT_TENANT_PATTERN),
            default=tenant.optional_string("default"),
            max_tenants=tenant.integer("max_tenants", TenantConfig.max_tenants, low=1),
        ),
        credentials=CredentialsConfig(
            source=creds.choice("source", ("vault", "file"), "vault"),
            file=creds.path("file"),
            ttl=creds.number("ttl", CredentialsConfig.ttl, low=0),
            negative_ttl=creds.number("negative_ttl", CredentialsConfig.negative_ttl, low=0),
            stale_ttl=creds.number("stale_ttl", CredentialsConfig.stale_ttl, low=0),
        ),
        vault=VaultConfig(
            address=vault_data.url("address", VaultConfig.address),
            namespace=vault_data.optional_string("namespace"),
            ca_cert=vault_data.path("ca_cert"),
            kv_mount=vault_data.string("kv_mount", VaultConfig.kv_mount).strip("/"),
            kv_version=cast(Literal[1, 2], vault_data.choice("kv_version", (1, 2), 2)),
            path=vault_data.template("path", VaultConfig.path, "tenant"),
            timeout=vault_data.number("timeout", VaultConfig.timeout, low=0.001),
            auth=VaultAuthConfig(
                method=auth.choice("method", ("token", "kubernetes", "approle"), "token"),
                token=auth.optional_string("token"),
                token_file=auth.path("token_file"),
                role=auth.optional_string("role"),
                jwt_file=auth.path("jwt_file") or VaultAuthConfig.jwt_file,
                role_id=auth.optional_string("role_id"),
                secret_id_file=auth.path("secret_id_file"),
                mount=auth.optional_string("mount"),
            ),
        ),
        genesys=GenesysConfig(
            api_url=genesys.url_template("api_url", GenesysConfig.api_url),
            login_url=genesys.url_template("login_url", GenesysConfig.login_url),
            ca_file=genesys.path("ca_file"),
            refresh_at=genesys.number("refresh_at", GenesysConfig.refresh_at, low=0.05, high=0.95),
            timeout=genesys.number("timeout", GenesysConfig.timeout, low=0.001),
            connect_timeout=genesys.number(
                "connect_timeout", GenesysConfig.connect_timeout, low=0.001
            ),
            rate_limit=RateLimitConfig(
                max_wait=rate_limit.number("max_wait", RateLimitConfig.max_wait, low=0, high=300),
                retries=rate_limit.integer("retries", RateLimitConfig.retries, low=0, high=10),
                tokens_per_tenant=rate_limit.integer(
                    "tokens_per_tenant", RateLimitConfig.tokens_per_tenant, low=1, high=20
                ),
                max_waiting=rate_limit.integer(
                    "max_waiting", RateLimitConfig.max_waiting, low=0, high=100_000
                ),
            ),
        ),
        log=LogConfig(
            level=log.choice("level", ("debug", "info", "warning", "error"), "info"),
            format=log.choice("format", ("text", "json"), "text"),
            access=log.boolean("access", True),
        ),
        metrics=MetricsConfig(tenant_label=metrics.boolean("tenant_label", True)),
        local_token_endpoint=root.boolean("local_token_endpoint", True),
    )
    sections = (
        root,
        listen,
        admin,
        tenant,
        creds,
        vault_data,
        auth,
        genesys,
        rate_limit,
        log,
        metrics,
    )
    everywhere = [section.key(name) for section in sections for name in section.known()]
    for section in sections:
        section.reject_unknown(everywhere)
    _check_consistency(config)
    return config


def changed_keys(old: Config, new: Config) -> list[str]:
    """The dotted names of the keys whose values differ (`listen.port`, `vault.auth.token`)."""
    return _changed(old, new, "")


def _changed(old: Any, new: Any, prefix: str) -> list[str]:
    if not (is_dataclass(old) and is_dataclass(new)):
        return [prefix] if old != new else []
    keys: list[str] = []
    for item in fields(old):
        name = f"{prefix}.{item.name}" if prefix else item.name
        keys.extend(_changed(getattr(old, item.name), getattr(new, item.name), name))
    return keys


def with_keys_from(base: Config, source: Config, keys: list[str] | tuple[str, ...]) -> Config:
    """`base`, with the values of `keys` (dotted names, or whole sections) taken from `source`.

    The result is checked as a whole, like a loaded file: keys that depend on each other
    (`tenant.default` must match `tenant.pattern`) stay consistent.
    """
    merged = base
    for key in keys:
        merged = _replace_path(merged, source, key.split("."))
    _check_consistency(merged)
    return merged


def _replace_path(base: Any, source: Any, path: list[str]) -> Any:
    name, rest = path[0], path[1:]
    if not hasattr(base, name):
        return base  # a section a later version adds: nothing to take from it yet
    value = _replace_path(getattr(base, name), getattr(source, name), rest) if rest else None
    return replace(base, **{name: value if rest else getattr(source, name)})


def _check_consistency(config: Config) -> None:
    if config.credentials.source == "file" and config.credentials.file is None:
        raise ConfigError("credentials.file", "is required when credentials.source is 'file'")
    auth = config.vault.auth
    if config.credentials.source == "vault":
        if auth.method == "kubernetes" and not auth.role:
            raise ConfigError("vault.auth.role", "is required for the kubernetes auth method")
        if auth.method == "approle" and not (auth.role_id and auth.secret_id_file):
            key = "vault.auth.role_id" if not auth.role_id else "vault.auth.secret_id_file"
            raise ConfigError(key, "is required for the approle auth method")
    if config.tenant.default is not None:
        try:
            check_tenant_id(config.tenant.default, config.tenant.pattern)
        except InvalidTenant as exc:
            # Every request without a tenant header would be refused: say so at start-up.
            raise ConfigError("tenant.default", exc.message) from None


def _fill_default(section: _Section, keys: tuple[str, ...], value: str) -> None:
    for key in keys[:-1]:
        section = section.section(key)
    section.set_default(keys[-1], value)


T = TypeVar("T")


class _Section:
    """One mapping of the YAML document; remembers which keys were read, to reject the rest."""

    def __init__(self, data: Any, prefix: str) -> None:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(prefix or "<root>", "must be a mapping")
        self._data: dict[str, Any] = dict(data)
        self._prefix = prefix
        self._seen: set[str] = set()
        self._children: dict[str, _Section] = {}

    def key(self, name: str) -> str:
        return f"{self._prefix}.{name}" if self._prefix else name

    def set_default(self, name: str, value: Any) -> None:
        if self._data.get(name) is None:
            self._data[name] = value

    def section(self, name: str) -> _Section:
        if name not in self._children:
            self._seen.add(name)
            self._children[name] = _Section(self._data.get(name), self.key(name))
        return self._children[name]

    def known(self) -> set[str]:
        """The keys this section has (those the parser asked for)."""
        return set(self._seen)

    def reject_unknown(self, everywhere: list[str]) -> None:
        """Raise for the first key nobody asked for, with the nearest known key as a hint."""
        for name in self._data:
            if not isinstance(name, str) or name not in self._seen:
                # Quoted when odd (a newline, a number): the error must stay one line.
                shown = name if isinstance(name, str) and name.isprintable() else repr(name)
                raise ConfigError(
                    self.key(shown), "unknown key", hint=self._nearest(name, everywhere)
                )

    def _nearest(self, name: object, everywhere: list[str]) -> str | None:
        """A known key in this section spelt like `name`, else one in another section."""
        if not isinstance(name, str) or not name.isprintable():
            return None
        close = difflib.get_close_matches(name.lower(), sorted(self._seen), n=1, cutoff=0.6)
        if close:
            return self.key(close[0])
        # The right name in the wrong place (`listen.token_file`: it is admin.token_file).
        elsewhere = [key for key in everywhere if key.rpartition(".")[2] == name]
        return elsewhere[0] if len(elsewhere) == 1 else None

    def _get(self, name: str) -> Any:
        self._seen.add(name)
        value = self._data.get(name)
        if value == REDACTED:
            raise ConfigError(
                self.key(name),
                f"is {REDACTED}, the placeholder check-config --print shows for a secret: "
                "put the real value here, or leave the key out and set its environment variable",
            )
        return value

    def _typed(self, name: str, kind: type[T] | tuple[type, ...], what: str) -> T | None:
        value = self._get(name)
        if value is None:
            return None
        if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
            raise ConfigError(self.key(name), f"must be {what}, not {type(value).__name__}")
        return cast(T, value)

    def string(self, name: str, default: str) -> str:
        value = self.optional_string(name)
        if value is None:
            return default
        if not value:
            raise ConfigError(self.key(name), "must not be empty")
        return value

    def optional_string(self, name: str) -> str | None:
        value = self._typed(name, str, "a string")
        return value if value else None

    def boolean(self, name: str, default: bool) -> bool:
        value = self._typed(name, bool, "true or false")
        return default if value is None else value

    def integer(
        self, name: str, default: int, *, low: int | None = None, high: int | None = None
    ) -> int:
        value = self._typed(name, int, "an integer")
        if value is None:
            return default
        if low is not None and value < low:
            raise ConfigError(self.key(name), f"must be at least {low}, not {value}")
        if high is not None and value > high:
            raise ConfigError(self.key(name), f"must be at most {high}, not {value}")
        return value

    def number(self, name: str, default: float, *, low: float, high: float | None = None) -> float:
        value = self._typed(name, (int, float), "a number")
        if value is None:
            return default
        # YAML reads .nan and .inf as floats; NaN passes every comparison below.
        if not math.isfinite(value):
            raise ConfigError(self.key(name), f"must be a finite number, not {value}")
        if value < low or (high is not None and value > high):
            bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise ConfigError(self.key(name), f"must be {bounds}, not {value}")
        return float(value)

    def port(self, name: str, default: int) -> int:
        value = self.integer(name, default)
        if not 0 <= value <= 65535:
            raise ConfigError(self.key(name), f"must be a port number 0-65535, not {value}")
        return value

    def path(self, name: str) -> Path | None:
        value = self.optional_string(name)
        return Path(value) if value else None

    def host_names(self, name: str) -> tuple[str, ...]:
        """A list of host names (no scheme, no port), lower-cased; `*` alone means any."""
        value = self._get(name)
        if value is None:
            return ()
        if not isinstance(value, list):
            raise ConfigError(self.key(name), f"must be a list, not {type(value).__name__}")
        names: list[str] = []
        for index, item in enumerate(value):
            key = f"{self.key(name)}[{index}]"
            if not isinstance(item, str) or not item:
                raise ConfigError(key, "must be a non-empty string")
            host = item.lower().removeprefix("[").removesuffix("]").rstrip(".") or item
            if item != "*" and not _is_host_name(host):
                raise ConfigError(
                    key, f"{item!r} is not a host name or address (no scheme, no port)"
                )
            names.append(host)
        if "*" in names and len(names) > 1:
            raise ConfigError(self.key(name), "'*' allows any host: list it alone")
        return tuple(names)

    def choice(self, name: str, options: tuple[Any, ...], default: Any) -> Any:
        value = self._get(name)
        if value is None:
            return default
        if value not in options or isinstance(value, bool):
            allowed = " | ".join(str(o) for o in options)
            raise ConfigError(self.key(name), f"must be one of {allowed}, not {value!r}")
        return value

    def header_name(self, name: str, default: str) -> str:
        value = self.string(name, default)
        if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", value):
            raise ConfigError(self.key(name), f"{value!r} is not a valid HTTP header name")
        if value.lower() in {"authorization", "host", "content-length", "transfer-encoding"}:
            raise ConfigError(self.key(name), f"{value!r} cannot carry the tenant")
        return value

    def regex(self, name: str, default: str) -> re.Pattern[str]:
        value = self.string(name, default)
        try:
            return re.compile(value)
        except re.error as exc:
            raise ConfigError(self.key(name), f"is not a valid regular expression: {exc}") from exc

    def template(self, name: str, default: str, placeholder: str) -> str:
        value = self.string(name, default)
        try:
            value.format_map({placeholder: "x"})
        except (KeyError, ValueError, IndexError) as exc:
            raise ConfigError(
                self.key(name), f"may only use the {{{placeholder}}} placeholder"
            ) from exc
        if f"{{{placeholder}}}" not in value:
            raise ConfigError(self.key(name), f"must contain {{{placeholder}}}")
        return value

    def url(self, name: str, default: str) -> str:
        value = self.string(name, default)
        _check_url(self.key(name), value, shown=value)
        return value.rstrip("/")

    def url_template(self, name: str, default: str) -> str:
        value = self.template(name, default, "domain")
        _check_url(self.key(name), value.format(domain="mypurecloud.com"), shown=value)
        return value.rstrip("/")


def _is_host_name(host: str) -> bool:
    if ":" in host:  # only an IPv6 address has colons; a port does not belong here
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return False
        return True
    return re.fullmatch(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?", host) is not None


def _check_url(key: str, value: str, *, shown: str) -> None:
    try:
        url = URL(value)
    except ValueError as exc:
        raise ConfigError(key, f"{shown!r} is not a URL") from exc
    if url.scheme not in ("http", "https"):
        raise ConfigError(key, f"{shown!r} needs an http:// or https:// scheme")
    if not url.host:
        raise ConfigError(key, f"{shown!r} has no host")
    if url.query_string or url.fragment:
        raise ConfigError(key, f"{shown!r} must not have a query or fragment")
