"""The app-facing listener: resolve the tenant, inject its token, forward to its Genesys region.

A request's path through this module:

    error_middleware  -> refuses absolute-form targets and CONNECT, turns ProxyError into JSON
    listener_guard    -> only local, non-browser callers (proxy.http.guard)
    forward()         -> tenant -> TokenManager.lookup() -> its budget picks a pool token (may
                         hold, or refuse with 429 rate_limited) -> upstream -> streamed response
                         an upstream 401 drops the token and replays once (buffered bodies only)
                         an upstream 429 within max_wait is waited out and replayed (buffered)

The local token endpoint (`GET /auth/token`, `POST /oauth/token`) is `proxy.http.token_endpoint`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from proxy.config import Config
from proxy.errors import (
    BadRequest,
    BodyTooLarge,
    InternalError,
    InvalidTenant,
    MissingTenant,
    ProxyError,
    RequestTimeout,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from proxy.http import wire
from proxy.http.failures import describe_client_error, url_host
from proxy.http.wire import upstream_url
from proxy.tenants.ids import check_tenant_id
from proxy.tenants.ratelimit import RateLimiter, parse_ratelimit_headers
from proxy.tenants.table import Tenant
from proxy.tenants.tokens import Token, TokenManager

log = logging.getLogger("proxy.http.forward")
# Header bytes that are not UTF-8 pass both ways unchanged (see proxy.http.wire).
wire.install()

# RFC 9110 section 7.6.1, plus the non-standard Proxy-Connection that old clients still send.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Bodies up to this size are read before forwarding, so a 401 can be answered by a replay.
REPLAY_BUFFER_BYTES = 256 * 1024
STREAM_CHUNK_BYTES = 64 * 1024
# Answers with a Content-Length up to this are read whole and sent in one write (head and body
# together); streamed, the head and each chunk were a socket write of their own. Larger answers,
# and those without a length, stream.
WHOLE_ANSWER_BYTES = STREAM_CHUNK_BYTES
# Statuses whose answers have no body (RFC 9110 section 6.4.1).
_NO_BODY_STATUSES = frozenset({204, 304})
# The methods of a REST API. Anything else (TRACE, WebDAV, made-up tokens) is refused rather
# than sent to Genesys with a live token attached.
FORWARDED_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Without these, aiohttp's client would add headers the app never sent. Set on the session
# (proxy.app), which the forwarder relies on: per request, aiohttp rebuilds the set each call.
SKIP_AUTO_HEADERS = frozenset({"User-Agent", "Accept-Encoding", "Accept", "Content-Type"})


class ForwardObserver(Protocol):
    """Told what happens to each request, for metrics and the access log."""

    def tenant_resolved(self, request: web.Request, tenant: str) -> None: ...

    def upstream_answered(
        self,
        request: web.Request,
        tenant: str,
        upstream: aiohttp.ClientResponse,
        seconds: float,
    ) -> None: ...

    def upstream_retried(self, request: web.Request, tenant: str, reason: str) -> None: ...


@dataclass(frozen=True)
class ForwardSettings:
    """What the forwarder needs from the config, flattened once for the hot path."""

    tenant_header: str
    api_url: str
    max_body_bytes: int
    body_timeout: float
    timeout: aiohttp.ClientTimeout

    @classmethod
    def from_config(cls, config: Config) -> ForwardSettings:
        return cls(
            tenant_header=config.tenant.header,
            api_url=config.genesys.api_url,
            max_body_bytes=config.listen.max_body_bytes,
            # Each wait for more of the app's body: a stalled body must not hold a request open.
            body_timeout=config.listen.idle_timeout,
            # `timeout` bounds each wait for the upstream, not a whole streamed download.
            timeout=aiohttp.ClientTimeout(
                total=None,
                sock_connect=config.genesys.connect_timeout,
                sock_read=config.genesys.timeout,
            ),
        )


def error_response(error: ProxyError) -> web.Response:
    """The contract's JSON error body, tagged with `X-Proxy-Error`."""
    headers = {"X-Proxy-Error": error.code, "Cache-Control": "no-store"}
    if error.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(error.retry_after)))
    body = {"error": error.code, "message": error.message, "tenant": error.tenant}
    return web.json_response(body, status=error.status, headers=headers)


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Refuse proxy-style requests and turn the proxy's own errors into contract responses."""
    try:
        if request.method == "CONNECT":
            raise BadRequest("CONNECT is not supported: this proxy only forwards to Genesys Cloud")
        if request.method not in FORWARDED_METHODS:
            shown = request.method[:32]
            raise BadRequest(f"the method {shown!r} is not supported by Genesys Cloud's API")
        if not request.raw_path.startswith("/"):
            raise BadRequest("the request target must be a path, not an absolute URL")
        return await handler(request)
    except RequestTimeout as exc:
        log.info("request failed: %s %s", exc.code, exc.message, extra={"tenant": exc.tenant})
        return await _answer_and_close(request, error_response(exc))
    except ProxyError as exc:
        if exc.status >= 500:
            log.warning(
                "request failed: %s %s", exc.code, exc.message, extra={"tenant": exc.tenant}
            )
        return error_response(exc)
    except (ConnectionResetError, asyncio.IncompleteReadError) as exc:
        # The app closed or cut its request short: its fault, not the proxy's. If it is still
        # there it gets a 400; if it is gone, aiohttp drops the answer quietly.
        log.info("the client went away mid-request (%s)", type(exc).__name__)
        return error_response(BadRequest("the request ended before its body was complete"))
    except web.HTTPRequestEntityTooLarge:
        # aiohttp's own limit, hit by request.post() on the local token endpoint.
        return error_response(BodyTooLarge("the request body is over the configured limit"))
    except web.HTTPException:
        raise
    except Exception:
        # A bug, not the client's fault: log it here, never send a traceback to the app.
        log.exception("unexpected error while handling %s %s", request.method, request.path)
        return error_response(InternalError("the proxy failed unexpectedly; see its logs"))


