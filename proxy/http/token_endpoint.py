"""`GET /auth/token` and `POST /oauth/token`: the raw token, for apps and SDKs that want it."""

from __future__ import annotations

import base64
import binascii
import time

from aiohttp import web

from proxy.errors import BadRequest
from proxy.http.forward import TenantResolver
from proxy.tenants.oauth import Token
from proxy.tenants.ratelimit import RateLimiter
from proxy.tenants.tokens import TokenManager


class TokenEndpoint:
    """`GET /auth/token` and `POST /oauth/token`: the raw token, for apps and SDKs that want it."""

    def __init__(
        self,
        tenants: TenantResolver,
        tokens: TokenManager,
        ratelimit: RateLimiter[Token] | None = None,
    ) -> None:
        self.tenants = tenants
        self.tokens = tokens
        self.ratelimit = ratelimit

    async def get_token(self, request: web.Request) -> web.Response:
        return await self._answer(self.tenants(request))

    async def oauth_token(self, request: web.Request) -> web.Response:
        form = await request.post()
        grant = form.get("grant_type")
        if grant != "client_credentials":
            raise BadRequest("grant_type must be client_credentials")
        return await self._answer(self.tenants(request, fallback=_basic_username(request)))

    async def _answer(self, tenant: str) -> web.Response:
        entry, token = await self.tokens.lookup(tenant)
        if self.ratelimit is not None:
            # Of a pool, the token with the most rate-limit budget left.
            token = self.ratelimit.budget_of(entry).best(self.tokens.pool(entry)) or token
        seconds_left = int(token.seconds_left(time.monotonic()))
        body = {"access_token": token.value, "token_type": "bearer", "expires_in": seconds_left}
        return web.json_response(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


def _basic_username(request: web.Request) -> str | None:
    """The Basic-auth username: the SDK's client id, which names the tenant here."""
    header = request.headers.get("Authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise BadRequest("the Authorization header is not valid Basic auth") from exc
    username = decoded.partition(":")[0]
    return username or None


async def local_endpoint_disabled(request: web.Request) -> web.Response:
    """With local_token_endpoint off, the token paths are the proxy's own 404, never forwarded."""
    body = {"error": "not_found", "message": "the local token endpoint is disabled", "tenant": None}
    return web.json_response(body, status=404, headers={"X-Proxy-Error": "not_found"})
