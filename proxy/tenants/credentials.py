"""Tenants' Genesys OAuth clients: where they come from (Vault or a file) and their cache."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import yaml
from cachetools import TTLCache

from proxy.config import Config
from proxy.errors import (
    ConfigError,
    InvalidTenantCredentials,
    ProxyError,
    UnknownTenant,
    VaultUnavailable,
)
from proxy.regions import resolve_region
from proxy.tenants.ids import check_tenant_id
from proxy.tenants.singleflight import SingleFlight

if TYPE_CHECKING:
    # Imported when a Vault source is built: hvac and requests are 7-8 MB of resident memory
    # that a daemon on the file source never uses.
    from proxy.vault.session import HealthObserver, RequestObserver, VaultSession

log = logging.getLogger("proxy.tenants.credentials")


@dataclass(frozen=True, slots=True)
class TenantCredentials:
    """One tenant's Genesys OAuth client; `region` is already resolved to a Genesys domain."""

    tenant: str
    client_id: str
    client_secret: str = field(repr=False)
    region: str


class CredentialSource(Protocol):
    """Where credential records live; `fetch` reads one, uncached."""

    name: str

    async def start(self) -> None: ...

    async def fetch(self, tenant: str) -> TenantCredentials:
        """Raise UnknownTenant, TenantForbidden, VaultUnavailable or InvalidTenantCredentials."""
        ...

    async def ready(self) -> bool: ...

    async def close(self) -> None: ...


# Each field's accepted spellings, preferred first: the old tenant service wrote camelCase.
_FIELDS = {
    "client_id": ("client_id", "clientId"),
    "client_secret": ("client_secret", "clientSecret"),
    "region": ("region",),
}


def parse_record(tenant: str, data: Mapping[str, Any]) -> TenantCredentials:
    """Validate a stored record; problems name the field, never a value (it may be the secret)."""
    values: dict[str, str] = {}
    for name, spellings in _FIELDS.items():
        key = next((key for key in spellings if data.get(key) not in (None, "")), None)
        if key is None:
            raise InvalidTenantCredentials(
                f"the credential record of tenant {tenant!r} has no {name}", tenant=tenant
            )
        value = data[key]
        if not isinstance(value, str) or not value.strip():
            raise InvalidTenantCredentials(
                f"the credential record of tenant {tenant!r} has a {key} that is blank or "
                f"not a string",
                tenant=tenant,
            )
        values[name] = value.strip()
    try:
        region = resolve_region(values["region"])
    except ValueError as exc:
        raise InvalidTenantCredentials(
            f"the credential record of tenant {tenant!r} has a bad region: {exc}", tenant=tenant
        ) from exc
    return TenantCredentials(
        tenant=tenant,
        client_id=values["client_id"],
        client_secret=values["client_secret"],
        region=region,
    )


class VaultCredentialSource:
    """One KV secret per tenant, at `path_template` formatted with the tenant id."""

    name = "vault"

    def __init__(self, session: VaultSession, path_template: str) -> None:
        self._session = session
        self._path_template = path_template

    def __repr__(self) -> str:
        return f"VaultCredentialSource({self._session!r}, path={self._path_template!r})"

    @property
    def session(self) -> VaultSession:
        return self._session

    async def start(self) -> None:
        await self._session.start()

    async def fetch(self, tenant: str) -> TenantCredentials:
        """Read and validate the tenant's secret."""
        # A configured tenant pattern may be loose; a tenant id must never walk the KV tree.
        check_tenant_id(tenant, None)
        path = self._path_template.format(tenant=tenant)
        try:
            data = await self._session.read(path)
        except ProxyError as exc:
            exc.for_tenant(tenant)
            raise
        if data is None:
            raise UnknownTenant(
                f"no credential record for tenant {tenant!r} in Vault", tenant=tenant
            )
        return parse_record(tenant, data)

    async def ready(self) -> bool:
        return await self._session.ready()

    async def close(self) -> None:
        await self._session.close()


# The file's identity: a changed mtime, size or inode means it was rewritten.
_FileStamp = tuple[int, int, int]