async def _answer_and_close(request: web.Request, response: web.Response) -> web.Response:
    """Send `response`, then close the connection without waiting for the rest of the body."""
    if request.transport is None or request.transport.is_closing():
        return response  # already cut off (a stalled streamed body): aiohttp drops it quietly
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    # Otherwise aiohttp keeps reading the unfinished body for its lingering time (10 s): the
    # very stall the answer is about. close() still flushes the answer before closing.
    request.protocol.force_close()
    return response


class TenantResolver:
    """Finds and validates the tenant of a request: exactly one non-empty tenant header."""

    def __init__(self, config: Config, observer: ForwardObserver | None = None) -> None:
        self.header = config.tenant.header
        self.observer = observer
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        """Apply a reloaded `tenant.pattern` and `tenant.default` (the header needs a restart)."""
        self.pattern = config.tenant.pattern
        self.default = config.tenant.default

    def __call__(self, request: web.Request, fallback: str | None = None) -> str:
        values = request.headers.getall(self.header, ())
        if len(values) > 1:
            # Which one an intermediary or Genesys would read is anyone's guess: refuse both.
            raise InvalidTenant(
                f"the request has {len(values)} {self.header} headers; send exactly one"
            )
        if values:
            if not values[0]:
                # Never the default tenant: an empty header is a bug in the app, not a choice.
                raise InvalidTenant(f"the {self.header} header is empty")
            tenant = values[0]
        elif fallback is not None:
            tenant = fallback
        elif self.default is not None:
            tenant = self.default
        else:
            raise MissingTenant(f"the {self.header} header is missing and no default tenant is set")
        tenant = self.check(tenant)
        if self.observer is not None:
            self.observer.tenant_resolved(request, tenant)
        return tenant

    def check(self, tenant: str) -> str:
        return check_tenant_id(tenant, self.pattern)


