"""The proxy's Vault session: log in, read tenants' KV secrets, report readiness.

hvac is blocking, so every call runs in a small thread pool of the session's own, and its
exceptions are translated here: nothing above this module sees an hvac or requests exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import hvac
import hvac.exceptions
import requests

from proxy.config import VaultConfig
from proxy.errors import ProxyError, TenantForbidden, VaultUnavailable
from proxy.tenants.singleflight import SingleFlight

log = logging.getLogger("proxy.vault.session")

T = TypeVar("T")

# Called with (operation, outcome) after every Vault request, e.g. to count them in a metric.
# Operations: login, renew, lookup, read, write, list, delete.
# Outcomes: success, not_found, forbidden, error.
RequestObserver = Callable[[str, str], None]

DEFAULT_TIMEOUT = 5.0
DEFAULT_HEALTH_INTERVAL = 5.0
DEFAULT_WORKERS = 8


@dataclass(frozen=True)
class TokenInfo:
    """What Vault said about the session's token when it was obtained or renewed.

    The renewal loop plans with it: renew before `ttl` runs out while `renewable`, else log in.
    """

    ttl: float  # seconds left when obtained; 0 means it never expires (a root token)
    renewable: bool
    obtained_at: float  # on the session's clock
    # Lets an operator find the token in Vault (`token lookup -accessor`); not a credential
    # on its own, but kept out of reprs all the same.
    accessor: str | None = field(default=None, repr=False)
    # The TTL the token was issued with; a renewal granting less means Vault's max TTL caps it.
    issued_ttl: float = 0.0

    @property
    def expires_at(self) -> float | None:
        """When the token expires on the session's clock; None if it never does."""
        return self.obtained_at + self.ttl if self.ttl > 0 else None


