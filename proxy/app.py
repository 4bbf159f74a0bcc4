"""Wiring: build the proxy and admin aiohttp applications from one Config.

Each long-lived resource is one `cleanup_ctx` entry and one `web.AppKey`, opened in this order
and closed in reverse:

    HTTP_SESSION   the upstream aiohttp session (Genesys login and API)
    SOURCE         the credential source (Vault, kept logged in; or the file)
    OAUTH          the Genesys login client (its background revocations)
    CREDENTIALS    the credential store, a policy over TABLE (its re-reads)
    TOKENS         the token manager, a policy over TABLE (its fetches and refreshes)
    FORWARDER, TOKEN_ENDPOINT   the request handlers, built from the above

TABLE (the tenant table), METRICS, READINESS, ACCESS_LOG, RATELIMIT (the rate-limit policy; each
tenant's budget lives on its table object) and RECONFIGURABLE (what a reload reconfigures) are
plain state, made with the app. The admin app (`proxy.ops.admin`) reads the same keys, so both
listeners see one state.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable

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
from proxy.http.guard import ListenerGuard
from proxy.http.token_endpoint import TokenEndpoint, local_endpoint_disabled
from proxy.ops.access_log import AccessLog, RequestObserver, access_log_ctx
from proxy.ops.health import Readiness
from proxy.ops.metrics import Metrics
from proxy.reload import RECONFIGURABLE, Reconfigurable
from proxy.tenants.credentials import CredentialSource, CredentialStore, create_credential_source
from proxy.tenants.oauth import GenesysTokenFetcher, Token
from proxy.tenants.ratelimit import RateLimiter, RateLimitSettings
from proxy.tenants.table import TenantTable
from proxy.tenants.tokens import TokenManager

log = logging.getLogger("proxy.app")


CONFIG = web.AppKey("config", Config)
METRICS = web.AppKey("metrics", Metrics)
# Made before resources open, so /readyz answers "starting" while they do.
READINESS = web.AppKey("readiness", Readiness)
ACCESS_LOG = web.AppKey("access_log", AccessLog)
TABLE = web.AppKey("tenant_table", TenantTable)
RATELIMIT = web.AppKey("ratelimit", RateLimiter[Token])
HTTP_SESSION = web.AppKey("http_session", aiohttp.ClientSession)
SOURCE = web.AppKey("credential_source", CredentialSource)
OAUTH = web.AppKey("oauth", GenesysTokenFetcher)
CREDENTIALS = web.AppKey("credentials", CredentialStore)
TOKENS = web.AppKey("tokens", TokenManager)
FORWARDER = web.AppKey("forwarder", Forwarder)
TOKEN_ENDPOINT = web.AppKey("token_endpoint", TokenEndpoint)


def _ssl_context(config: Config) -> ssl.SSLContext | bool:
    if config.genesys.ca_file is None:
        return True
    return ssl.create_default_context(cafile=str(config.genesys.ca_file))


async def _http_session_ctx(app: web.Application) -> AsyncIterator[None]:
    connector = aiohttp.TCPConnector(
        ssl=_ssl_context(app[CONFIG]),
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
    app[HTTP_SESSION] = session
    try:
        yield
    finally:
        await session.close()


async def _source_ctx(app: web.Application) -> AsyncIterator[None]:
    """Open the credential source and keep it usable (Vault: renew, log in again) meanwhile."""
    config, readiness = app[CONFIG], app[READINESS]
    source = create_credential_source(
        config, on_vault_request=app[METRICS].vault_request, health=readiness
    )
    try:
        await source.start()
        if config.credentials.source == "file":
            readiness.source_worked()  # start() raised if the file did not load
        app[SOURCE] = source
        async with source.kept_alive():
            yield
    finally:
        await source.close()


async def _oauth_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    oauth = GenesysTokenFetcher(
        app[HTTP_SESSION],
        config.genesys.login_url,
        api_url_template=config.genesys.api_url,
        timeout=config.genesys.timeout,
        connect_timeout=config.genesys.connect_timeout,
    )
    app[OAUTH] = oauth
    try:
        yield
    finally:
        await oauth.close()


async def _credentials_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    store = CredentialStore(
        app[TABLE],
        app[SOURCE],
        ttl=config.credentials.ttl,
        stale_ttl=config.credentials.stale_ttl,
        revoker=app[OAUTH],
        observer=app[METRICS],
    )
    app[CREDENTIALS] = store
    app[RECONFIGURABLE].append(store)
    try:
        yield
    finally:
        await store.close()


async def _tokens_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    tokens = TokenManager(
        app[TABLE],
        app[CREDENTIALS],
        app[OAUTH],
        refresh_at=config.genesys.refresh_at,
        pool_size=config.genesys.rate_limit.tokens_per_tenant,
        observer=app[METRICS],
    )
    app[TOKENS] = tokens
    app[RECONFIGURABLE].append(tokens)
    try:
        yield
    finally:
        await tokens.close()


async def _handlers_ctx(app: web.Application) -> AsyncIterator[None]:
    config, tokens = app[CONFIG], app[TOKENS]
    observer = RequestObserver(app[METRICS])
    tenants = TenantResolver(config, observer)
    settings = ForwardSettings.from_config(config)
    ratelimit = app[RATELIMIT]
    app[FORWARDER] = Forwarder(
        settings, tenants, tokens, app[HTTP_SESSION], observer, ratelimit=ratelimit
    )
    app[TOKEN_ENDPOINT] = TokenEndpoint(tenants, tokens, ratelimit)
    app[RECONFIGURABLE].append(tenants)
    try:
        yield
    finally:
        app[READINESS].start_draining()
        ratelimit.close()


# The router freezes before resources open, so routes dispatch through the app's keys.
async def _forward(request: web.Request) -> web.StreamResponse:
    return await request.app[FORWARDER](request)


async def _get_token(request: web.Request) -> web.StreamResponse:
    return await request.app[TOKEN_ENDPOINT].get_token(request)


async def _oauth_token(request: web.Request) -> web.StreamResponse:
    return await request.app[TOKEN_ENDPOINT].oauth_token(request)


def create_app(
    config: Config,
    registry: CollectorRegistry | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> web.Application:
    """The app-facing proxy application; its metrics go to `registry` (a fresh one if None).

    `clock` is the tenant table's (credential records' ages), so tests can age records at will.
    """
    table = TenantTable(
        config.tenant.max_tenants, negative_ttl=config.credentials.negative_ttl, clock=clock
    )
    metrics = Metrics(
        registry if registry is not None else CollectorRegistry(),
        table=table,
        tenant_label=config.metrics.tenant_label,
        uses_vault=config.credentials.source == "vault",
    )
    access = AccessLog(metrics, config.log)
    app = web.Application(
        # The access middleware is outermost: it sees the proxy's own error answers too.
        # The guard is innermost: error_middleware turns its refusals into contract errors.
        middlewares=[
            access.middleware,
            error_middleware,
            ListenerGuard(config.listen).middleware(),
        ],
        client_max_size=max(config.listen.max_body_bytes, 1024),
    )
    app[CONFIG] = config
    app[METRICS] = metrics
    app[TABLE] = table
    app[READINESS] = Readiness(
        uses_vault=config.credentials.source == "vault", on_vault_up=metrics.vault_state
    )
    app[ACCESS_LOG] = access
    # Components holding reloadable settings; each resource's creator appends its own.
    reconfigurable: list[Reconfigurable] = [access]
    app[RECONFIGURABLE] = reconfigurable
    app.cleanup_ctx.append(access_log_ctx(access))  # first: its last lines are written last
    app[RATELIMIT] = RateLimiter(
        RateLimitSettings.from_config(config),
        observer=metrics,
        budgets=lambda: [tenant.budget for tenant in table if tenant.budget is not None],
    )
    reconfigurable.append(app[RATELIMIT])
    app.cleanup_ctx.extend(
        [_http_session_ctx, _source_ctx, _oauth_ctx, _credentials_ctx, _tokens_ctx, _handlers_ctx]
    )
    local = config.local_token_endpoint
    app.router.add_get(
        "/auth/token", _get_token if local else local_endpoint_disabled, allow_head=False
    )
    app.router.add_post("/oauth/token", _oauth_token if local else local_endpoint_disabled)
    # [\s\S], not ".": a path with %0A (a newline once decoded) is forwarded like any other.
    app.router.add_route("*", r"/{path:[\s\S]*}", _forward)
    return app
