"""The admin listener: `/metrics`, `/healthz`, `/readyz`, the `/admin` page and its JSON API.

    GET    /metrics                          Prometheus text format (open)
    GET    /healthz, /readyz                 liveness, readiness (open)
    GET    /admin                            the page: one row per known tenant
    POST   /admin/login, /admin/logout       the page's session (token mode)
    POST   /admin/tenants/{tenant}/refresh   the page's buttons (CSRF-checked forms)
    POST   /admin/tenants/{tenant}/evict
    GET    /admin/api/tenants                the page's content as JSON
    POST   /admin/api/tenants/{tenant}/refresh
    DELETE /admin/api/tenants/{tenant}

Who may use `/admin*` is decided in `proxy.ops.admin_auth`. Nothing here ever shows a token or a
secret: client ids are masked, secrets reduced to their last 4 characters.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlencode

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from proxy import __version__
from proxy.app import CONFIG, METRICS, READINESS, SOURCE, TABLE, TOKENS
from proxy.errors import ProxyError, UnknownTenant
from proxy.http.forward import TenantResolver, error_response
from proxy.ops.admin_auth import SESSION_COOKIE, SESSION_SECONDS, AdminAccess
from proxy.tenants.record import mask_client_id, mask_secret
from proxy.tenants.table import Tenant
from proxy.tenants.tokens import TokenManager

if TYPE_CHECKING:
    import jinja2

log = logging.getLogger("proxy.ops.admin")

PROXY_APP = web.AppKey("proxy_app", web.Application)
ACCESS = web.AppKey("admin_access", AdminAccess)
PAGE_REFRESH = web.AppKey("admin_page_refresh", int)

# Set on every /admin* answer: nothing is loaded from elsewhere, nothing may frame the page.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # Not no-referrer: with it, browsers send `Origin: null` on form posts to the page itself.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
# What a button's redirect may tell the page; the query string is not trusted beyond this.
_NOTICES = {"refreshed", "evicted", "failed"}
_ERROR_CODE = re.compile(r"[a-z_]{1,40}")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class PoolToken:
    """One of a tenant's tokens: its life and its rate-limit window; never the token itself."""

    expires_in: int
    allowed: int | None  # Genesys' inin-ratelimit-allowed; None until its first answer
    remaining: int | None
    in_flight: int
    resets_in: float | None


@dataclass(frozen=True)
class TenantRow:
    """One tenant as the page and the API show it; never a token or a full secret."""

    tenant: str
    region: str | None
    client_id: str | None
    client_secret: str | None
    state: str
    expires_in: int
    expires_at: float | None
    last_refresh: float | None
    last_error: str | None
    last_error_message: str | None
    token_fetches: int
    requests: int
    errors: int
    # The rate limit: requests left over all of the tenant's tokens, those held, and its pool.
    ratelimit_remaining: int | None = None
    ratelimit_waiting: int = 0
    pool: tuple[PoolToken, ...] = ()


__all__ = [
    "PoolToken",
    "TenantRow",
    "create_admin_app",
    "mask_client_id",
    "mask_secret",
    "tenant_rows",
]


def tenant_row(tenant: Tenant, tokens: TokenManager, now: float) -> TenantRow:
    """One tenant's row, read from its table object alone."""
    state = tokens.describe(tenant, now)
    record, stats, budget = tenant.record, tenant.stats, tenant.budget
    usable = [token for token in tenant.tokens if now < token.usable_until]
    windows = budget.describe(usable) if budget is not None else [{} for _ in usable]
    pool = tuple(
        PoolToken(
            expires_in=int(token.seconds_left(now)),
            allowed=_int_or_none(window.get("allowed")),
            remaining=_int_or_none(window.get("remaining")),
            in_flight=int(window.get("in_flight") or 0),
            resets_in=window.get("reset"),
        )
        for token, window in zip(usable, windows, strict=True)
    )
    return TenantRow(
        tenant=tenant.id,
        region=record.region if record else state.domain,
        client_id=mask_client_id(record.client_id) if record else None,
        client_secret=mask_secret(record.client_secret) if record else None,
        state=state.state,
        expires_in=int(state.seconds_left),
        expires_at=state.expires_at,
        last_refresh=state.last_refresh,
        last_error=state.last_error_code,
        last_error_message=state.last_error_message,
        token_fetches=state.fetches,
        requests=stats.requests if stats else 0,
        errors=stats.errors if stats else 0,
        ratelimit_remaining=budget.remaining() if budget is not None else None,
        ratelimit_waiting=budget.waiting if budget is not None else 0,
        pool=pool,
    )


