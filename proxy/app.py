"""Wiring: build the proxy and admin aiohttp applications from one Config.

The proxy app owns every long-lived resource through one `cleanup_ctx` entry (`Runtime`): the
upstream HTTP session, the credential source and store, and the token manager. The admin app
(`proxy.ops.admin`) reads the same Runtime and the same `Metrics`, so both listeners see one state.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from proxy.config import Config
from proxy.http.forward import (
    SKIP_AUTO_HEADERS,
    Forwarder,
    ForwardSettings,
    TenantResolver,
    error_middleware,
)
from proxy.http.token_endpoint import TokenEndpoint, local_endpoint_disabled
from proxy.ops.access_log import RequestObserver, access_middleware
from proxy.ops.metrics import Metrics
from proxy.tenants.credentials import (
    CredentialStore,
    VaultCredentialSource,
    create_credential_source,
)
from proxy.tenants.ratelimit import RateLimiter, RateLimitSettings
from proxy.tenants.tokens import GenesysTokenFetcher, Token, TokenManager
from proxy.vault.renewal import VaultRenewer

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
    metrics: Metrics
    ratelimit: RateLimiter[Token]
    started_at: float = field(default_factory=time.time)
    draining: bool = False

    async def ready(self) -> bool:
        """Serving normally: not shutting down, and the credential source is usable."""
        return not self.draining and await self.credentials.ready()


CONFIG = web.AppKey("config", Config)
METRICS = web.AppKey("metrics", Metrics)
RUNTIME = web.AppKey("runtime", Runtime)


def _ssl_context(config: Config) -> ssl.SSLContext | bool:
    if config.genesys.ca_file is None:
        return True
    return ssl.create_default_context(cafile=str(config.genesys.ca_file))


async def _runtime_ctx(app: web.Application) -> AsyncIterator[None]:
    """Open the session, credential source and token manager; close them in reverse."""
    config, metrics = app[CONFIG], app[METRICS]
    connector = aiohttp.TCPConnector(
        ssl=_ssl_context(config),
        limit=0,  # the app's own concurrency is the limit; a pool cap would only queue
        ttl_dns_cache=60,
        keepalive_timeout=30,
        enable_cleanup_closed=False,
    )
    # One session serves every tenant: a cookie jar would replay one tenant's cookies (a load
    # balancer's stickiness cookie, say) on another's requests. Cookies pass through instead.
    # The forwarder sends the app's headers as they are: no User-Agent, Accept or Content-Type
    # of aiohttp's own. Set here once; per request, aiohttp rebuilt the set on every call.
    session = aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        trust_env=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=SKIP_AUTO_HEADERS,
    )
    source = create_credential_source(config, on_vault_request=metrics.vault_request)
    try:
        await source.start()
        store = CredentialStore(
            source,
            ttl=config.credentials.ttl,
            negative_ttl=config.credentials.negative_ttl,
            stale_ttl=config.credentials.stale_ttl,
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
            observer=metrics,
        )
        observer = RequestObserver(metrics)
        tenants = TenantResolver(config, observer)
        settings = ForwardSettings.from_config(config)
        ratelimit: RateLimiter[Token] = RateLimiter(
            RateLimitSettings.from_config(config),
            observer=metrics,
            max_tenants=config.tenant.max_tenants,
        )
        runtime = Runtime(
            config=config,
            credentials=store,
            tokens=tokens,
            session=session,
            forwarder=Forwarder(settings, tenants, tokens, session, observer, ratelimit=ratelimit),
            token_endpoint=TokenEndpoint(tenants, tokens),
            metrics=metrics,
            ratelimit=ratelimit,
        )
        app[RUNTIME] = runtime
        metrics.track_tokens(tokens)
        metrics.track_ratelimit(ratelimit)
        try:
            yield
        finally:
            runtime.draining = True
            metrics.track_tokens(None)
            metrics.track_ratelimit(None)
            ratelimit.close()
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


def create_app(config: Config, registry: CollectorRegistry | None = None) -> web.Application:
    """The app-facing proxy application; its metrics go to `registry` (a fresh one if None)."""
    metrics = Metrics(
        registry if registry is not None else CollectorRegistry(),
        tenant_label=config.metrics.tenant_label,
        max_tenants=config.tenant.max_tenants,
    )
    app = web.Application(
        # The access middleware is outermost: it sees the proxy's own error answers too.
        middlewares=[access_middleware(metrics, log_requests=config.log.access), error_middleware],
        client_max_size=max(config.listen.max_body_bytes, 1024),
    )
    app[CONFIG] = config
    app[METRICS] = metrics
    app.cleanup_ctx.append(_runtime_ctx)
    app.cleanup_ctx.append(_vault_renewal_ctx)  # after the runtime: stops before it closes
    local = config.local_token_endpoint
    app.router.add_get(
        "/auth/token", _get_token if local else local_endpoint_disabled, allow_head=False
    )
    app.router.add_post("/oauth/token", _oauth_token if local else local_endpoint_disabled)
    app.router.add_route("*", "/{path:.*}", _forward)
    return app
