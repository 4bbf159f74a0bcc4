"""A local Genesys Cloud: the login service and API of any number of regions on one server.

Regions are told apart by a path prefix holding the region's domain:

    GET  /healthz                         200 while it serves
    POST /login/{domain}/oauth/token      the login service of region {domain}
    *    /api/{domain}/api/v2/...         its API (endpoints in `proxy.simulator.endpoints`)

so the proxy's config reads `login_url: http://127.0.0.1:<port>/login/{domain}` and
`api_url: http://127.0.0.1:<port>/api/{domain}`.
"""

import asyncio
import binascii
import collections
import contextlib
import hashlib
import hmac
import logging
import secrets
import time
import uuid
from base64 import b64decode
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import replace
from typing import Any

from aiohttp import hdrs, web

from proxy.simulator import directory, endpoints
from proxy.simulator.endpoints import ApiCall
from proxy.simulator.model import (
    Fault,
    FaultQueue,
    IssuedToken,
    RateWindow,
    ResourceLimit,
    SeenRequest,
    SimClient,
    SlidingWindowLimiter,
)

log = logging.getLogger("proxy.simulator")

CORRELATION_HEADER = "ININ-Correlation-Id"
MAX_BODY_BYTES = 64 * 1024 * 1024
SEEN_REQUESTS_KEPT = 10_000
KEPT_BODY_BYTES = 1024 * 1024
# Shown as `inin-ratelimit-allowed` when the simulator runs without an API rate limit.
UNLIMITED = 2**31 - 1
# The body code of Genesys' rate-limit answers.
RATE_LIMITED_CODE = "too.many.requests.retry.after"


