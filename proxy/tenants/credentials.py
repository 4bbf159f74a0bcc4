"""Tenants' Genesys OAuth clients: where they come from (Vault or a file), and the store.

`CredentialStore` is a policy over the tenant table (`proxy.tenants.table`): each tenant's record
and when it was read are slots of its `Tenant`. Vault is the truth within `credentials.ttl`: the
first request that finds a record older than that starts one re-read in the background and is
served meanwhile; a changed client drops the tenant's tokens, a removed or denied record cuts the
tenant off, and dropped tokens are revoked at Genesys.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import yaml

from proxy.config import Config
from proxy.errors import (
    ConfigError,
    InvalidTenantCredentials,
    ProxyError,
    TenantForbidden,
    UnknownTenant,
    VaultUnavailable,
)
from proxy.filestamp import FileStamp
from proxy.tasks import BackgroundTasks
from proxy.tenants.ids import check_tenant_id
from proxy.tenants.record import TenantCredentials, parse_record
from proxy.tenants.singleflight import SingleFlight
from proxy.tenants.table import ReadWatch, Tenant, TenantTable

if TYPE_CHECKING:
    # Imported when a Vault source is built: hvac and requests are 7-8 MB of resident memory
    # that a daemon on the file source never uses.
    from proxy.vault.session import HealthObserver, RequestObserver, VaultSession

if TYPE_CHECKING:
    from proxy.tenants.oauth import Token

__all__ = [
    "CredentialSource",
    "CredentialStore",
    "FileCredentialSource",
    "TenantCredentials",
    "VaultCredentialSource",
    "create_credential_source",
    "parse_record",
]

log = logging.getLogger("proxy.tenants.credentials")

CredentialChange = Literal["rotated", "removed", "forbidden"]


class CredentialSource(Protocol):
    """Where credential records live; `fetch` reads one, uncached."""

    name: str

    async def start(self) -> None: ...

    async def fetch(self, tenant: str) -> TenantCredentials:
        """Raise UnknownTenant, TenantForbidden, VaultUnavailable or InvalidTenantCredentials."""
        ...

    async def ready(self) -> bool: ...

    def kept_alive(self) -> contextlib.AbstractAsyncContextManager[None]:
        """While entered, keep the source usable (Vault: renew the token, log in again)."""
        ...

    def describe(self) -> dict[str, Any]:
        """What the admin page shows about the source, besides its name; never a secret."""
        ...

    async def close(self) -> None: ...


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

    def kept_alive(self) -> contextlib.AbstractAsyncContextManager[None]:
        return _renewing(self._session)

    def describe(self) -> dict[str, Any]:
        session = self._session
        return {
            "address": session.address,
            "auth_method": session.method,
            "authenticated": session.authenticated,
            "last_error": session.last_error,
        }

    async def close(self) -> None:
        await self._session.close()


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
        self._stamp: FileStamp | None = None
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

    def kept_alive(self) -> contextlib.AbstractAsyncContextManager[None]:
        return contextlib.nullcontext()

    def describe(self) -> dict[str, Any]:
        return {"file": str(self._path)}

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

    def _stat(self) -> FileStamp:
        try:
            return FileStamp.stat(self._path)
        except OSError as exc:
            raise _FileProblem(f"cannot read {self._path}: {exc.strerror}") from exc

    def _load(self) -> tuple[FileStamp, dict[str, Any]]:
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


@contextlib.asynccontextmanager
async def _renewing(session: VaultSession) -> AsyncIterator[None]:
    from proxy.vault.renewal import VaultRenewer  # hvac: only with the Vault source

    async with VaultRenewer(session).running():
        yield


class _FileProblem(Exception):
    """The credentials file cannot be used; the message names the file, never a secret."""


# While the source stays unavailable, a stale record is served without asking it again for this
# long, so requests do not each wait on a Vault that times out.
STALE_RECHECK_SECONDS = 5.0


class TokenRevoker(Protocol):
    """Revokes a dropped token at Genesys, in the background and best effort."""

    def revoke(self, token: Token) -> None: ...


class CredentialObserver(Protocol):
    """Told when a re-read finds a tenant's record changed, gone or denied."""

    def credential_changed(self, tenant: Tenant, change: CredentialChange) -> None: ...