def _int_or_none(value: float | None) -> int | None:
    return None if value is None else int(value)


def tenant_rows(proxy_app: web.Application) -> list[TenantRow]:
    """Every tenant in the table, sorted."""
    tokens = proxy_app[TOKENS]
    now = time.monotonic()
    return [tenant_row(tenant, tokens, now) for tenant in proxy_app[TABLE].tenants()]


async def source_status(proxy_app: web.Application) -> dict[str, Any]:
    """The credential source as the page shows it: kind, readiness, its own details."""
    source = proxy_app[SOURCE]
    return {"source": source.name, "ready": await source.ready(), **source.describe()}


async def overview(proxy_app: web.Application) -> dict[str, Any]:
    """What `GET /admin/api/tenants` answers and the page renders."""
    readiness = proxy_app[READINESS]
    return {
        "version": __version__,
        "uptime_seconds": int(time.time() - readiness.started_at),
        "draining": readiness.draining,
        "credentials": await source_status(proxy_app),
        "tenants": [asdict(row) for row in tenant_rows(proxy_app)],
    }


# -- open endpoints -------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return web.json_response({"status": "ok", "version": __version__})


async def readyz(request: web.Request) -> web.Response:
    """Readiness from state (`proxy.ops.health`): never waits on Vault, survives its outages."""
    status, body = request.app[PROXY_APP][READINESS].answer()
    return web.json_response(body, status=status)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus exposition, in the format the scraper asks for."""
    registry = request.app[PROXY_APP][METRICS].registry
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    return web.Response(body=encode(registry), headers={"Content-Type": content_type})


# -- the guard ------------------------------------------------------------------------------------


@web.middleware
async def admin_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Apply the access mode to `/admin*`; everything else passes untouched."""
    if request.path != "/admin" and not request.path.startswith("/admin/"):
        return await handler(request)
    access = request.app[ACCESS]
    api = request.path.startswith("/admin/api/")
    response: web.StreamResponse
    if access.mode == "refused":
        response = _refusal(api, 403, "admin_disabled", access.describe())
    elif not access.host_allowed(request):
        message = "the open admin page answers only to a loopback Host (DNS rebinding guard)"
        response = _refusal(api, 403, "bad_host", message)
    elif not access.same_origin(request):
        response = _refusal(api, 403, "cross_origin", "state changes must come from this page")
    elif access.authorized(request) or request.path == "/admin/login":
        response = await handler(request)
    elif api:
        response = _refusal(api, 401, "unauthorized", "send Authorization: Bearer <admin token>")
        response.headers["WWW-Authenticate"] = 'Bearer realm="genesys-token-proxy admin"'
    else:
        response = _login_page(request, status=401)
    response.headers.update(SECURITY_HEADERS)
    return response


def _refusal(api: bool, status: int, code: str, message: str) -> web.Response:
    if api:
        body = {"error": code, "message": message, "tenant": None}
        return web.json_response(body, status=status)
    return web.Response(text=f"{status}: {message}\n", status=status)


def _login_page(request: web.Request, *, status: int, failed: bool = False) -> web.Response:
    context = {"failed": failed, "version": __version__}
    return _render("login.html", request, context, status=status)