class GenesysSimulator:
    """Genesys Cloud's login service and API, faithful wherever the proxy can tell.

    Example::

        sim = GenesysSimulator(clock=fake_clock)
        sim.add_client("client-a", "secret-a", domain="mypurecloud.ie", org_name="Acme")
        async with sim.running():
            config = {"login_url": sim.login_url_template, "api_url": sim.api_url_template}

    Rate limits work as Genesys' do: each token may make `api_requests_per_minute` requests per
    window of `rate_window_seconds` (60 in Genesys; shorter ones make tests and benchmarks
    quick), every answer carries `inin-ratelimit-allowed`, `-count` and `-reset`, and a request
    over the limit is answered 429 `too.many.requests.retry.after` with `Retry-After` and is not
    processed. `resource_limits` add limits of single resources, counted per client.
    """

    def __init__(
        self,
        *,
        api_requests_per_minute: int | None = 300,
        token_requests_per_minute: int = 300,
        rate_window_seconds: float = 60.0,
        resource_limits: Iterable[ResourceLimit] = (),
        clock: Callable[[], float] = time.time,
        reveal_tokens: bool = True,
    ) -> None:
        self._api_limit: int | None = None
        self._window_seconds = 60.0
        self.set_rate_limit(api_requests_per_minute, window_seconds=rate_window_seconds)
        self._resource_limits: list[ResourceLimit] = list(resource_limits)
        self._resource_windows: dict[tuple[str, int], RateWindow] = {}
        self._rate_limited: collections.Counter[str] = collections.Counter()
        # False: the echo endpoint masks bearer tokens (the demo prints its answers).
        self._reveal_tokens = reveal_tokens
        self.users = directory.UserStore()
        self._clock = clock
        # How a fault's delay is waited out; a test may swap it to see who is waiting.
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
        self._login_limiter = SlidingWindowLimiter(token_requests_per_minute, clock)
        self._clients: dict[str, SimClient] = {}
        self._tokens: dict[str, IssuedToken] = {}
        self._issued: list[str] = []
        self._login_faults = FaultQueue()
        self._api_faults = FaultQueue()
        self._token_requests: collections.Counter[str | None] = collections.Counter()
        self._tokens_issued: collections.Counter[str] = collections.Counter()
        self._api_requests: collections.Counter[str | None] = collections.Counter()
        self._api_401s = 0
        self._expired_tokens_seen = 0
        self._base_url: str | None = None
        self.requests: collections.deque[SeenRequest] = collections.deque(maxlen=SEEN_REQUESTS_KEPT)
        self.app = web.Application(client_max_size=MAX_BODY_BYTES)
        self.app.router.add_get("/healthz", _handle_health)
        self.app.router.add_post("/login/{domain}/oauth/token", self._handle_login)
        # [\s\S], not ".": a path with %0A must reach the handler too, to be recorded.
        self.app.router.add_route("*", r"/api/{domain}/{tail:[\s\S]*}", self._handle_api)

    # -- where it listens ------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """`http://host:port` of the server; set it yourself when serving `app` another way."""
        if self._base_url is None:
            raise RuntimeError("the simulator is not running: use `async with sim.running()`")
        return self._base_url

    @base_url.setter
    def base_url(self, url: str) -> None:
        self._base_url = url.rstrip("/")

    @property
    def login_url_template(self) -> str:
        return self.base_url + "/login/{domain}"

    @property
    def api_url_template(self) -> str:
        return self.base_url + "/api/{domain}"

    @contextlib.asynccontextmanager
    async def running(
        self, host: str = "127.0.0.1", port: int = 0
    ) -> AsyncIterator["GenesysSimulator"]:
        """Serve on `host:port` (0: a free port) for the duration of the block."""
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
            bound_port = runner.addresses[0][1]
            url_host = f"[{host}]" if ":" in host else host
            self.base_url = f"http://{url_host}:{bound_port}"
            yield self
        finally:
            self._base_url = None
            await runner.cleanup()

    # -- clients and tokens ----------------------------------------------------------------------

    def add_client(
        self,
        client_id: str,
        client_secret: str,
        *,
        domain: str,
        org_name: str | None = None,
        token_lifetime: float = 86400,
    ) -> SimClient:
        """Register (or replace) an OAuth client; clients sharing `org_name` share an org."""
        if token_lifetime <= 0:
            raise ValueError(f"token_lifetime must be positive, got {token_lifetime}")
        org_name = org_name or f"Org {client_id}"
        client = SimClient(
            client_id=client_id,
            client_secret=client_secret,
            domain=domain,
            org_id=directory.org_id_for(domain, org_name),
            org_name=org_name,
            token_lifetime=token_lifetime,
        )
        self._clients[client_id] = client
        return client

    def remove_client(self, client_id: str) -> None:
        """Delete a client; like Genesys, this revokes its tokens."""
        del self._clients[client_id]
        self.revoke_tokens(client_id)

    def set_token_lifetime(self, client_id: str, seconds: float) -> None:
        """Change the lifetime of tokens issued from now on."""
        if seconds <= 0:
            raise ValueError(f"token lifetime must be positive, got {seconds}")
        self._clients[client_id] = replace(self._clients[client_id], token_lifetime=seconds)

    # -- rate limits -----------------------------------------------------------------------------

    def set_rate_limit(self, allowed: int | None, *, window_seconds: float = 60.0) -> None:
        """Each token may make `allowed` API requests per window (None: no limit).

        Windows already running keep their start; the new length and limit apply at once.
        """
        if allowed is not None and allowed < 1:
            raise ValueError("the API rate limit must be at least 1, or None for no limit")
        if window_seconds <= 0:
            raise ValueError(f"the rate window must be positive, got {window_seconds}")
        self._api_limit = allowed
        self._window_seconds = float(window_seconds)

    def add_resource_limit(
        self,
        path_prefix: str,
        allowed: int,
        *,
        window_seconds: float = 60.0,
        method: str | None = None,
    ) -> ResourceLimit:
        """Limit requests to paths under `path_prefix` (of `method`, or any) per client."""
        limit = ResourceLimit(path_prefix, allowed, window_seconds, method)
        self._resource_limits.append(limit)
        return limit

    def rate_limited(self, client_id: str | None = None) -> int:
        """Requests refused 429 by a rate limit (the token's or a resource's), not by a fault."""
        if client_id is None:
            return self._rate_limited.total()
        return self._rate_limited[client_id]

    def revoke_tokens(self, client_id: str) -> int:
        """Revoke every live token of the client; returns how many were revoked."""
        revoked = 0
        for token in self._tokens.values():
            if token.client_id == client_id and not token.revoked:
                token.revoked = True
                revoked += 1
        return revoked

    # -- faults ----------------------------------------------------------------------------------

    def inject_login_fault(
        self,
        *,
        status: int = 503,
        delay: float = 0.0,
        retry_after: int | None = None,
        body: bytes | None = None,
        content_type: str = "application/json",
        count: int = 1,
        client_id: str | None = None,
    ) -> None:
        """Make the next `count` token requests (of `client_id`, or anyone's) fail.

        Login faults apply before any check. Status 200 without a body makes the fault a pure
        delay; with a body, it is a 200 answer with that body (a malformed token answer).
        """
        fault = Fault(status, delay, retry_after, body, content_type, count, client_id)
        self._login_faults.add(fault)

    def inject_api_fault(
        self,
        *,
        status: int = 503,
        delay: float = 0.0,
        retry_after: int | None = None,
        body: bytes | None = None,
        content_type: str = "application/json",
        count: int = 1,
        client_id: str | None = None,
    ) -> None:
        """Make the next `count` authenticated API requests (of `client_id`, or anyone's) fail.

        Status 200 without a body makes the fault a pure delay.
        """
        fault = Fault(status, delay, retry_after, body, content_type, count, client_id)
        self._api_faults.add(fault)

    def clear_faults(self) -> None:
        self._login_faults.clear()
        self._api_faults.clear()

    # -- what happened ---------------------------------------------------------------------------

    def token_requests(self, client_id: str | None = None) -> int:
        """Token requests seen, rejected ones included, by the client id they claimed."""
        if client_id is None:
            return self._token_requests.total()
        return self._token_requests[client_id]

    def tokens_issued(self, client_id: str | None = None) -> int:
        if client_id is None:
            return self._tokens_issued.total()
        return self._tokens_issued[client_id]

    def issued_tokens(self) -> list[str]:
        """Every access token ever issued, so tests can check that none leaks."""
        return list(self._issued)

    def api_requests(self, client_id: str | None = None) -> int:
        """API requests seen, or those authenticated as `client_id`."""
        if client_id is None:
            return self._api_requests.total()
        return self._api_requests[client_id]

    def api_401s(self) -> int:
        return self._api_401s

    def token_revoked(self, access_token: str) -> bool:
        """Whether `access_token` was revoked (DELETE /api/v2/tokens/me, or its client's)."""
        token = self._tokens.get(access_token)
        return token is not None and token.revoked

    def live_tokens(self, client_id: str) -> list[str]:
        """The client's issued tokens that are neither revoked nor expired."""
        now = self._clock()
        return [
            value
            for value, token in self._tokens.items()
            if token.client_id == client_id and not token.revoked and now < token.expires_at
        ]

    def expired_tokens_seen(self) -> int:
        """API requests that carried a token past its expiry: a proxy must never send one."""
        return self._expired_tokens_seen

    def reset_counters(self) -> None:
        """Zero the counters and forget seen requests; tokens and rate windows stay."""
        self._token_requests.clear()
        self._tokens_issued.clear()
        self._api_requests.clear()
        self._rate_limited.clear()
        self._api_401s = 0
        self._expired_tokens_seen = 0
        self.requests.clear()

    # -- the login service -----------------------------------------------------------------------

    async def _handle_login(self, request: web.Request) -> web.Response:
        domain = request.match_info["domain"]
        headers = {
            CORRELATION_HEADER: request.headers.get(CORRELATION_HEADER) or str(uuid.uuid4()),
            hdrs.CACHE_CONTROL: "no-store",
            hdrs.PRAGMA: "no-cache",
        }
        basic = _parse_basic(request.headers.get(hdrs.AUTHORIZATION, ""))
        claimed_id = basic[0] if basic else None
        self._token_requests[claimed_id] += 1

        fault = self._login_faults.take(claimed_id)
        if fault is not None:
            log.debug("login fault %d for client %s", fault.status, claimed_id)
            if fault.delay:
                await self.sleep(fault.delay)
            if not fault.passes_through:
                default = {
                    "error": "temporarily_unavailable",
                    "description": "Simulated fault",
                    "error_description": "Simulated fault",
                }
                return _fault_response(fault, headers, default)

        form = await request.post()
        client = self._clients.get(claimed_id) if claimed_id is not None else None
        if basic is None or client is None or client.domain != domain:
            return _oauth_error(400, "invalid_client", "client not found", headers)
        if not hmac.compare_digest(client.client_secret.encode(), basic[1].encode()):
            return _oauth_error(400, "invalid_client", "authentication failed", headers)
        wait = self._login_limiter.acquire(client.client_id)
        if wait is not None:
            headers[hdrs.RETRY_AFTER] = str(wait)
            limit = self._login_limiter.limit
            message = f"Rate limit exceeded the maximum of {limit} token requests in 60 seconds"
            return _oauth_error(429, "too_many_requests", message, headers)
        if form.get("grant_type") != "client_credentials":
            message = "grant_type must be client_credentials"
            return _oauth_error(400, "unsupported_grant_type", message, headers)

        access_token = _new_token()
        self._tokens[access_token] = IssuedToken(
            client_id=client.client_id,
            domain=domain,
            org_id=client.org_id,
            expires_at=self._clock() + client.token_lifetime,
        )
        self._issued.append(access_token)
        self._tokens_issued[client.client_id] += 1
        body = {
            "access_token": access_token,
            "token_type": "bearer",
            "expires_in": int(client.token_lifetime),
        }
        return web.json_response(body, headers=headers)

    # -- the API ---------------------------------------------------------------------------------

    async def _handle_api(self, request: web.Request) -> web.StreamResponse:
        correlation_id = request.headers.get(CORRELATION_HEADER) or str(uuid.uuid4())
        # The raw path, so a test sees exactly what the proxy forwarded.
        tail = request.rel_url.raw_path.split("/", 3)[3]
        call = ApiCall(
            request=request,
            domain=request.match_info["domain"],
            path="/" + tail,
            correlation_id=correlation_id,
            response_headers={CORRELATION_HEADER: correlation_id},
            users=self.users,
            reveal_tokens=self._reveal_tokens,
        )
        rejection = self._authenticate(call)
        self._api_requests[call.token.client_id if call.token else None] += 1
        status = 499  # recorded if the client goes away before an answer
        try:
            call.body_length, call.body_sha256, call.body = await _digest_body(request)
            response = rejection or await self._answer(call)
            status = response.status
            return response
        finally:
            self._record(call, status)

    def _authenticate(self, call: ApiCall) -> web.Response | None:
        """Set `call.token`, or return the 401 Genesys would answer."""
        header = call.request.headers.get(hdrs.AUTHORIZATION, "")
        scheme, _, credentials = header.strip().partition(" ")
        credentials = credentials.strip()
        if scheme.lower() != "bearer" or not credentials:
            message = "No authentication bearer token specified in authorization header."
            return call.error(401, "authentication.required", message)
        token = self._tokens.get(credentials)
        # A token from another region's login service is as unknown there as a made-up one.
        if token is None or token.revoked or token.domain != call.domain:
            return call.error(401, "bad.credentials", "Invalid login credentials.")
        if self._clock() >= token.expires_at:
            self._expired_tokens_seen += 1
            return call.error(401, "credentials.expired", "The provided credentials have expired.")
        call.token = token
        return None

    async def _answer(self, call: ApiCall) -> web.StreamResponse:
        assert call.token is not None
        now = self._clock()
        window = self._window_seconds
        token_window = call.token.window
        admitted, count, reset = token_window.admit(now, self._api_limit, window)
        refusal: tuple[int, str] | None = None
        if not admitted:
            refusal = (
                reset,
                (
                    f"Rate limit exceeded the maximum of {self._api_limit} requests "
                    f"in {window:g} seconds"
                ),
            )
        else:
            refusal = self._check_resource_limits(call, now)
            if refusal is not None:
                token_window.count -= 1  # refused, so not processed: it uses none of the budget
                count -= 1
        call.response_headers.update(
            {
                "inin-ratelimit-count": str(count),
                "inin-ratelimit-allowed": str(self._api_limit or UNLIMITED),
                "inin-ratelimit-reset": str(reset),
            }
        )
        if refusal is not None:
            retry_after, message = refusal
            self._rate_limited[call.token.client_id] += 1
            call.response_headers[hdrs.RETRY_AFTER] = str(retry_after)
            return call.error(429, RATE_LIMITED_CODE, message)

        fault = self._api_faults.take(call.token.client_id)
        if fault is not None:
            log.debug("API fault %d for client %s", fault.status, call.token.client_id)
            if fault.delay:
                await self.sleep(fault.delay)
            if not fault.passes_through:
                default = endpoints.error_body(fault.status, "Simulated fault", call.correlation_id)
                return _fault_response(fault, call.response_headers, default)

        client = self._clients.get(call.token.client_id)
        if client is None:  # removed while this request was on its way
            return call.error(401, "bad.credentials", "Invalid login credentials.")
        return await endpoints.route(call, client)

    def _check_resource_limits(self, call: ApiCall, now: float) -> tuple[int, str] | None:
        """(Retry-After, message) of the first resource limit the request is over, or None."""
        assert call.token is not None
        method = call.request.method
        for index, limit in enumerate(self._resource_limits):
            if not limit.applies_to(method, call.path):
                continue
            key = (call.token.client_id, index)
            window = self._resource_windows.setdefault(key, RateWindow())
            admitted, _, reset = window.admit(now, limit.allowed, limit.window_seconds)
            if not admitted:
                return reset, (
                    f"Rate limit exceeded the maximum of {limit.allowed} requests "
                    f"in {limit.window_seconds:g} seconds for {limit.path_prefix}"
                )
        return None

    def _record(self, call: ApiCall, status: int) -> None:
        request = call.request
        self.requests.append(
            SeenRequest(
                method=request.method,
                domain=call.domain,
                path=call.path,
                query_string=request.rel_url.raw_query_string,
                headers=tuple(request.headers.items()),
                body_length=call.body_length,
                body_sha256=call.body_sha256,
                client_id=call.token.client_id if call.token else None,
                status=status,
                target=request.raw_path,
                raw_headers=tuple(request.raw_headers),
            )
        )
        if status == 401:
            self._api_401s += 1