class Forwarder:
    """The catch-all handler that sends a request to its tenant's Genesys region."""

    def __init__(
        self,
        settings: ForwardSettings,
        tenants: TenantResolver,
        tokens: TokenManager,
        session: aiohttp.ClientSession,
        observer: ForwardObserver | None = None,
        *,
        ratelimit: RateLimiter[Token] | None = None,
    ) -> None:
        self.settings = settings
        self.tenants = tenants
        self.tokens = tokens
        self.session = session
        self.observer = observer
        self.ratelimit: RateLimiter[Token] = ratelimit or RateLimiter()
        # Built once: copying HOP_BY_HOP for every request showed up in the profile.
        self._dropped = HOP_BY_HOP | {"host", "authorization", settings.tenant_header.lower()}
        self._api_bases: dict[str, URL] = {}

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        tenant = self.tenants(request)
        body, replayable = await self._request_body(request, tenant)
        gone = _client_gone(request)
        entry, first = await self.tokens.lookup(tenant)
        upstream, token = await self._attempt(request, entry, first, body, gone)
        if upstream.status == 401:
            # A token the cache still trusted was refused (revoked, or expired early): replace
            # it (one refetch however many requests got the 401) and replay once. If the fresh
            # token is refused too, the endpoint refuses: that 401 goes to the app, the token
            # stays, and the tenant's next 401-driven refetch backs off (the 401 storm rule).
            if not replayable:
                self.tokens.discard(entry, token)
            else:
                # A refused first token means a refetch, and the replay must go out on the
                # fresh token (the storm rule judges it); a refused pool token is only dropped,
                # and the replay goes to the rest of the pool.
                pinned = entry.token is token
                fresh = await self.tokens.replacement(entry, token)
                if fresh is not None:
                    upstream.release()
                    log.info("upstream refused the token; replaying", extra={"tenant": tenant})
                    if self.observer is not None:
                        self.observer.upstream_retried(request, tenant, "unauthorized")
                    upstream, sent = await self._attempt(
                        request, entry, fresh, body, gone, only=pinned
                    )
                    if upstream.status == 401:
                        self.tokens.refused_again(entry, sent)
                    else:
                        self.tokens.accepted(entry)
        replays = 0
        while upstream.status == 429:
            # Genesys did not process the request: replaying it is safe for every method.
            delay = self.ratelimit.replay_delay(upstream.headers, replays) if replayable else None
            if delay is None:
                self.ratelimit.upstream_429(tenant, "passed")
                break
            self.ratelimit.upstream_429(tenant, "retried")
            upstream.release()
            replays += 1
            log.info(
                "Genesys answered 429; replaying in %.1f s at most (replay %d)",
                delay,
                replays,
                extra={"tenant": tenant},
            )
            if self.observer is not None:
                self.observer.upstream_retried(request, tenant, "rate_limited")
            if not _window_used_up(upstream.headers):
                # A resource's limit, not the token's window: the budget cannot know its reset.
                await self.ratelimit.hold_for(tenant, delay, gone)
            entry, first = await self.tokens.lookup(tenant)
            upstream, token = await self._attempt(request, entry, first, body, gone)
        return await self._relay(request, tenant, upstream)

    async def _attempt(
        self,
        request: web.Request,
        entry: Tenant,
        first: Token,
        body: bytes | AsyncIterator[bytes] | None,
        gone: Callable[[], bool],
        *,
        only: bool = False,
    ) -> tuple[aiohttp.ClientResponse, Token]:
        """One upstream request on the pool token with the most budget (or on `first` alone),
        timed to its response headers and reported to the budget and the observer."""
        tokens = self.tokens

        def candidates() -> tuple[Token, ...]:
            return (first,) if only else (tokens.pool(entry) or (first,))

        grow = None
        if not only and tokens.pool_size > 1:
            grow = functools.partial(tokens.grow, entry)
        budget = self.ratelimit.budget_of(entry)
        lease = await budget.acquire(candidates, grow=grow, gone=gone)
        tenant = entry.id
        started = time.perf_counter()
        try:
            upstream = await self._send(request, tenant, lease.token, body)
        except BaseException:
            lease.abandon()
            raise
        lease.answered(upstream.status, upstream.headers)
        if self.observer is not None:
            seconds = time.perf_counter() - started
            self.observer.upstream_answered(request, tenant, upstream, seconds)
        return upstream, lease.token

    async def _request_body(
        self, request: web.Request, tenant: str
    ) -> tuple[bytes | AsyncIterator[bytes] | None, bool]:
        """The body to send upstream and whether it can be sent twice."""
        limit = self.settings.max_body_bytes
        length = request.content_length
        if length is not None and length > limit:
            raise BodyTooLarge(
                f"the request body is {length} bytes; the limit is {limit}", tenant=tenant
            )
        if not request.body_exists:
            return None, True
        if length is not None and length <= REPLAY_BUFFER_BYTES:
            content = request.content
            if content.is_eof():
                # The whole body came with the head (most small requests): nothing to wait for.
                return await content.readexactly(length), True
            try:
                async with asyncio.timeout(self.settings.body_timeout):
                    return await content.readexactly(length), True
            except TimeoutError:
                raise RequestTimeout(
                    f"no more of the request body arrived for {self.settings.body_timeout:g} s",
                    tenant=tenant,
                ) from None
        return _limited_stream(request, limit, self.settings.body_timeout, tenant), False

    async def _send(
        self,
        request: web.Request,
        tenant: str,
        token: Token,
        body: bytes | AsyncIterator[bytes] | None,
    ) -> aiohttp.ClientResponse:
        url = upstream_url(self._api_base(token.domain), request.raw_path)
        headers = self._upstream_headers(request, token)
        try:
            return await self.session.request(
                request.method,
                url,
                headers=headers,
                data=body,
                allow_redirects=False,
                timeout=self.settings.timeout,
            )
        except BodyTooLarge:
            raise
        except aiohttp.ConnectionTimeoutError as exc:
            # No connection within connect_timeout: Genesys was not reached, nothing was sent.
            raise UpstreamUnreachable(
                f"could not reach Genesys Cloud: {describe_client_error(exc, url_host(url))}",
                tenant=tenant,
            ) from exc
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamTimeout(
                f"Genesys Cloud did not answer in time ({url_host(url)})", tenant=tenant
            ) from exc
        except aiohttp.ClientError as exc:
            if isinstance(exc.__cause__, (BodyTooLarge, RequestTimeout)):
                raise exc.__cause__ from None
            if request.transport is None or request.transport.is_closing():
                # Reading the app's streamed body failed because the app went away.
                raise ConnectionResetError("the client closed the connection") from exc
            raise UpstreamUnreachable(
                f"could not reach Genesys Cloud: {describe_client_error(exc, url_host(url))}",
                tenant=tenant,
            ) from exc

    def _api_base(self, domain: str) -> URL:
        base = self._api_bases.get(domain)
        if base is None:
            # One per region domain (the region table bounds them): parsed once, not per request.
            base = self._api_bases[domain] = URL(self.settings.api_url.format(domain=domain))
        return base

    def _upstream_headers(self, request: web.Request, token: Token) -> CIMultiDict[str]:
        drop = _with_connection_names(self._dropped, request.headers)
        headers: CIMultiDict[str] = CIMultiDict(
            (name, value) for name, value in request.headers.items() if name.lower() not in drop
        )
        headers["Authorization"] = f"Bearer {token.value}"
        return headers

    async def _relay(
        self, request: web.Request, tenant: str, upstream: aiohttp.ClientResponse
    ) -> web.StreamResponse:
        """Stream the upstream answer back unchanged, minus hop-by-hop headers."""
        try:
            length = upstream.content_length
            if (
                length is not None
                and length <= WHOLE_ANSWER_BYTES
                and request.method != "HEAD"
                and upstream.status >= 200
                and upstream.status not in _NO_BODY_STATUSES
            ):
                return await self._whole_answer(tenant, upstream)
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            drop = _with_connection_names(HOP_BY_HOP, upstream.headers)
            for name, value in upstream.headers.items():
                if name.lower() not in drop:
                    response.headers.add(name, value)
            await response.prepare(request)
            try:
                async for chunk in upstream.content.iter_chunked(STREAM_CHUNK_BYTES):
                    try:
                        await response.write(chunk)
                    except ConnectionResetError:
                        # The app hung up mid-answer; releasing `upstream` drops its connection.
                        log.debug("the client went away mid-answer")
                        return response
            except (aiohttp.ClientError, TimeoutError) as exc:
                # The status line is gone already: all that is left is to cut the connection,
                # so the app sees a truncated answer rather than a complete-looking one.
                log.warning(
                    "upstream answer broke off: %s",
                    describe_client_error(exc, url_host(upstream.url)),
                )
                if request.transport is not None:
                    request.transport.close()
                return response
            await response.write_eof()
            return response
        finally:
            upstream.release()

    async def _whole_answer(self, tenant: str, upstream: aiohttp.ClientResponse) -> web.Response:
        """A small answer, read whole: aiohttp sends its head and body in one write."""
        # Nothing is sent to the app yet: if the answer breaks off, the app gets a contract
        # error rather than the cut-off answer a streamed one can only give.
        try:
            body = await upstream.read()
        except TimeoutError as exc:  # aiohttp's read timeout is a TimeoutError too
            raise UpstreamTimeout(
                f"Genesys Cloud ({upstream.url.host}) stopped sending its answer", tenant=tenant
            ) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnreachable(
                f"Genesys Cloud's answer ({upstream.url.host}) broke off before its end",
                tenant=tenant,
            ) from exc
        drop = _with_connection_names(HOP_BY_HOP, upstream.headers)
        # A list: web.Response builds its own CIMultiDict from it.
        headers = [
            (name, value) for name, value in upstream.headers.items() if name.lower() not in drop
        ]
        return web.Response(
            status=upstream.status, reason=upstream.reason, headers=headers, body=body
        )


