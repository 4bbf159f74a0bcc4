"""The Genesys Cloud login client: client-credentials tokens, and revoking them.

`GenesysTokenFetcher` is the only code that talks to the Genesys login service
(`POST {login_url}/oauth/token`) and to token revocation (`DELETE {api_url}/api/v2/tokens/me`).
What to do with the tokens (caching, refreshing, backing off) is `proxy.tenants.tokens`.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from proxy.errors import GenesysAuthFailed, TokenUnavailable
from proxy.http.failures import describe_client_error, url_host
from proxy.tasks import BackgroundTasks
from proxy.tenants.record import TenantCredentials

log = logging.getLogger("proxy.tenants.oauth")

Clock = Callable[[], float]

# The contract: a token counts as expired min(30 s, 10 % of its lifetime) before `expires_in`.
EXPIRY_MARGIN_SECONDS = 30.0
EXPIRY_MARGIN_FRACTION = 0.1
# Revocation is best effort: a slow API must not keep a dropped token's task around for long.
REVOKE_TIMEOUT_SECONDS = 10.0

# OAuth error codes with which a token endpoint says the client itself is bad (RFC 6749 5.2).
_REJECTED_CLIENT_ERRORS = frozenset({"invalid_client", "unauthorized_client", "access_denied"})
# RFC 6749 sections 4.1.2.1 and 5.2: the only login error codes echoed into messages and logs.
OAUTH_ERROR_CODES = frozenset(
    {
        "invalid_request",
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
        "access_denied",
        "server_error",
        "temporarily_unavailable",
    }
)


@dataclass(frozen=True, slots=True)
class Token:
    """An access token for one tenant, bound to the region domain that issued it."""

    value: str = field(repr=False)
    tenant: str
    domain: str
    lifetime: float
    obtained_at: float
    obtained_wall: float
    # Precomputed: the hot path compares against it on every request.
    usable_until: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        margin = min(EXPIRY_MARGIN_SECONDS, EXPIRY_MARGIN_FRACTION * self.lifetime)
        object.__setattr__(self, "usable_until", self.expires_at - margin)

    @property
    def expires_at(self) -> float:
        """Monotonic time at which Genesys says the token expires."""
        return self.obtained_at + self.lifetime

    def refresh_due(self, refresh_at: float) -> float:
        """Monotonic time after which the token should be replaced in the background."""
        return self.obtained_at + refresh_at * self.lifetime

    def seconds_left(self, now: float) -> float:
        """Seconds the token may still be injected, never negative."""
        return max(0.0, self.usable_until - now)


class GenesysTokenFetcher:
    """Fetches client-credentials tokens from the login service of a tenant's Genesys region."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        login_url_template: str,
        *,
        api_url_template: str | None = None,
        timeout: float,
        connect_timeout: float,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
    ) -> None:
        self._session = session
        self._login_url_template = login_url_template
        self._api_url_template = api_url_template
        self._revocations = BackgroundTasks()
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=connect_timeout)
        self._clock = clock
        self._wall_clock = wall_clock

    async def fetch(self, credentials: TenantCredentials) -> Token:
        """POST the client-credentials grant and turn the answer into a `Token`."""
        tenant, region = credentials.tenant, credentials.region
        url = self._login_url_template.format(domain=region) + "/oauth/token"
        pair = f"{credentials.client_id}:{credentials.client_secret}".encode()
        headers = {
            "Authorization": "Basic " + base64.b64encode(pair).decode("ascii"),
            "Accept": "application/json",
            # Explicit: the proxy's session skips aiohttp's automatic Content-Type.
            "Content-Type": "application/x-www-form-urlencoded",
        }
        # Stamp before sending: the token's life cannot have started earlier than this.
        obtained_at, obtained_wall = self._clock(), self._wall_clock()
        where = f"for tenant {tenant!r} (region {region})"
        try:
            async with self._session.post(
                url,
                data={"grant_type": "client_credentials"},
                headers=headers,
                timeout=self._timeout,
                # A redirect would carry the client's Basic credentials to another URL.
                allow_redirects=False,
                # raise_for_status errors carry the request headers, Basic credentials included.
                raise_for_status=False,
            ) as response:
                status = response.status
                retry_after = _parse_retry_after(response.headers.get("Retry-After"), obtained_wall)
                body = await response.read()
        except TimeoutError as exc:
            raise TokenUnavailable(
                f"The Genesys token endpoint {where} did not answer in time ({url_host(url)}).",
                tenant=tenant,
            ) from exc
        except aiohttp.ClientError as exc:
            raise TokenUnavailable(
                f"The Genesys token endpoint {where} could not be reached "
                f"({describe_client_error(exc, url_host(url))}).",
                tenant=tenant,
            ) from exc

        if status == 200:
            value, lifetime = _parse_token_answer(body)
            if value is None or lifetime is None:
                raise TokenUnavailable(
                    f"The Genesys token endpoint {where} sent a malformed token answer.",
                    tenant=tenant,
                )
            return Token(
                value=value,
                tenant=tenant,
                domain=region,
                lifetime=lifetime,
                obtained_at=obtained_at,
                obtained_wall=obtained_wall,
            )
        error = _oauth_error(body)
        if status in (400, 401, 403) and error in _REJECTED_CLIENT_ERRORS:
            raise GenesysAuthFailed(
                f"The Genesys token endpoint {where} rejected the OAuth client ({error}).",
                tenant=tenant,
            )
        if status == 429:
            raise TokenUnavailable(
                f"The Genesys token endpoint {where} is rate-limiting the OAuth client.",
                tenant=tenant,
                retry_after=retry_after,
            )
        detail = f"HTTP {status}, {error}" if error else f"HTTP {status}"
        raise TokenUnavailable(
            f"The Genesys token endpoint {where} failed ({detail}).",
            tenant=tenant,
            retry_after=retry_after if status >= 500 else None,
        )

    def revoke(self, token: Token) -> None:
        """Revoke `token` at Genesys in the background, best effort (`close` ends it)."""
        if self._api_url_template is None:
            return
        self._revocations.start(self._revoke(token), f"token-revoke:{token.tenant}")

    async def settled(self) -> None:
        """Wait until the revocations started so far have ended (for tests)."""
        await self._revocations.settled()

    async def close(self) -> None:
        """Cancel revocations still under way and wait for them to end."""
        await self._revocations.close()

    async def _revoke(self, token: Token) -> None:
        assert self._api_url_template is not None
        url = self._api_url_template.format(domain=token.domain) + "/api/v2/tokens/me"
        tenant = token.tenant
        try:
            async with self._session.delete(
                url,
                headers={"Authorization": f"Bearer {token.value}"},
                timeout=aiohttp.ClientTimeout(total=REVOKE_TIMEOUT_SECONDS),
                allow_redirects=False,
                raise_for_status=False,
            ) as response:
                status = response.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            log.warning(
                "could not revoke a dropped token of tenant %s at %s (%s); it expires by itself",
                tenant,
                token.domain,
                "no answer in time" if isinstance(exc, TimeoutError) else "unreachable",
                extra={"tenant": tenant},
            )
            return
        # 401: the token was already dead, which is all revocation wants.
        if status in (200, 204, 401):
            log.info("revoked a dropped token of tenant %s", tenant, extra={"tenant": tenant})
        else:
            log.warning(
                "revoking a dropped token of tenant %s answered HTTP %d; it expires by itself",
                tenant,
                status,
                extra={"tenant": tenant},
            )


def _parse_token_answer(body: bytes) -> tuple[str | None, float | None]:
    """Return (access_token, expires_in) from a 200 answer, None for whichever is unusable."""
    data = _json_object(body)
    if data is None:
        return None, None
    value = data.get("access_token")
    lifetime = data.get("expires_in")
    if not isinstance(value, str) or not value:
        value = None
    if (
        isinstance(lifetime, bool)
        or not isinstance(lifetime, int | float)
        or not math.isfinite(lifetime)
        or lifetime <= 0
    ):
        lifetime = None
    return value, None if lifetime is None else float(lifetime)


def _oauth_error(body: bytes) -> str | None:
    """The OAuth `error` code of an error answer, if it is one RFC 6749 defines."""
    data = _json_object(body)
    error = data.get("error") if data is not None else None
    # Echoed into messages and logs: anything else may be whatever a broken login service
    # put there (it once answered {"error": "<the client secret>"}), so it is never shown.
    return error if isinstance(error, str) and error in OAUTH_ERROR_CODES else None


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _parse_retry_after(value: str | None, now_wall: float) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or HTTP-date), None when absent or bad."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, binascii.Error):
            return None
        seconds = when.timestamp() - now_wall
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)
