"""Wiring: build the proxy and admin aiohttp applications from one Config.

The proxy app owns every long-lived resource through one `cleanup_ctx` entry (`Runtime`): the
upstream HTTP session, the credential source and store, and the token manager. The admin app
reads the same Runtime, so both listeners see one state.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from proxy import __version__
from proxy.config import Config
from proxy.credentials import CredentialStore, VaultCredentialSource, create_credential_source
from proxy.forward import (
    Forwarder,
    ForwardSettings,
    TenantResolver,
    TokenEndpoint,
    error_middleware,
    local_endpoint_disabled,
)
from proxy.tokens import GenesysTokenFetcher, TokenManager
from proxy.vault_renewal import VaultRenewer

log = logging.getLogger("proxy.app")


@dataclass
class Runtime:
    """The live state both listeners share."""

    config: Config
    credentials: CredentialStore
    tokens: TokenManager
    session: aiohttp.ClientSession
    forwarder: Forwarder
    token_endpoint: TokenEndpoint
    started_at: float = field(default_factory=time.time)
    draining: bool = False

    async def ready(self) -> bool:
        """Serving normally: not shutting down, and the credential source is usable."""
        return not self.draining and await self.credentials.ready()


CONFIG = web.AppKey("config", Config)
RUNTIME = web.AppKey("runtime", Runtime)
PROXY_APP = web.AppKey("proxy_app", web.Application)


def _ssl_context(config: Config) -> ssl.SSLContext | bool:
    if config.genesys.ca_file is None:
        return True
    return ssl.create_default_context(cafile=str(config.genesys.ca_file))


async def _runtime_ctx(app: web.Application) -> AsyncIterator[None]:
    """Open the session, credential source and token manager; close them in reverse."""
    config = app[CONFIG]
    connector = aiohttp.TCPConnector(
        ssl=_ssl_context(config),
        limit=0,  # the app's own concurrency is the limit; a pool cap would only queue
        ttl_dns_cache=60,
        keepalive_timeout=30,
        enable_cleanup_closed=False,
    )
    session = aiohttp.ClientSession(connector=connector, auto_decompress=False, trust_env=False)
    source = create_credential_source(config)
    try:
        await source.start()
        store = CredentialStore(
            source,
            ttl=config.credentials.ttl,
            negative_ttl=config.credentials.negative_ttl,
            max_entries=config.tenant.max_tenants,
        )
        fetcher = GenesysTokenFetcher(
            session,
            config.genesys.login_url,
            timeout=config.genesys.timeout,
            connect_timeout=config.genesys.connect_timeout,
        )
        tokens = TokenManager(
            store,
            fetcher,
            refresh_at=config.genesys.refresh_at,
            max_tenants=config.tenant.max_tenants,
        )
        tenants = TenantResolver(config)
        runtime = Runtime(
            config=config,
            credentials=store,
            tokens=tokens,
            session=session,
            forwarder=Forwarder(ForwardSettings.from_config(config), tenants, tokens, session),
            token_endpoint=TokenEndpoint(tenants, tokens),
        )
        app[RUNTIME] = runtime
        try:
            yield
        finally:
            runtime.draining = True
            await tokens.close()
            await store.close()
    finally:
        await source.close()
        await session.close()


async def _vault_renewal_ctx(app: web.Application) -> AsyncIterator[None]:
    """Keep the Vault token alive (renew, log in again) while the app runs; Vault source only."""
    source = app[RUNTIME].credentials.source
    if not isinstance(source, VaultCredentialSource):
        yield
        return
    async with VaultRenewer(source.session).running():
        yield


# The router freezes before resources open, so routes dispatch through the Runtime.
async def _forward(request: web.Request) -> web.StreamResponse:
    return await request.app[RUNTIME].forwarder(request)


async def _get_token(request: web.Request) -> web.StreamResponse:
    return await request.app[RUNTIME].token_endpoint.get_token(request)


async def _oauth_token(request: web.Request) -> web.StreamResponse:
    return await request.app[RUNTIME].token_endpoint.oauth_token(request)


def create_app(config: Config) -> web.Application:
    """The app-facing proxy application; its routes are added once its resources are open."""
    app = web.Application(
        middlewares=[error_middleware],
        client_max_size=max(config.listen.max_body_bytes, 1024),
    )
    app[CONFIG] = config
    app.cleanup_ctx.append(_runtime_ctx)
    app.cleanup_ctx.append(_vault_renewal_ctx)  # after the runtime: stops before it closes
    local = config.local_token_endpoint
    app.router.add_get(
        "/auth/token", _get_token if local else local_endpoint_disabled, allow_head=False
    )
    app.router.add_post("/oauth/token", _oauth_token if local else local_endpoint_disabled)
    app.router.add_route("*", "/{path:.*}", _forward)
    return app


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return web.json_response({"status": "ok", "version": __version__})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: the credential source is usable and the proxy is not draining."""
    runtime = request.app[PROXY_APP].get(RUNTIME)
    if runtime is None:
        return web.json_response({"status": "starting"}, status=503)
    if runtime.draining:
        return web.json_response({"status": "draining"}, status=503)
    if not await runtime.credentials.ready():
        source = runtime.config.credentials.source
        return web.json_response({"status": f"{source} unavailable"}, status=503)
    return web.json_response({"status": "ready"})


def create_admin_app(proxy_app: web.Application) -> web.Application:
    """The operator-facing listener: health and readiness (metrics and the page come later)."""
    app = web.Application()
    app[PROXY_APP] = proxy_app
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
