"""Who may use `/admin*`: the admin bearer token, a session cookie for the page, CSRF checks.

Three modes, fixed at start-up from `admin.host` and `admin.token_file`:

    token    a token file is set: `/admin*` needs `Authorization: Bearer <token>`, or the session
             cookie the login form sets once the token was typed in (logout ends it here,
             not only in the browser)
    open     no token, admin listener on loopback: only processes in the pod can reach it
    refused  no token, admin listener on another address: `/admin*` answers 403

`/metrics`, `/healthz` and `/readyz` are never guarded: Prometheus and the kubelet need them.
Every state-changing request must come from the page itself (the `Origin` and `Sec-Fetch-Site`
headers a browser sends), and HTML forms carry a CSRF token tied to the session.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from aiohttp import web

from proxy.config import AdminConfig
from proxy.errors import ConfigError
from proxy.filestamp import FileStamp

log = logging.getLogger("proxy.ops.admin")

AccessMode = Literal["token", "open", "refused"]
SESSION_COOKIE = "genesys_proxy_admin"
SESSION_SECONDS = 8 * 3600
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def is_loopback(host: str) -> bool:
    """Whether `host` only accepts connections from this machine (or pod)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


class AdminToken:
    """The admin bearer token, from a file re-read when it changes (a rotated Secret)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stamp: FileStamp | None = None
        self._value = ""
        problem = self._reload()
        if problem is not None:
            raise ConfigError("admin.token_file", problem)

    def __repr__(self) -> str:
        return f"AdminToken({str(self._path)!r})"

    def current(self) -> str:
        """The token now in the file; the last good one if the file became unreadable."""
        problem = self._reload()
        if problem is not None:
            log.warning("admin.token_file: %s; keeping the previous token", problem)
        return self._value

    def _reload(self) -> str | None:
        try:
            # Inode too: a Secret volume's symlink swap can keep the size and the mtime.
            stamp = FileStamp.stat(self._path)
            if stamp == self._stamp:
                return None
            value = self._path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            return f"cannot read {self._path}: {getattr(exc, 'strerror', None) or exc}"
        if not value:
            return f"{self._path} is empty"
        self._stamp, self._value = stamp, value
        return None


class AdminAccess:
    """Decides whether a request may use `/admin*`, and issues sessions and CSRF tokens."""

    def __init__(
        self,
        config: AdminConfig,
        *,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.token = AdminToken(config.token_file) if config.token_file is not None else None
        self.mode: AccessMode
        if self.token is not None:
            self.mode = "token"
        elif is_loopback(config.host):
            self.mode = "open"
        else:
            self.mode = "refused"
        self._host = config.host
        self._clock = wall_clock
        # Per process: sessions and CSRF tokens die with it, and never leave it.
        self._key = secrets.token_bytes(32)
        # Sessions ended by logout before their expiry: signed cookies are otherwise valid
        # until then, so a copied cookie would outlive the logout. Only sessions that were
        # valid get here (that takes the admin token), and each leaves once it has expired.
        self._ended: dict[str, int] = {}

    def describe(self) -> str:
        """One line for the start-up log."""
        if self.mode == "token":
            return "admin page: bearer token required (admin.token_file)"
        if self.mode == "open":
            return f"admin page: open to local clients ({self._host} is loopback, no token set)"
        return (
            f"admin page refused: admin.host {self._host} is not loopback and no "
            "admin.token_file is set; /metrics, /healthz and /readyz stay open"
        )

    def authorized(self, request: web.Request) -> bool:
        """Whether the request carries the admin token (or a session made with it)."""
        if self.mode == "open":
            return True
        if self.mode == "refused" or self.token is None:
            return False
        token = self.token.current()
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and given.strip():
            return hmac.compare_digest(given.strip().encode(), token.encode())
        return self._valid_session(request.cookies.get(SESSION_COOKIE), token)

    def login(self, given: str) -> str | None:
        """A new session cookie value if `given` is the admin token, else None."""
        if self.mode != "token" or self.token is None:
            return None
        token = self.token.current()
        if not hmac.compare_digest(given.strip().encode(), token.encode()):
            return None
        expires = int(self._clock()) + SESSION_SECONDS
        # A random id per login: two logins in one second are two sessions, ended one by one.
        session = secrets.token_urlsafe(16)
        return f"{expires}.{session}.{self._sign(f'session:{expires}:{session}', token)}"

    def logout(self, request: web.Request) -> None:
        """End the request's session here, not only in the browser: its cookie stops working."""
        cookie = request.cookies.get(SESSION_COOKIE)
        if self.token is None or not self._valid_session(cookie, self.token.current()):
            return
        assert cookie is not None
        self._ended[cookie] = int(cookie.partition(".")[0])

    def csrf_token(self, request: web.Request) -> str:
        """The token forms must send back: bound to the session (or the process, when open)."""
        session = request.cookies.get(SESSION_COOKIE, "")
        return self._sign(f"csrf:{session}", "")

    def csrf_valid(self, request: web.Request, given: object) -> bool:
        if not isinstance(given, str) or not given:
            return False
        return hmac.compare_digest(given.encode(), self.csrf_token(request).encode())

    def host_allowed(self, request: web.Request) -> bool:
        """In open mode, only a loopback Host: a web page that rebinds its own name to 127.0.0.1
        would otherwise be same-origin with the page and could press its buttons."""
        if self.mode != "open":
            return True
        host = request.host
        name = host[1:].partition("]")[0] if host.startswith("[") else host.rpartition(":")[0]
        return is_loopback(name or host)

    def same_origin(self, request: web.Request) -> bool:
        """False for a state change a browser says came from another site."""
        if request.method not in UNSAFE_METHODS:
            return True
        if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
            return False
        origin = request.headers.get("Origin")
        # Tools like curl send no Origin; browsers always do on a cross-origin POST.
        return origin is None or origin == f"{request.scheme}://{request.host}"

    def _valid_session(self, cookie: str | None, token: str) -> bool:
        if not cookie:
            return False
        expires, _, rest = cookie.partition(".")
        session, _, signature = rest.partition(".")
        if not expires.isdigit() or int(expires) < self._clock():
            return False
        now = self._clock()
        for ended, until in list(self._ended.items()):
            if until < now:
                del self._ended[ended]
        if cookie in self._ended:
            return False
        # Signed with the token itself too: rotating the token ends every session.
        expected = self._sign(f"session:{expires}:{session}", token)
        return hmac.compare_digest(signature.encode(), expected.encode())

    def _sign(self, message: str, token: str) -> str:
        key = hashlib.sha256(self._key + token.encode()).digest()
        return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()