class VaultSession:
    """A logged-in hvac client, used off the event loop; see the module docstring."""

    def __init__(
        self,
        config: VaultConfig,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        health_interval: float = DEFAULT_HEALTH_INTERVAL,
        max_workers: int = DEFAULT_WORKERS,
        clock: Callable[[], float] = time.monotonic,
        on_request: RequestObserver | None = None,
    ) -> None:
        self._config = config
        self._auth = config.auth
        self._timeout = timeout
        self._health_interval = health_interval
        self._clock = clock
        self._on_request = on_request
        # token="" and an explicit verify stop hvac from reading VAULT_TOKEN, ~/.vault-token and
        # VAULT_CACERT itself: the config loader already applied the environment.
        self._client = hvac.Client(
            url=config.address,
            token="",
            namespace=config.namespace,
            verify=str(config.ca_cert) if config.ca_cert else True,
            timeout=timeout,
        )
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="vault")
        self._flight: SingleFlight[str, Any] = SingleFlight("vault")
        self._token_lock = threading.Lock()
        self._token_file_seen: tuple[int, int, int] | None = None
        self._token_file_problem: str | None = None
        # Bumped whenever the client's token changes, so a caller can tell whether the token a
        # request was denied with is still the current one.
        self._generation = 0
        self._logged_in = False
        self._token_info: TokenInfo | None = None
        self._last_error: str | None = None
        self._ready = False
        self._ready_checked_at: float | None = None
        self._closed = False
        # Set when the login state or the token changes, so the renewal loop replans at once.
        self._changed = asyncio.Event()
        # For the admin page and tests; the on_request hook feeds the metric.
        self.logins = 0
        self.renewals = 0
        self.failures = 0

    def __repr__(self) -> str:
        return f"VaultSession(address={self.address!r}, method={self.method!r})"

    @property
    def address(self) -> str:
        return self._config.address

    @property
    def method(self) -> str:
        return self._auth.method

    @property
    def authenticated(self) -> bool:
        """Whether the last login succeeded and Vault has not rejected the token since."""
        return self._logged_in

    @property
    def token_info(self) -> TokenInfo | None:
        return self._token_info

    @property
    def clock(self) -> Callable[[], float]:
        """The clock `token_info` times are on."""
        return self._clock

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def can_log_in(self) -> bool:
        """Whether logging in again can produce a new token (a literal token cannot)."""
        return self._auth.method != "token" or self._auth.token_file is not None

    @property
    def holds_usable_token(self) -> bool:
        """Logged in, and the token's TTL (as last granted) has not run out."""
        info = self._token_info
        if not self._logged_in or info is None:
            return False
        expires_at = info.expires_at
        return expires_at is None or self._clock() < expires_at

    @property
    def last_error(self) -> str | None:
        """The most recent login or readiness failure, for the admin page and logs."""
        return self._last_error

    async def wait_for_change(self, seconds: float) -> bool:
        """Wait until a login, a renewal or a rejected token changes the session, or `seconds`."""
        try:
            async with asyncio.timeout(seconds):
                await self._changed.wait()
        except TimeoutError:
            return False
        self._changed.clear()
        return True

    async def start(self) -> None:
        """Log in; a Vault that is down is remembered, not raised: the proxy starts not ready."""
        # The failure is already logged and kept in last_error; reads and ready() retry the login.
        with contextlib.suppress(VaultUnavailable):
            await self.login()

    async def login(self) -> None:
        """Obtain a token by the configured method (re-reading token files); one login at a time."""
        await self._flight.do("login", self._login)

    async def read(self, path: str) -> dict[str, Any] | None:
        """Return the KV secret at `path` under the configured mount, or None if there is none."""
        mount = self._config.kv_mount
        kv = self._client.secrets.kv
        if self._config.kv_version == 2:

            def fetch() -> Any:
                return kv.v2.read_secret_version(
                    path=path, mount_point=mount, raise_on_deleted_version=True
                )
        else:

            def fetch() -> Any:
                return kv.v1.read_secret(path=path, mount_point=mount)

        try:
            response = await self._call("read", fetch)
        except hvac.exceptions.InvalidPath:
            return None
        except hvac.exceptions.Forbidden as exc:
            raise TenantForbidden(
                f"Vault denies reading {mount}/{path}; check the proxy's Vault policy"
            ) from exc
        data = response.get("data") if isinstance(response, dict) else None
        if self._config.kv_version == 2 and isinstance(data, dict):
            data = data.get("data")
        return data if isinstance(data, dict) else None

    async def write(self, path: str, data: Mapping[str, str]) -> None:
        """Create or replace the KV secret at `path` (all of its fields)."""
        kv, mount, secret = self._client.secrets.kv, self._config.kv_mount, dict(data)
        if self._config.kv_version == 2:

            def put() -> Any:
                return kv.v2.create_or_update_secret(path=path, secret=secret, mount_point=mount)
        else:

            def put() -> Any:
                return kv.v1.create_or_update_secret(path=path, secret=secret, mount_point=mount)

        await self._kv_call("write", put, path, "writing")

    async def list_keys(self, path: str) -> list[str]:
        """The keys directly under `path` (folders end in `/`); empty if there are none."""
        kv, mount = self._client.secrets.kv, self._config.kv_mount
        version = kv.v2 if self._config.kv_version == 2 else kv.v1

        def keys() -> Any:
            return version.list_secrets(path=path, mount_point=mount)

        try:
            response = await self._kv_call("list", keys, path, "listing")
        except hvac.exceptions.InvalidPath:
            return []
        data = response.get("data") if isinstance(response, dict) else None
        found = data.get("keys") if isinstance(data, dict) else None
        return [str(key) for key in found] if isinstance(found, list) else []

    async def delete(self, path: str) -> None:
        """Remove the KV secret at `path`; for KV v2 every version and its metadata."""
        kv, mount = self._client.secrets.kv, self._config.kv_mount
        if self._config.kv_version == 2:

            def remove() -> Any:
                return kv.v2.delete_metadata_and_all_versions(path=path, mount_point=mount)
        else:

            def remove() -> Any:
                return kv.v1.delete_secret(path=path, mount_point=mount)

        await self._kv_call("delete", remove, path, "deleting")

    async def renew(self) -> None:
        """Renew the token (`renew-self`); when Vault will not, note it so a login replaces it.

        A rejected token marks the session logged out; a token Vault no longer extends (max TTL
        reached, or not renewable) is marked not renewable. Only an unreachable Vault raises.
        """
        started = self._clock()
        generation = self._generation

        def renew_self() -> dict[str, Any] | str:
            try:
                response: dict[str, Any] = self._client.auth.token.renew_self()
            except hvac.exceptions.InvalidRequest as exc:
                return _vault_message(exc)  # "lease is not renewable", past max TTL, ...
            return response

        try:
            response = await self._run("renew", renew_self)
        except hvac.exceptions.Forbidden:
            self.failures += 1
            if generation == self._generation:
                log.info("Vault rejected renewing the session's token; logging in again")
                self._logged_in = False
                self._changed.set()
            return
        except VaultUnavailable:
            self.failures += 1
            raise
        previous = self._token_info
        if generation != self._generation or previous is None:
            return  # a login replaced the token meanwhile: its own TTL counts
        if isinstance(response, str):
            self.failures += 1
            log.info("Vault will not renew the session's token (%s); logging in again", response)
            self._token_info = TokenInfo(
                ttl=max(0.0, previous.ttl - (started - previous.obtained_at)),
                renewable=False,
                obtained_at=started,
                accessor=previous.accessor,
                issued_ttl=previous.issued_ttl,
            )
            self._changed.set()
            return
        auth = response.get("auth") or {}
        ttl = float(auth.get("lease_duration") or 0)
        # Granted less than it was issued with: the max TTL caps it, renewing cannot extend it.
        capped = 0 < ttl < previous.issued_ttl
        self._token_info = TokenInfo(
            ttl=ttl,
            renewable=bool(auth.get("renewable")) and not capped,
            obtained_at=started,
            accessor=previous.accessor,
            issued_ttl=previous.issued_ttl,
        )
        self.renewals += 1
        self._changed.set()
        log.debug("Renewed the Vault token (ttl %.0f s, max TTL reached: %s)", ttl, capped)

    async def ready(self) -> bool:
        """Whether Vault answers, is unsealed and accepts the token; checked every few seconds."""
        if self._closed:
            return False
        checked_at = self._ready_checked_at
        recent = checked_at is not None and self._clock() - checked_at < self._health_interval
        # A token known to have run out is not worth a cached "ready": check (and log in) now.
        if recent and (self.holds_usable_token or not self._ready):
            return self._ready
        ready: bool = await self._flight.do("ready", self._check_ready)
        return ready

    async def close(self) -> None:
        """Stop logins and checks in progress, wait for hvac calls still running, close the pool."""
        self._closed = True
        await self._flight.close()
        # A call already in a worker cannot be interrupted; it ends within the request timeout,
        # and waiting keeps it from outliving the event loop.
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
        self._client.adapter.close()

    async def _call(self, operation: str, fn: Callable[[], T]) -> T:
        """Run `fn` with a valid token, logging in again once if Vault rejected the token.

        hvac's Forbidden (after that retry) and InvalidPath reach the caller, which knows what
        they mean for its operation; every other failure is already a VaultUnavailable.
        """
        if self._auth.method == "token" and self._auth.token_file is not None:
            await self._run(None, self._sync_token_file)
        if not self._logged_in:
            await self.login()
        generation = self._generation
        try:
            return await self._run(operation, fn)
        except hvac.exceptions.Forbidden:
            if generation == self._generation and not await self._token_rejected():
                raise  # the token is fine: its policy denies this request
        if generation == self._generation:
            log.info("Vault rejected the session's token (expired or revoked); logging in again")
            self._logged_in = False
            self._changed.set()
            await self.login()
        return await self._run(operation, fn)

    async def _kv_call(self, operation: str, fn: Callable[[], T], path: str, doing: str) -> T:
        try:
            return await self._call(operation, fn)
        except hvac.exceptions.Forbidden as exc:
            raise TenantForbidden(
                f"Vault denies {doing} {self._config.kv_mount}/{path}; check the token's policy"
            ) from exc

    async def _token_rejected(self) -> bool:
        try:
            await self._run("lookup", self._client.auth.token.lookup_self)
        except hvac.exceptions.Forbidden:
            return True
        return False

    async def _login(self) -> None:
        try:
            info = await self._run("login", self._login_sync)
        except VaultUnavailable as exc:
            self._login_failed(exc.message)
            raise
        with self._token_lock:
            self._generation += 1
        self._token_info = info
        self._logged_in = True
        self._changed.set()
        self._last_error = None
        self.logins += 1
        # A "not ready" from before this login must not linger until the next check is due.
        self._ready_checked_at = None
        ttl = f"{info.ttl:.0f} s" if info.ttl else "none"
        log.info(
            "Logged in to Vault at %s with %s auth (token ttl %s)", self.address, self.method, ttl
        )

    def _login_failed(self, message: str) -> None:
        self.failures += 1
        if message != self._last_error:
            log.warning("Vault login failed: %s", message)
        # A new login tried before the old token ran out (at its max TTL, say) keeps that
        # token: it still works, and the next attempt may succeed before it expires.
        self._logged_in = self.holds_usable_token
        self._changed.set()
        self._last_error = message
        # Readiness must not keep reporting a success from before the failure.
        self._ready_checked_at = None

    def _login_sync(self) -> TokenInfo:
        """Log in from a worker; a refusal is VaultUnavailable: nothing can be read without it."""
        try:
            return self._login_by_method()
        except (
            hvac.exceptions.Forbidden,
            hvac.exceptions.Unauthorized,
            hvac.exceptions.InvalidRequest,
            hvac.exceptions.InvalidPath,
        ) as exc:
            if self._auth.method == "token":
                message = "Vault rejects the configured token (expired or revoked?)"
            else:
                message = f"Vault refuses the {self.method} login"
            raise VaultUnavailable(f"{message}: {_vault_message(exc)}") from exc

    def _login_by_method(self) -> TokenInfo:
        """hvac's login methods set the client's token themselves."""
        auth = self._auth
        if auth.method == "token":
            if auth.token_file is not None:
                with self._token_lock:
                    self._token_file_seen = None
                self._sync_token_file(strict=True)
            elif auth.token:
                self._client.token = auth.token
            else:
                raise VaultUnavailable(
                    "no Vault token: set vault.auth.token, VAULT_TOKEN or vault.auth.token_file"
                )
            data = self._client.auth.token.lookup_self().get("data") or {}
            ttl, renewable = data.get("ttl"), data.get("renewable")
            issued_ttl = data.get("creation_ttl") or ttl
            if issued_ttl and not ttl:
                # Under a second left (Vault truncates): not a token that never expires.
                ttl = 0.001
        else:
            if auth.method == "kubernetes":
                jwt = _read_credential_file(auth.jwt_file, "vault.auth.jwt_file")
                response = self._client.auth.kubernetes.login(
                    auth.role, jwt, mount_point=auth.mount or "kubernetes"
                )
            else:
                assert auth.secret_id_file is not None  # the config loader insists on it
                secret_id = _read_credential_file(auth.secret_id_file, "vault.auth.secret_id_file")
                response = self._client.auth.approle.login(
                    auth.role_id, secret_id, mount_point=auth.mount or "approle"
                )
            data = response.get("auth") or {}
            ttl, renewable = data.get("lease_duration"), data.get("renewable")
            issued_ttl = ttl
        return TokenInfo(
            ttl=float(ttl or 0),
            renewable=bool(renewable),
            obtained_at=self._clock(),
            accessor=data.get("accessor"),
            issued_ttl=float(issued_ttl or 0),
        )

    def _sync_token_file(self, *, strict: bool = False) -> None:
        """Use the token file's token if the file changed (a Vault Agent sink rewrites it)."""
        path = self._auth.token_file
        assert path is not None
        with self._token_lock:
            try:
                stat = path.stat()
                seen = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
                if seen == self._token_file_seen:
                    return
                token = path.read_text(encoding="utf-8").strip()
            except OSError as exc:
                problem: str | None = f"cannot read vault.auth.token_file {path}: {exc.strerror}"
                seen = None
            else:
                problem = f"vault.auth.token_file {path} is empty" if not token else None
            if problem is not None:
                if strict:
                    raise VaultUnavailable(problem)
                # Warn once per problem, not on every request while the file is missing.
                if problem != self._token_file_problem:
                    log.warning("%s; keeping the current token", problem)
                self._token_file_problem = problem
                self._token_file_seen = seen
                return
            self._token_file_problem = None
            self._token_file_seen = seen
            if token != self._client.token:
                if self._client.token:
                    log.info("Vault token file %s changed; using its new token", path)
                self._client.token = token
                self._generation += 1

    async def _check_ready(self) -> bool:
        try:
            await self._call("lookup", self._client.auth.token.lookup_self)
        except ProxyError as exc:
            ready, self._last_error = False, exc.message
        except hvac.exceptions.VaultError as exc:
            ready = False
            self._last_error = f"Vault denies the token's own lookup: {_vault_message(exc)}"
        else:
            ready = True
        self._ready, self._ready_checked_at = ready, self._clock()
        return ready

    async def _run(self, operation: str | None, fn: Callable[[], T]) -> T:
        """Run `fn` in the pool; translate transport and server failures into VaultUnavailable."""
        if self._closed:
            raise VaultUnavailable("the Vault session is closed")
        loop = asyncio.get_running_loop()
        outcome = "error"
        try:
            result = await loop.run_in_executor(self._executor, fn)
        except hvac.exceptions.Forbidden:
            outcome = "forbidden"
            raise
        except hvac.exceptions.InvalidPath:
            outcome = "not_found"
            raise
        except requests.Timeout as exc:
            raise VaultUnavailable(
                f"Vault at {self.address} did not answer within {self._timeout:g} s"
            ) from exc
        except requests.RequestException as exc:
            raise VaultUnavailable(f"cannot reach Vault at {self.address}") from exc
        except hvac.exceptions.VaultDown as exc:
            raise VaultUnavailable(f"Vault at {self.address} is sealed or unavailable") from exc
        except hvac.exceptions.VaultError as exc:
            raise VaultUnavailable(
                f"Vault at {self.address} failed: {_vault_message(exc)}"
            ) from exc
        else:
            outcome = "success"
            return result
        finally:
            if operation is not None and self._on_request is not None:
                self._on_request(operation, outcome)


def _read_credential_file(path: Path, key: str) -> str:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise VaultUnavailable(f"cannot read {key} {path}: {exc.strerror}") from exc
    if not value:
        raise VaultUnavailable(f"{key} {path} is empty")
    return value


def _vault_message(exc: hvac.exceptions.VaultError) -> str:
    """Vault's own error text (never a secret: Vault does not echo request bodies)."""
    errors = [str(error) for error in exc.errors or [] if error]
    return "; ".join(errors) or type(exc).__name__
