"""Only local, non-browser callers: the Host and Origin checks of the app-facing listener.

The listener hands out tenants' tokens (and spends them) to whoever can reach it, which on
loopback means the pod's own processes. A browser on the same machine can reach loopback too:

- DNS rebinding: a page on `attacker.example` re-points its own name to 127.0.0.1, and its
  scripts then read the proxy's answers as same-origin. Their requests still carry
  `Host: attacker.example`: while listening on loopback, only a loopback Host (or one listed in
  `listen.allowed_hosts`) is served, else 403 `bad_host`.
- Cross-site requests: a page elsewhere posts a form (`text/plain` needs no preflight) or a
  `fetch(..., {mode: "no-cors"})` that spends a tenant's token through `tenant.default`. Browsers
  mark those with `Sec-Fetch-Site` (anything but `none` / `same-origin`) or an `Origin` header
  that is not the proxy's own: 403 `cross_site`, whatever `listen.host` is. Tools and SDKs send
  neither header.

A request with no Host at all (HTTP/1.0 tools) passes the Host check: browsers always send one.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from proxy.config import ListenConfig
from proxy.errors import BadHost, BadRequest, CrossSite

log = logging.getLogger("proxy.http.guard")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Sec-Fetch-Site values of a request the user made directly or a page of the proxy's own origin.
_LOCAL_FETCH_SITES = frozenset({"none", "same-origin"})
_SHOWN_CHARS = 80


def is_loopback_name(name: str) -> bool:
    """Whether `name` (no port, IPv6 without brackets) always means this machine."""
    name = name.lower().rstrip(".")
    if name == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False  # a host name: it may resolve to anything, and a rebinding page's does
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def host_name(host: str) -> str | None:
    """The name part of a Host header value (`[::1]:8080` -> `::1`), None if it is malformed."""
    if host.startswith("["):
        name, bracket, rest = host[1:].partition("]")
        if not bracket or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        return name.lower()
    name, colon, port = host.rpartition(":")
    if not colon:
        return host.lower().rstrip(".")
    if not port.isdigit() or ":" in name:
        return None
    return name.lower().rstrip(".")


class ListenerGuard:
    """Refuses requests that did not come from a local program (see the module docstring)."""

    def __init__(self, listen: ListenConfig) -> None:
        allowed = frozenset(listen.allowed_hosts)
        # On another address the proxy is reachable by name from elsewhere: the operator chose
        # that, so the Host check is off (the cross-site check stays).
        self.checks_host = is_loopback_name(listen.host.strip("[]")) and "*" not in allowed
        self._allowed = allowed - {"*"}
        # A loopback client sends the same one or two Host values on every request: remember
        # each value's verdict (bounded) rather than parse it with ipaddress each time.
        self._host_verdicts = functools.lru_cache(maxsize=256)(self._local_host)

    def _local_host(self, host: str) -> bool:
        return self._local_name(host_name(host))

    def _local_name(self, name: str | None) -> bool:
        return name is not None and (is_loopback_name(name) or name in self._allowed)

    def check(self, request: web.Request) -> None:
        """Raise BadHost or CrossSite for a request the listener must not serve."""
        hosts = request.headers.getall("Host", ())
        if len(hosts) > 1:
            raise BadRequest("the request has more than one Host header")
        if self.checks_host and hosts and not self._host_verdicts(hosts[0]):
            log.info("refused Host %s: not a loopback name (DNS rebinding guard)", _shown(hosts[0]))
            raise BadHost(
                f"the Host header {_shown(hosts[0])} is not a loopback name; a program that "
                "reaches the proxy by another name needs it in listen.allowed_hosts"
            )
        site = request.headers.get("Sec-Fetch-Site")
        if site is not None and site.lower() not in _LOCAL_FETCH_SITES:
            log.info(
                "refused a request a browser sent from a web page (Sec-Fetch-Site %s)", _shown(site)
            )
            raise CrossSite(
                "a browser sent this request from a web page; the proxy serves only local programs"
            )
        for origin in request.headers.getall("Origin", ()):
            if not self._local_origin(origin):
                log.info("refused a request from the web page %s", _shown(origin))
                raise CrossSite(
                    f"a browser sent this request from the web page {_shown(origin)}; "
                    "the proxy serves only local programs"
                )

    def _local_origin(self, origin: str) -> bool:
        # `null` (sandboxed frames, file: pages) and anything unparsable count as a web page.
        scheme, sep, rest = origin.partition("://")
        if not sep or scheme.lower() not in ("http", "https") or "/" in rest:
            return False
        return self._local_name(host_name(rest))

    def middleware(self) -> Middleware:
        """The check as middleware, inside `error_middleware` (which answers its errors)."""

        @web.middleware
        async def listener_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
            self.check(request)
            return await handler(request)

        return listener_guard


def _shown(value: str) -> str:
    return repr(value[:_SHOWN_CHARS]) + ("..." if len(value) > _SHOWN_CHARS else "")