# -- the page -------------------------------------------------------------------------------------


async def page(request: web.Request) -> web.Response:
    """The admin page; a `notice` query names what a button just did."""
    proxy_app = _proxy_app(request)
    access = request.app[ACCESS]
    notice = request.query.get("notice")
    tenant, code = request.query.get("tenant", ""), request.query.get("code", "")
    context = {
        **(await overview(proxy_app)),
        "csrf": access.csrf_token(request),
        "logout": access.mode == "token",
        "refresh_seconds": request.app[PAGE_REFRESH],
        "notice": notice if notice in _NOTICES else None,
        "notice_tenant": tenant if proxy_app[CONFIG].tenant.pattern.fullmatch(tenant) else "?",
        "notice_code": code if _ERROR_CODE.fullmatch(code) else "error",
        "now": time.time(),
    }
    return _render("admin.html", request, context)


async def login(request: web.Request) -> web.Response:
    form = await request.post()
    given = form.get("token")
    session = request.app[ACCESS].login(given if isinstance(given, str) else "")
    if session is None:
        return _login_page(request, status=401, failed=True)
    response = _see_other("/admin")
    response.set_cookie(
        SESSION_COOKIE,
        session,
        max_age=SESSION_SECONDS,
        path="/admin",
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )
    return response


async def logout(request: web.Request) -> web.Response:
    request.app[ACCESS].logout(request)
    response = _see_other("/admin")
    response.del_cookie(SESSION_COOKIE, path="/admin")
    return response


async def form_action(request: web.Request) -> web.Response:
    """The page's Refresh and Evict buttons: check the CSRF token, act, redirect back."""
    form = await request.post()
    if not request.app[ACCESS].csrf_valid(request, form.get("csrf")):
        return web.Response(text="403: the form is stale; reload the page\n", status=403)
    proxy_app = _proxy_app(request)
    tenant = request.match_info["tenant"]
    query: dict[str, str] = {"tenant": tenant}
    try:
        tenant = TenantResolver(proxy_app[CONFIG]).check(tenant)
        if request.match_info["action"] == "refresh":
            await proxy_app[TOKENS].refresh(tenant)
            query["notice"] = "refreshed"
        else:
            _evict(proxy_app, tenant)
            query["notice"] = "evicted"
    except ProxyError as exc:
        query.update(notice="failed", code=exc.code)
    return _see_other("/admin?" + urlencode(query))


# -- the JSON API ---------------------------------------------------------------------------------


async def api_tenants(request: web.Request) -> web.Response:
    return web.json_response(await overview(_proxy_app(request)))


async def api_refresh(request: web.Request) -> web.Response:
    """Fetch a new token for the tenant now; answers its row, or the contract error."""
    proxy_app = _proxy_app(request)
    try:
        tenant = TenantResolver(proxy_app[CONFIG]).check(request.match_info["tenant"])
        await proxy_app[TOKENS].refresh(tenant)
    except ProxyError as exc:
        return error_response(exc)
    found = proxy_app[TABLE].peek(tenant)
    if found is None:  # evicted while its token was fetched
        return error_response(UnknownTenant(f"tenant {tenant!r} was evicted", tenant=tenant))
    return web.json_response(asdict(tenant_row(found, proxy_app[TOKENS], time.monotonic())))


async def api_evict(request: web.Request) -> web.Response:
    """Forget the tenant's token and credential record; the next request starts afresh."""
    proxy_app = _proxy_app(request)
    try:
        tenant = TenantResolver(proxy_app[CONFIG]).check(request.match_info["tenant"])
        _evict(proxy_app, tenant)
    except ProxyError as exc:
        return error_response(exc)
    return web.json_response({"tenant": tenant, "evicted": True})


