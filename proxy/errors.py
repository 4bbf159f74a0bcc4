"""The project's exceptions, in one tree.

    Exception
    ├── ConfigError                      a config file, CLI argument or env value is bad (exit 2)
    ├── StartupError                     the daemon cannot start: a port in use, say (exit 1)
    └── ProxyError                       answered to the app as JSON + `X-Proxy-Error`
        ├── MissingTenant                400 missing_tenant
        ├── InvalidTenant                400 invalid_tenant
        ├── BadRequest                   400 bad_request
        ├── UnknownTenant                404 unknown_tenant
        ├── TenantForbidden              403 tenant_forbidden
        ├── BadHost                      403 bad_host           (Host not loopback nor allowed)
        ├── CrossSite                    403 cross_site         (a browser, from a web page)
        ├── RequestTimeout               408 request_timeout
        ├── BodyTooLarge                 413 body_too_large
        ├── InvalidTenantCredentials     502 invalid_tenant_credentials
        ├── GenesysAuthFailed            502 genesys_auth_failed
        ├── VaultUnavailable             503 vault_unavailable   (Retry-After)
        ├── TokenUnavailable             503 token_unavailable   (Retry-After)
        ├── UpstreamUnreachable          502 upstream_unreachable
        ├── UpstreamTimeout              504 upstream_timeout
        ├── RateLimited                  429 rate_limited        (Retry-After; nothing was sent)
        └── InternalError                500 internal_error      (a bug; details only in the log)

Modules that talk to a dependency (hvac, the aiohttp client) translate its exceptions into these
with `raise ... from exc`, so nothing above them sees a foreign exception type.
"""

from __future__ import annotations

from typing import ClassVar


class ConfigError(Exception):
    """A configuration value is missing or wrong; `key` names it (`vault.auth.method`).

    `hint` is the nearest valid name for a misspelt key (`vault.auth.token`), shown after the
    message: `vault.auth.tokne: unknown key (did you mean vault.auth.token?)`.
    """

    def __init__(self, key: str, message: str, *, hint: str | None = None) -> None:
        text = f"{key}: {message}" if key else message
        super().__init__(f"{text} (did you mean {hint}?)" if hint else text)
        self.key = key
        self.message = message
        self.hint = hint


class StartupError(Exception):
    """The daemon cannot start (a port in use, say); the message is one line for the operator.

    Here rather than in `proxy.server`, so the command line can catch it without importing the
    daemon.
    """


class ProxyError(Exception):
    """An error the proxy answers itself; subclasses fix the HTTP status and contract code."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    default_retry_after: ClassVar[float | None] = None

    def __init__(
        self,
        message: str,
        *,
        tenant: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.tenant = tenant
        self.retry_after = retry_after if retry_after is not None else self.default_retry_after

    def for_tenant(self, tenant: str) -> ProxyError:
        """Return this error with `tenant` filled in, for errors raised below the tenant layer."""
        if self.tenant is None:
            self.tenant = tenant
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, tenant={self.tenant!r})"


class MissingTenant(ProxyError):
    status = 400
    code = "missing_tenant"


class InvalidTenant(ProxyError):
    status = 400
    code = "invalid_tenant"


class BadRequest(ProxyError):
    status = 400
    code = "bad_request"


class UnknownTenant(ProxyError):
    status = 404
    code = "unknown_tenant"


class TenantForbidden(ProxyError):
    status = 403
    code = "tenant_forbidden"


class BadHost(ProxyError):
    status = 403
    code = "bad_host"


class CrossSite(ProxyError):
    status = 403
    code = "cross_site"


class RequestTimeout(ProxyError):
    status = 408
    code = "request_timeout"


class BodyTooLarge(ProxyError):
    status = 413
    code = "body_too_large"


class InvalidTenantCredentials(ProxyError):
    status = 502
    code = "invalid_tenant_credentials"


class GenesysAuthFailed(ProxyError):
    status = 502
    code = "genesys_auth_failed"


class VaultUnavailable(ProxyError):
    status = 503
    code = "vault_unavailable"
    default_retry_after = 5.0


class TokenUnavailable(ProxyError):
    status = 503
    code = "token_unavailable"
    default_retry_after = 5.0

    def __init__(
        self, message: str, *, tenant: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, tenant=tenant, retry_after=retry_after)
        # What the token endpoint itself asked for (its Retry-After), unlike the default above.
        self.requested_retry_after = retry_after


class UpstreamUnreachable(ProxyError):
    status = 502
    code = "upstream_unreachable"


class UpstreamTimeout(ProxyError):
    status = 504
    code = "upstream_timeout"


class RateLimited(ProxyError):
    """The tenant's tokens have no Genesys budget left within `max_wait`; nothing was sent."""

    status = 429
    code = "rate_limited"
    default_retry_after = 1.0


class InternalError(ProxyError):
    status = 500
    code = "internal_error"