def _client_gone(request: web.Request) -> Callable[[], bool]:
    """Whether the app hung up: aiohttp does not cancel the handler, so a held request asks."""

    def gone() -> bool:
        transport = request.transport
        return transport is None or transport.is_closing()

    return gone


def _window_used_up(headers: CIMultiDictProxy[str]) -> bool:
    """Whether a 429's headers say the token's own window is used up (not a resource limit)."""
    described = parse_ratelimit_headers(headers)
    return described is not None and described[1] >= described[0]


def _with_connection_names(base: frozenset[str], headers: CIMultiDictProxy[str]) -> frozenset[str]:
    """`base` plus the headers a Connection header names as hop-by-hop (RFC 9110 section 7.6.1)."""
    connection = headers.get("Connection")
    if not connection:
        return base
    return base | {name.strip().lower() for name in connection.split(",")}


async def _limited_stream(
    request: web.Request, limit: int, stall_seconds: float, tenant: str
) -> AsyncIterator[bytes]:
    """Stream the request body upstream, refusing it past `limit` bytes or a stall."""
    content = request.content
    seen = 0
    while True:
        try:
            async with asyncio.timeout(stall_seconds):
                chunk = await content.read(STREAM_CHUNK_BYTES)
        except TimeoutError:
            # Genesys has part of the body already: no answer can be complete now, so the
            # upstream request is dropped (raising here aborts it) and the app is cut off.
            request.protocol.force_close()
            raise RequestTimeout(
                f"the streamed request body stalled for {stall_seconds:g} s; connection closed",
                tenant=tenant,
            ) from None
        if not chunk:
            return
        seen += len(chunk)
        if seen > limit:
            raise BodyTooLarge(f"the request body passed the {limit}-byte limit", tenant=tenant)
        yield chunk