def _evict(proxy_app: web.Application, tenant: str) -> None:
    # The table's one eviction path: record, tokens, backoff, budget and metric series.
    if not proxy_app[TABLE].evict(tenant):
        raise UnknownTenant(f"the proxy holds nothing for tenant {tenant!r}", tenant=tenant)
    log.info("tenant %s evicted from the admin page", tenant, extra={"tenant": tenant})


def _see_other(location: str) -> web.Response:
    # Post/redirect/get: reloading the page does not press the button again.
    return web.Response(status=303, headers={"Location": location})


def _proxy_app(request: web.Request) -> web.Application:
    """The proxy app, once its resources are open (the admin listener may answer before)."""
    proxy_app = request.app[PROXY_APP]
    if TOKENS not in proxy_app:
        raise web.HTTPServiceUnavailable(text="the proxy is starting\n")
    return proxy_app


# -- wiring ---------------------------------------------------------------------------------------


def create_admin_app(proxy_app: web.Application, *, page_refresh: int = 15) -> web.Application:
    """The operator-facing listener, reading the proxy app's runtime and metrics.

    `page_refresh`: seconds between the page's own reloads (0: never).
    """
    access = AdminAccess(proxy_app[CONFIG].admin)
    app = web.Application(middlewares=[admin_guard])
    app[PROXY_APP] = proxy_app
    app[ACCESS] = access
    app[PAGE_REFRESH] = page_refresh
    app[TEMPLATES] = PageTemplates()

    async def announce(app: web.Application) -> None:
        (log.warning if access.mode == "refused" else log.info)(access.describe())

    app.on_startup.append(announce)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/admin", page)
    app.router.add_post("/admin/login", login)
    app.router.add_post("/admin/logout", logout)
    app.router.add_post("/admin/tenants/{tenant}/{action:refresh|evict}", form_action)
    app.router.add_get("/admin/api/tenants", api_tenants)
    app.router.add_post("/admin/api/tenants/{tenant}/refresh", api_refresh)
    app.router.add_delete("/admin/api/tenants/{tenant}", api_evict)
    return app


class PageTemplates:
    """The page's jinja2 environment, built when a page is first rendered, not at start.

    aiohttp-jinja2 renders the pages (`_render`) and finds this object under its app key; all it
    asks of it is `get_template`. jinja2 and aiohttp-jinja2 are imported at that first render:
    about 2 MB of resident memory that a sidecar whose page is never opened does not carry.
    (aiohttp-jinja2's `setup` cannot be called then: the app's state is frozen once it runs.)
    """

    def __init__(self) -> None:
        self._env: jinja2.Environment | None = None

    def get_template(self, name: str) -> jinja2.Template:
        if self._env is None:
            import jinja2

            env = jinja2.Environment(
                loader=jinja2.PackageLoader("proxy.ops", "templates"),
                autoescape=True,
                undefined=jinja2.StrictUndefined,
            )
            env.filters["utc"] = _utc
            env.filters["duration"] = format_duration
            self._env = env
        return self._env.get_template(name)


TEMPLATES = web.AppKey("admin_templates", PageTemplates)


def _render(
    name: str, request: web.Request, context: dict[str, Any], *, status: int = 200
) -> web.Response:
    """The template `name` rendered by aiohttp-jinja2 as an HTML answer."""
    import aiohttp_jinja2  # imports jinja2: at the first render (see PageTemplates)

    # aiohttp-jinja2 types its key as holding a jinja2.Environment; PageTemplates stands in.
    key = cast("web.AppKey[jinja2.Environment]", TEMPLATES)
    return aiohttp_jinja2.render_template(name, request, context, app_key=key, status=status)


def format_duration(seconds: float) -> str:
    """`1d 2h`, `23h 59m`, `4m 10s`, `9s`: the two largest units."""
    left = int(seconds)
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if left >= size or (unit == "s" and not parts):
            parts.append(f"{left // size}{unit}")
            left %= size
    return " ".join(parts[:2])


def _utc(timestamp: float | None) -> str:
    if timestamp is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(timestamp))
