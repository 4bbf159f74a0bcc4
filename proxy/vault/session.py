"""The proxy's Vault session: log in, renew, read tenants' KV secrets, know whether Vault is up.

hvac is blocking, so every call runs in a small thread pool of the session's own, and its
exceptions are translated here: nothing above this package sees an hvac or requests exception.

A Vault that hangs must not become a queue (DESIGN.md, "Behaviour"):

    call ── Vault known down? ── yes ──▶ VaultUnavailable at once (a probe is already running)
      │ no
      ▼
    wait at most vault.timeout in all (queueing for a worker, login, retry included)
      ├─ answered ──────────────────▶ result; Vault is up
      └─ failed or hung in Vault ───▶ VaultUnavailable; Vault is down: one probe at a time,
                                      at most one a second, until one succeeds

The CLI's write/list/delete live in `proxy.vault.admin_ops`, over `VaultSession.call`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, Protocol, TypeVar

import hvac
import hvac.exceptions
import requests

from proxy.config import VaultConfig
from proxy.errors import ProxyError, TenantForbidden, VaultUnavailable
from proxy.tenants.singleflight import SingleFlight
from proxy.vault.login import TokenInfo, VaultLogin, vault_message

log = logging.getLogger("proxy.vault.session")

T = TypeVar("T")

# Called with (operation, outcome) after every Vault request, e.g. to count them in a metric.
# Operations: login, renew, lookup, read, write, list, delete.
# Outcomes: success, not_found, forbidden, error.
RequestObserver = Callable[[str, str], None]

DEFAULT_WORKERS = 8
# While Vault is down, how often (at most) one probe checks whether it is back.
PROBE_INTERVAL = 1.0


class HealthObserver(Protocol):
    """Told what the session learns about Vault; `proxy.ops.health.Readiness` is one."""

    def source_worked(self) -> None:
        """A login and a read or lookup succeeded (the first time matters)."""

    def vault_up(self, up: bool) -> None:
        """Vault answered (True) or was found unavailable (False); called on every change."""


class _Attempt:
    """One timed call: its deadline, and whether its hvac request left the queue for a worker.

    `reached_vault` is set from the worker thread; the others are read there.
    """

    __slots__ = ("abandoned", "deadline", "probe", "reached_vault")

    def __init__(self, deadline: float, *, probe: bool) -> None:
        self.deadline = deadline  # on time.monotonic, the clock the workers can read
        self.probe = probe
        self.abandoned = False
        self.reached_vault = False


class _NotSent(Exception):
    """A queued request whose caller gave up, or that Vault went down under: never sent."""


# The attempt of the call running in this context; logins run in a single-flight task, which
# copies the context, so a login that hangs marks the call that started it too.
_ATTEMPT: contextvars.ContextVar[_Attempt | None] = contextvars.ContextVar(
    "vault_attempt", default=None
)


class VaultSession:
    """A logged-in hvac client, used off the event loop; see the module docstring."""

    def __init__(
        self,
        config: VaultConfig,
        *,
        max_workers: int = DEFAULT_WORKERS,
        clock: Callable[[], float] = time.monotonic,
        on_request: RequestObserver | None = None,
        health: HealthObserver | None = None,
        probe_interval: float = PROBE_INTERVAL,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._config = config
        self._auth = config.auth
        self._timeout = config.timeout
        self._clock = clock
        self._on_request = on_request
        self._health = health
        self._probe_interval = probe_interval
        self._sleep = sleep
        # token="" and an explicit verify stop hvac from reading VAULT_TOKEN, ~/.vault-token and
        # VAULT_CACERT itself: the config loader already applied the environment.
        self._client = hvac.Client(
            url=config.address,
            token="",
            namespace=config.namespace,
            verify=str(config.ca_cert) if config.ca_cert else True,
            timeout=config.timeout,
        )
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="vault")
        self._flight: SingleFlight[str, Any] = SingleFlight("vault")
        # Its generation tells whether the token a request was denied with is still current.
        self._credentials = VaultLogin(config.auth, self._client, clock)
        self._logged_in = False
        self._token_info: TokenInfo | None = None
        self._last_error: str | None = None
        # None until the first answer or failure; False makes calls fail fast while probing.
        self._available: bool | None = None
        # What made it unavailable, for the fail-fast answers (last_error also holds logins').
        self._down_reason = ""
        # Set by a worker whose request failed in transport, so the next queued request is not
        # sent before the event loop has even heard of the failure; cleared by any answer.
        self._worker_saw_failure = False
        self._worked = False
        self._probe_task: asyncio.Task[None] | None = None
        self._closed = False
        # Set when the login state or the token changes, so the renewal loop replans at once.
        self._changed = asyncio.Event()
        # For the admin page and tests; the on_request hook feeds the metric.
        self.logins = 0
        self.renewals = 0
        self.failures = 0
        self.probes = 0
        # Calls waiting on Vault (or on a worker) right now, for the admin page and tests.
        self.calls_in_flight = 0

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
    def client(self) -> hvac.Client:
        """The hvac client, for `proxy.vault.admin_ops`; call it only through `call`."""
        return self._client

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
        """The most recent login or availability failure, for the admin page and logs."""
        return self._last_error

    @property
    def available(self) -> bool:
        """Whether Vault answered the last time it was asked (state only: never asks it)."""
        return self._available is True and not self._closed

    @property
    def worked(self) -> bool:
        """Whether a login and a read or lookup have succeeded since the session started."""
        return self._worked

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
        """Log in and look the token up; a Vault that is down is noted and probed, not raised."""
        # The failure is logged and kept in last_error; the probe loop takes over from here.
        await self.probe()

    async def login(self) -> None:
        """Obtain a token by the configured method (re-reading token files); one login at a time."""
        await self._timed(self._flight.do, "login", self._login)

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
            response = await self.call("read", fetch)
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

    async def renew(self) -> None:
        """Renew the token (`renew-self`); when Vault will not, note it so a login replaces it.

        A rejected token marks the session logged out; a token Vault no longer extends (max TTL
        reached, or not renewable) is marked not renewable. Only an unreachable Vault raises.
        """
        started = self._clock()
        generation = self._credentials.generation

        def renew_self() -> dict[str, Any] | str:
            try:
                response: dict[str, Any] = self._client.auth.token.renew_self()
            except (hvac.exceptions.Forbidden, hvac.exceptions.VaultDown):
                raise
            except hvac.exceptions.VaultError as exc:
                # Vault answered, and will not renew: "lease is not renewable" (400), "past the
                # max TTL, cannot renew" (OpenBao answers that one 500). Vault is up; log in.
                return vault_message(exc)
            return response

        try:
            response = await self._timed(self._run, "renew", renew_self)
        except hvac.exceptions.Forbidden:
            self.failures += 1
            if generation == self._credentials.generation:
                log.info("Vault rejected renewing the session's token; logging in again")
                self._logged_in = False
                self._changed.set()
            return
        except VaultUnavailable:
            self.failures += 1
            raise
        previous = self._token_info
        if generation != self._credentials.generation or previous is None:
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
        """Whether Vault is available, from state; kept for callers of the source protocol."""
        return self.available

    async def probe(self) -> bool:
        """Check now that Vault answers, is unsealed and accepts the token (logging in if needed).

        One probe runs at a time; concurrent callers share its outcome.
        """
        if self._closed:
            return False
        ok: bool = await self._flight.do("probe", self._probe)
        return ok

    async def call(self, operation: str, fn: Callable[[], T]) -> T:
        """Run `fn` (an hvac call) with a valid token, within `vault.timeout` in all.

        While Vault is known to be down this fails at once: the probe loop is checking. hvac's
        Forbidden (after a login again, if the token was the problem) and InvalidPath reach the
        caller, which knows what they mean for its operation; every other failure is already a
        VaultUnavailable.
        """
        if self._available is False and not self._closed:
            self._start_probing()
            raise self._fail_fast()
        return await self._timed(self._call, operation, fn)

    def _fail_fast(self) -> VaultUnavailable:
        reason = self._down_reason or f"Vault at {self.address} did not answer"
        return VaultUnavailable(
            f"{reason}; Vault is checked again every {self._probe_interval:g} s"
        )

    async def close(self) -> None:
        """Stop logins and probes in progress, wait for hvac calls still running, close the pool."""
        self._closed = True
        if self._probe_task is not None:
            self._probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe_task
        await self._flight.close()
        # A call already in a worker cannot be interrupted; it ends within the request timeout,
        # and waiting keeps it from outliving the event loop.
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
        self._client.adapter.close()

    async def _timed(self, run: Callable[..., Awaitable[T]], *args: Any, probe: bool = False) -> T:
        """Await `run(*args)` for at most vault.timeout; a hung Vault counts as down.

        A call that timed out while queued for a worker (a burst of cold tenants) says so and
        leaves Vault's state alone: Vault itself may be fine.
        """
        attempt = _Attempt(time.monotonic() + self._timeout, probe=probe)
        reset = _ATTEMPT.set(attempt)
        self.calls_in_flight += 1
        try:
            async with asyncio.timeout(self._timeout) as deadline:
                return await run(*args)
        except TimeoutError as exc:
            if not deadline.expired():
                raise
            attempt.abandoned = True  # still queued: a worker that picks it up drops it
            if attempt.reached_vault:
                message = f"Vault at {self.address} did not answer within {self._timeout:g} s"
                self._unavailable(message)
            else:
                message = (
                    f"Vault requests to {self.address} queued longer than vault.timeout "
                    f"({self._timeout:g} s)"
                )
            raise VaultUnavailable(message) from exc
        finally:
            self.calls_in_flight -= 1
            _ATTEMPT.reset(reset)

    async def _probe(self) -> bool:
        self.probes += 1
        try:
            await self._timed(self._call, "lookup", self._client.auth.token.lookup_self, probe=True)
        except ProxyError:
            return False  # recorded as unavailable where it was found
        except hvac.exceptions.VaultError as exc:
            # Vault answers, but denies the token's own lookup even after a login.
            self._last_error = f"Vault denies the token's own lookup: {vault_message(exc)}"
            return False
        return True

    def _start_probing(self) -> None:
        if self._closed or (self._probe_task is not None and not self._probe_task.done()):
            return
        self._probe_task = asyncio.create_task(self._probe_until_up(), name="vault-probe")

    async def _probe_until_up(self) -> None:
        """One probe at a time, at most one per probe interval, until Vault answers and works.

        A login alone (the renewal loop's, say) ends the outage but not the wait for a first
        read or lookup: readiness needs one, and no request may come to make it.
        """
        # Waiting first: the call that found Vault down has just asked it.
        while not self._closed:
            await self._sleep(self._probe_interval)
            if (self._available and self._worked) or self._closed:
                return
            try:
                await self.probe()
            except Exception:  # a bug must not end the loop: requests would fail fast forever
                log.exception("probing Vault failed unexpectedly")

    def _answered(self, operation: str | None, outcome: str) -> None:
        """Vault answered a request; a read or lookup that succeeded means the source works."""
        if operation is None:
            return  # not a Vault request (the token file's check)
        self._worker_saw_failure = False
        if self._available is not True:
            if self._available is False:
                log.info("Vault at %s answers again", self.address)
            self._available = True
            if self._health is not None:
                self._health.vault_up(True)
        if not self._worked and operation in ("read", "lookup") and outcome != "forbidden":
            self._worked = True
            if self._health is not None:
                self._health.source_worked()

    def _unavailable(self, message: str) -> None:
        """Vault could not be used: fail calls fast and probe until it answers again."""
        self._last_error = self._down_reason = message
        if self._available is not False:
            log.warning("Vault unavailable: %s; probing every %g s", message, self._probe_interval)
            self._available = False
            if self._health is not None:
                self._health.vault_up(False)
        self._start_probing()

    async def _call(self, operation: str, fn: Callable[[], T]) -> T:
        """Run `fn` with a valid token, logging in again once if Vault rejected the token."""
        if self._auth.method == "token" and self._auth.token_file is not None:
            await self._run(None, self._credentials.sync_token_file)
        # Not the timed login(): the caller's own deadline (and attempt) covers it.
        if not self._logged_in:
            await self._flight.do("login", self._login)
        generation = self._credentials.generation
        try:
            return await self._run(operation, fn)
        except hvac.exceptions.Forbidden:
            if generation == self._credentials.generation and not await self._token_rejected():
                raise  # the token is fine: its policy denies this request
        if generation == self._credentials.generation:
            log.info("Vault rejected the session's token (expired or revoked); logging in again")
            self._logged_in = False
            self._changed.set()
            await self._flight.do("login", self._login)
        return await self._run(operation, fn)

    async def _token_rejected(self) -> bool:
        try:
            await self._run("lookup", self._client.auth.token.lookup_self)
        except hvac.exceptions.Forbidden:
            return True
        return False

    async def _login(self) -> None:
        try:
            info = await self._run("login", self._credentials.login)
        except VaultUnavailable as exc:
            self._login_failed(exc.message)
            raise
        self._credentials.token_changed()
        self._token_info = info
        self._logged_in = True
        self._changed.set()
        self._last_error = None
        ttl = f"{info.ttl:.0f} s" if info.ttl else "none"
        log.info(
            "Logged in to Vault at %s with %s auth (token ttl %s)", self.address, self.method, ttl
        )
        if not self._worked:
            # Readiness needs a login and a read or lookup: do the lookup now rather than wait
            # for a request or the next probe. Its failure is recorded where it is found.
            with contextlib.suppress(ProxyError, hvac.exceptions.VaultError):
                await self._run("lookup", self._client.auth.token.lookup_self)
        self.logins += 1

    def _login_failed(self, message: str) -> None:
        self.failures += 1
        if message != self._last_error:
            log.warning("Vault login failed: %s", message)
        # A new login tried before the old token ran out (at its max TTL, say) keeps that
        # token: it still works, and the next attempt may succeed before it expires.
        self._logged_in = self.holds_usable_token
        self._changed.set()
        self._last_error = message

    async def _run(self, operation: str | None, fn: Callable[[], T]) -> T:
        """Run `fn` in the pool; translate transport and server failures into VaultUnavailable."""
        if self._closed:
            raise VaultUnavailable("the Vault session is closed")
        send = _Send(self, fn, _ATTEMPT.get())
        loop = asyncio.get_running_loop()
        outcome = "error"
        try:
            result = await loop.run_in_executor(self._executor, send)
        except hvac.exceptions.Forbidden:
            outcome = "forbidden"
            self._answered(operation, outcome)
            raise
        except hvac.exceptions.InvalidPath:
            outcome = "not_found"
            self._answered(operation, outcome)
            raise
        except _NotSent:
            raise self._fail_fast() from None
        except VaultUnavailable as exc:  # raised by a login that cannot get a token
            self._unavailable(exc.message)
            raise
        except requests.Timeout as exc:
            message = f"Vault at {self.address} did not answer within {self._timeout:g} s"
            raise self._unavailable_error(message) from exc
        except requests.RequestException as exc:
            raise self._unavailable_error(f"cannot reach Vault at {self.address}") from exc
        except hvac.exceptions.VaultDown as exc:
            message = f"Vault at {self.address} is sealed or unavailable"
            raise self._unavailable_error(message) from exc
        except hvac.exceptions.VaultError as exc:
            message = f"Vault at {self.address} failed: {vault_message(exc)}"
            raise self._unavailable_error(message) from exc
        else:
            outcome = "success"
            self._answered(operation, outcome)
            return result
        finally:
            # A request still queued when its caller gave up never reached Vault: not counted.
            if operation is not None and self._on_request is not None and send.sent:
                self._on_request(operation, outcome)

    def _may_send(self, attempt: _Attempt | None) -> bool:
        """Checked in the worker, just before a request goes out (see `_Send`)."""
        if attempt is None:
            return True
        # Waiting for a worker took the caller's time, or Vault went down meanwhile: sending
        # now would only add to what a hung Vault has to get through.
        if attempt.abandoned or time.monotonic() >= attempt.deadline:
            return False
        return attempt.probe or not (self._available is False or self._worker_saw_failure)

    def _unavailable_error(self, message: str) -> VaultUnavailable:
        self._unavailable(message)
        return VaultUnavailable(message)


class _Send(Generic[T]):
    """One hvac call as a worker runs it: sent only if still wanted, failures noted at once."""

    __slots__ = ("attempt", "fn", "sent", "session")

    def __init__(self, session: VaultSession, fn: Callable[[], T], attempt: _Attempt | None):
        self.session = session
        self.fn = fn
        self.attempt = attempt
        self.sent = False

    def __call__(self) -> T:
        if not self.session._may_send(self.attempt):
            raise _NotSent
        if self.attempt is not None:
            self.attempt.reached_vault = True
        self.sent = True
        try:
            return self.fn()
        except (requests.RequestException, hvac.exceptions.VaultDown):
            # The next queued request must not go out before the event loop has heard of this.
            self.session._worker_saw_failure = True
            raise