async def _handle_health(request: web.Request) -> web.Response:
    """200 once the simulator serves: what a script waits for after starting it."""
    return web.json_response({"status": "ok"})


def _new_token() -> str:
    """An opaque token shaped like Genesys' own: 86 URL-safe characters."""
    return secrets.token_urlsafe(64)


def _parse_basic(header: str) -> tuple[str, str] | None:
    """(client_id, client_secret) from a Basic authorization header, or None if garbled."""
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, colon, secret = decoded.partition(":")
    return (client_id, secret) if colon and client_id else None


async def _digest_body(request: web.Request) -> tuple[int, str, bytes | None]:
    """Read the request body as a stream: (length, sha256 hex, the body if at most 1 MiB)."""
    digest = hashlib.sha256()
    length = 0
    kept: list[bytes] | None = []
    async for chunk in request.content.iter_chunked(64 * 1024):
        digest.update(chunk)
        length += len(chunk)
        if kept is not None:
            kept.append(chunk)
            if length > KEPT_BODY_BYTES:
                kept = None
    return length, digest.hexdigest(), b"".join(kept) if kept is not None else None


def _oauth_error(
    status: int, error: str, description: str, headers: dict[str, str]
) -> web.Response:
    body = {"error": error, "description": description, "error_description": description}
    return web.json_response(body, status=status, headers=headers)


def _fault_response(fault: Fault, headers: dict[str, str], default: dict[str, Any]) -> web.Response:
    headers = dict(headers)
    if fault.retry_after is not None:
        headers[hdrs.RETRY_AFTER] = str(fault.retry_after)
    if fault.body is None:
        return web.json_response(default, status=fault.status, headers=headers)
    headers[hdrs.CONTENT_TYPE] = fault.content_type
    return web.Response(status=fault.status, body=fault.body, headers=headers)