class FileCredentialSource:
    """A YAML file `{tenant: {client_id, client_secret, region}}`, re-read when it changes."""

    name = "file"

    def __init__(
        self,
        path: Path,
        *,
        check_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._path = path
        self._check_interval = check_interval
        self._clock = clock
        self._records: dict[str, Any] = {}
        self._stamp: _FileStamp | None = None
        self._checked_at: float | None = None
        self._problem: str | None = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"FileCredentialSource({str(self._path)!r})"

    async def start(self) -> None:
        """Load the file; an unreadable or invalid file is a configuration error."""
        try:
            self._stamp, self._records = await asyncio.to_thread(self._load)
        except _FileProblem as exc:
            raise ConfigError("credentials.file", str(exc)) from exc
        self._checked_at = self._clock()
        log.info("Loaded %d tenant(s) from %s", len(self._records), self._path)

    async def fetch(self, tenant: str) -> TenantCredentials:
        """Return the tenant's record from the latest good copy of the file."""
        await self._reload_if_changed()
        record = self._records.get(tenant)
        if record is None:
            raise UnknownTenant(
                f"no credential record for tenant {tenant!r} in credentials.file", tenant=tenant
            )
        if not isinstance(record, Mapping):
            raise InvalidTenantCredentials(
                f"the credential record of tenant {tenant!r} is not a mapping", tenant=tenant
            )
        return parse_record(tenant, record)

    async def ready(self) -> bool:
        return self._stamp is not None

    async def close(self) -> None:
        return None

    async def _reload_if_changed(self) -> None:
        now = self._clock()
        if self._checked_at is not None and now - self._checked_at < self._check_interval:
            return
        async with self._lock:
            if self._checked_at is not None and now - self._checked_at < self._check_interval:
                return
            self._checked_at = now
            try:
                stamp = await asyncio.to_thread(self._stat)
                if stamp == self._stamp:
                    return
                self._stamp, self._records = await asyncio.to_thread(self._load)
            except _FileProblem as exc:
                # Keep serving the last good copy: a half-written or broken edit must not turn
                # every tenant away. Warn once per distinct problem.
                if str(exc) != self._problem:
                    log.warning("%s; keeping the previous copy", exc)
                self._problem = str(exc)
                return
            self._problem = None
            log.info("Reloaded %d tenant(s) from %s", len(self._records), self._path)

    def _stat(self) -> _FileStamp:
        try:
            stat = self._path.stat()
        except OSError as exc:
            raise _FileProblem(f"cannot read {self._path}: {exc.strerror}") from exc
        return (stat.st_mtime_ns, stat.st_size, stat.st_ino)

    def _load(self) -> tuple[_FileStamp, dict[str, Any]]:
        """Read and check the file's shape (records are checked when a tenant is fetched)."""
        stamp = self._stat()
        try:
            text = self._path.read_text(encoding="utf-8")
        except OSError as exc:
            raise _FileProblem(f"cannot read {self._path}: {exc.strerror}") from exc
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise _FileProblem(f"{self._path} is not valid YAML{where}") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise _FileProblem(f"{self._path} must be a mapping of tenant ids to records")
        records: dict[str, Any] = {}
        for tenant, record in data.items():
            # YAML reads a tenant id like 1234 as a number.
            if isinstance(tenant, bool) or not isinstance(tenant, str | int):
                raise _FileProblem(f"{self._path} has a tenant id that is not a string: {tenant!r}")
            records[str(tenant)] = record
        return stamp, records


class _FileProblem(Exception):
    """The credentials file cannot be used; the message names the file, never a secret."""


# While the source stays unavailable, a stale record is served without asking it again for this
# long, so requests do not each wait on a Vault that times out.
STALE_RECHECK_SECONDS = 5.0


@dataclass(slots=True)
class _Cached:
    """A cached record, the time until which it is fresh, and until which it is kept at all."""

    record: TenantCredentials
    fresh_until: float
    keep_until: float


class CredentialStore:
    """Cached credential records in front of a source: one source read per tenant at a time.

    Records are fresh for `ttl` seconds. When a fresh read fails because the source is
    unavailable (Vault down, sealed, failing), the expired record is served for up to
    `stale_ttl` seconds more (stale-if-error), counted in `stale_served` and logged. An unknown
    tenant is remembered `negative_ttl` seconds so a flood of requests for it reads the source
    once per window. Other answers (forbidden, invalid records) are not cached, never served
    stale: the next request asks again.
    """

    def __init__(
        self,
        source: CredentialSource,
        *,
        ttl: float,
        negative_ttl: float,
        max_entries: int,
        stale_ttl: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self._ttl = ttl
        self._clock = clock
        self._stale_ttl = stale_ttl
        self._max_entries = max_entries
        # Kept for ttl + stale_ttl, oldest read first; each entry knows when it expires. A plain
        # dict rather than a TTLCache: that keeps a link object, an ordered-dict node and a size
        # entry per key, about 200 bytes per tenant.
        self._records: dict[str, _Cached] = {}
        self._unknown: TTLCache[str, str] = TTLCache(
            maxsize=max_entries, ttl=negative_ttl, timer=clock
        )
        self._flights: SingleFlight[str, TenantCredentials] = SingleFlight("credentials")
        # Bumped by invalidate(): a read that started before must not cache its stale result.
        self._invalidations = 0
        self.reads = 0
        self.stale_served = 0

    @property
    def source(self) -> CredentialSource:
        return self._source

    async def get(self, tenant: str) -> TenantCredentials:
        """Return the tenant's record, from the cache or read once however many callers wait."""
        cached = self._records.get(tenant)
        if cached is not None and self._clock() < cached.fresh_until:
            return cached.record
        unknown = self._unknown.get(tenant)
        if unknown is not None:
            raise UnknownTenant(unknown, tenant=tenant)
        read = functools.partial(self._read, tenant, self._invalidations)
        return await self._flights.do(tenant, read)

    def cached(self, tenant: str) -> TenantCredentials | None:
        """The cached record of `tenant` (fresh or stale), without reading the source."""
        cached = self._kept(tenant)
        return None if cached is None else cached.record

    def invalidate(self, tenant: str) -> None:
        """Forget the tenant's record (and that it was unknown); the next get reads the source."""
        self._invalidations += 1
        self._records.pop(tenant, None)
        self._unknown.pop(tenant, None)

    def known_tenants(self) -> list[str]:
        """Tenants whose records are cached, sorted."""
        now = self._clock()
        return sorted(t for t, cached in self._records.items() if now < cached.keep_until)

    async def ready(self) -> bool:
        return await self._source.ready()

    async def close(self) -> None:
        """Cancel reads in flight (the source is closed by whoever opened it)."""
        await self._flights.close()

    async def _read(self, tenant: str, invalidations: int) -> TenantCredentials:
        self.reads += 1
        try:
            record = await self._source.fetch(tenant)
        except UnknownTenant as exc:
            if invalidations == self._invalidations:
                self._unknown[tenant] = exc.message
            raise
        except VaultUnavailable as exc:
            cached = self._kept(tenant)
            if cached is None or invalidations != self._invalidations:
                raise
            return self._serve_stale(tenant, cached, exc)
        if invalidations == self._invalidations:
            self._store(tenant, record)
        return record

    def _kept(self, tenant: str) -> _Cached | None:
        """The tenant's entry unless it is past its stale grace (then it is dropped)."""
        cached = self._records.get(tenant)
        if cached is not None and self._clock() >= cached.keep_until:
            del self._records[tenant]
            return None
        return cached

    def _store(self, tenant: str, record: TenantCredentials) -> None:
        now = self._clock()
        fresh_until = now + self._ttl
        # Removed first so the entry moves to the end: the dict stays ordered oldest read first.
        records = self._records
        records.pop(tenant, None)
        # Every entry is kept equally long, so the oldest stored expires first: drop the expired
        # ones from the front, then the oldest if the cache is still full.
        while records:
            oldest = next(iter(records))
            if now < records[oldest].keep_until and len(records) < self._max_entries:
                break
            del records[oldest]
        self._records[tenant] = _Cached(record, fresh_until, fresh_until + self._stale_ttl)

    def _serve_stale(
        self, tenant: str, cached: _Cached, exc: VaultUnavailable
    ) -> TenantCredentials:
        # Mutated in place: assigning would restart the entry's time in the cache, and so
        # stretch the stale grace past stale_ttl.
        # Never past the end of the grace: the fast path in `get` only looks at fresh_until.
        cached.fresh_until = min(
            self._clock() + min(STALE_RECHECK_SECONDS, self._ttl or STALE_RECHECK_SECONDS),
            cached.keep_until,
        )
        self.stale_served += 1
        log.warning(
            "serving the cached credentials of tenant %s past their ttl: %s",
            tenant,
            exc.message,
            extra={"tenant": tenant, "outcome": "stale"},
        )
        return cached.record


def create_credential_source(
    config: Config,
    *,
    on_vault_request: RequestObserver | None = None,
    health: HealthObserver | None = None,
) -> CredentialSource:
    """The source `credentials.source` names, built from the config."""
    if config.credentials.source == "file":
        if config.credentials.file is None:
            raise ConfigError("credentials.file", "is required when credentials.source is 'file'")
        return FileCredentialSource(config.credentials.file)
    from proxy.vault.session import VaultSession

    session = VaultSession(config.vault, on_request=on_vault_request, health=health)
    return VaultCredentialSource(session, config.vault.path)