class CredentialStore:
    """Tenants' records on their table objects, in front of a source; one read per tenant at once.

    A record is used without asking the source for `ttl` seconds. After that the first request
    to find it old starts one re-read in the background and is served with it meanwhile; so is
    everyone else until the re-read ends. When the source is unavailable (Vault down, sealed,
    failing) the record keeps being served for up to `stale_ttl` seconds past its ttl
    (stale-if-error, counted in `stale_served`, re-checked every few seconds). A tenant the
    source has no record for is remembered in the table `negative_ttl` seconds, so a flood of
    requests for it reads the source once per window. Denied reads and invalid records are not
    remembered: the next request asks again.
    """

    def __init__(
        self,
        table: TenantTable,
        source: CredentialSource,
        *,
        ttl: float,
        stale_ttl: float = 0.0,
        clock: Callable[[], float] | None = None,
        revoker: TokenRevoker | None = None,
        observer: CredentialObserver | None = None,
    ) -> None:
        self._table = table
        self._source = source
        self._ttl = ttl
        self._stale_ttl = stale_ttl
        self._clock = clock if clock is not None else table.clock
        self._revoker = revoker
        self._observer = observer
        self._flights: SingleFlight[str, Tenant] = SingleFlight("credentials")
        self._background = BackgroundTasks()
        self._closed = False
        self.reads = 0
        self.stale_served = 0

    @property
    def source(self) -> CredentialSource:
        return self._source

    @property
    def table(self) -> TenantTable:
        return self._table

    def reconfigure(self, config: Config) -> None:
        """Apply `credentials.ttl`, `stale_ttl` and `negative_ttl` at once, to cached records."""
        credentials = config.credentials
        self._ttl, self._stale_ttl = credentials.ttl, credentials.stale_ttl
        self._table.reconfigure(negative_ttl=credentials.negative_ttl)
        for tenant in self._table:
            if tenant.record is not None:
                fresh_until = tenant.read_at + self._ttl
                tenant.set_record_fresh_until(fresh_until, fresh_until + self._stale_ttl)

    async def get(self, tenant_id: str) -> Tenant:
        """The tenant's object with a usable record, read once however many callers wait."""
        tenant = self._table.get(tenant_id)
        if tenant is not None and tenant.record is not None:
            now = self._clock()
            if now < tenant.record_fresh_until:
                return tenant
            if now < tenant.keep_until:
                self._revalidate_in_background(tenant_id)
                return tenant
        unknown = self._table.unknown(tenant_id)
        if unknown is not None:
            raise UnknownTenant(unknown, tenant=tenant_id)
        return await self._shared_read(tenant_id)

    def _shared_read(self, tenant_id: str) -> Awaitable[Tenant]:
        """Join the tenant's read under way, or start one watched for evictions from now on."""
        # Joining a read under way: `_read` is not called, so it needs no watch of its own.
        joining = self._flights.in_flight(tenant_id)
        watch = None if joining else self._table.watch(tenant_id)
        return self._flights.do(tenant_id, functools.partial(self._read, tenant_id, watch))

    async def record(self, tenant_id: str) -> TenantCredentials:
        """The tenant's usable record (see `get`)."""
        record = (await self.get(tenant_id)).record
        if record is None:  # pragma: no cover - get() returns only tenants with a record
            raise UnknownTenant(f"no credential record for tenant {tenant_id!r}", tenant=tenant_id)
        return record

    def cached(self, tenant_id: str) -> TenantCredentials | None:
        """The cached record of `tenant_id` (fresh or stale), without reading the source."""
        tenant = self._table.peek(tenant_id)
        if tenant is None or tenant.record is None or self._clock() >= tenant.keep_until:
            return None
        return tenant.record

    def invalidate(self, tenant_id: str) -> None:
        """Forget everything about the tenant (the table's eviction); the next get reads anew."""
        self._table.evict(tenant_id)

    def known_tenants(self) -> list[str]:
        """Tenants whose records are cached, sorted."""
        now = self._clock()
        return [
            tenant.id
            for tenant in self._table.tenants()
            if tenant.record is not None and now < tenant.keep_until
        ]

    async def ready(self) -> bool:
        return await self._source.ready()

    async def settled(self) -> None:
        """Wait until the background re-reads started so far have ended (for tests, and close)."""
        await self._background.settled()

    async def close(self) -> None:
        """Cancel reads in flight (the source is closed by whoever opened it)."""
        self._closed = True
        await self._background.close()
        await self._flights.close()

    def _revalidate_in_background(self, tenant_id: str) -> None:
        if self._closed or self._flights.in_flight(tenant_id):
            return
        self._background.start(self._revalidate(tenant_id), f"revalidate:{tenant_id}")

    async def _revalidate(self, tenant_id: str) -> None:
        # `_read` has acted on and logged the outcome; requests go on with what it left.
        with contextlib.suppress(Exception):
            await self._shared_read(tenant_id)

    async def _read(self, tenant_id: str, watch: ReadWatch | None) -> Tenant:
        """One source read, and what it means for the tenant; runs inside the single flight."""
        before = self._table.peek(tenant_id)
        if watch is None:  # pragma: no cover - only a joining caller passes None
            watch = self._table.watch(tenant_id)
        try:
            return await self._read_watched(tenant_id, before, watch)
        finally:
            self._table.unwatch(tenant_id, watch)

    async def _read_watched(
        self, tenant_id: str, before: Tenant | None, watch: ReadWatch
    ) -> Tenant:
        self.reads += 1
        try:
            record = await self._source.fetch(tenant_id)
        except UnknownTenant as exc:
            if not watch.evicted and (before is None or self._table.holds(before)):
                if before is not None and before.record is not None:
                    self._cut_off(before, "removed", exc)
                self._table.remember_unknown(tenant_id, exc.message)
            raise
        except TenantForbidden as exc:
            if before is not None and before.record is not None and self._table.holds(before):
                self._cut_off(before, "forbidden", exc)
            raise
        except InvalidTenantCredentials as exc:
            if before is not None and before.record is not None and self._table.holds(before):
                self._cut_off(before, None, exc)
            raise
        except VaultUnavailable as exc:
            if (
                before is None
                or before.record is None
                or self._clock() >= before.keep_until
                or not self._table.holds(before)
            ):
                raise
            return self._serve_stale(before, exc)
        now = self._clock()
        if watch.evicted:
            tenant = Tenant(tenant_id)
        elif before is None:
            tenant = self._table.admit(tenant_id)
        elif self._table.holds(before):
            tenant = before
        else:
            # Evicted during the read: this caller is served, nothing is kept.
            tenant = Tenant(tenant_id)
        old = tenant.record
        if old is not None and not old.same_client(record):
            self._drop_tokens(tenant)
            # A rejection or refusal was about the old client.
            tenant.trouble = tenant.refusal = None
            self._changed(tenant, "rotated")
            log.warning(
                "the credential record of tenant %s changed in Vault (client, secret or region): "
                "its tokens are dropped and revoked",
                tenant_id,
                extra={"tenant": tenant_id},
            )
        fresh_until = now + self._ttl
        tenant.set_record(
            record, read_at=now, fresh_until=fresh_until, keep_until=fresh_until + self._stale_ttl
        )
        self._table.forget_unknown(tenant_id)
        return tenant

    def _cut_off(self, tenant: Tenant, change: CredentialChange | None, exc: ProxyError) -> None:
        """The tenant's record is gone, denied or broken: no more tokens from it."""
        self._drop_tokens(tenant)
        tenant.set_record(None, read_at=self._clock(), fresh_until=-math.inf, keep_until=-math.inf)
        if change is not None:
            self._changed(tenant, change)
        log.warning(
            "tenant %s is cut off: %s; its tokens are dropped and revoked",
            tenant.id,
            exc.message,
            extra={"tenant": tenant.id},
        )

    def _drop_tokens(self, tenant: Tenant) -> None:
        dropped = tenant.drop_tokens()
        if self._revoker is not None:
            for token in dropped:
                self._revoker.revoke(token)

    def _changed(self, tenant: Tenant, change: CredentialChange) -> None:
        if self._observer is not None:
            self._observer.credential_changed(tenant, change)

    def _serve_stale(self, tenant: Tenant, exc: VaultUnavailable) -> Tenant:
        # Never past the end of the grace; re-checked after a few seconds, not by every request.
        recheck = min(STALE_RECHECK_SECONDS, self._ttl or STALE_RECHECK_SECONDS)
        tenant.set_record_fresh_until(
            min(self._clock() + recheck, tenant.keep_until), tenant.keep_until
        )
        self.stale_served += 1
        log.warning(
            "serving the cached credentials of tenant %s past their ttl: %s",
            tenant.id,
            exc.message,
            extra={"tenant": tenant.id, "outcome": "stale"},
        )
        return tenant


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
