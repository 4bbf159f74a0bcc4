"""One access-log line and one set of metrics per request on the proxy listener.

`access_middleware` wraps everything else (the error middleware included), so it sees the final
status of every request, the proxy's own errors too. The forwarder and the tenant resolver fill
in what only they know (the tenant, the upstream status) through `RequestObserver`.

A line, in `log.format: json`::

    {"time": "...", "level": "info", "logger": "proxy.access", "message": "request",
     "tenant": "acme", "method": "GET", "path": "/api/v2/users?pageSize=25", "status": 200,
     "upstream_status": 200, "duration_ms": 41.2, "correlation_id": "5f0c...", "error": null}

Query values that look like secrets are replaced by `REDACTED`; the tenant is logged only once
it passed the tenant pattern.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import unquote_plus

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Middleware

from proxy.ops.metrics import Metrics

access_log = logging.getLogger("proxy.access")

CORRELATION_HEADER = "ININ-Correlation-Id"
REDACTED = "REDACTED"
MAX_LOGGED_PATH = 2048
# Query parameter names whose values are credentials, whatever they look like.
_SECRET_NAME = re.compile(
    r"token|secret|passw|pwd|key|auth|code|sig|credential|session|cookie|jwt|assertion",
    re.IGNORECASE,
)
# Values shaped like a token or key: long, from a token alphabet, mixing letters and digits.
_TOKEN_LIKE = re.compile(r"(?=.*[A-Za-z])(?=.*[0-9])[A-Za-z0-9._~+/=-]{24,}")
# Genesys ids are UUIDs: long and mixed, but not secrets, and queries are full of them.
_UUID = re.compile(r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")
_CORRELATION_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(slots=True)
class RequestRecord:
    """What the handlers learned about a request, for its log line."""

    tenant: str | None = None
    upstream_status: int | None = None


RECORD = web.RequestKey("access_record", RequestRecord)


class RequestObserver:
    """The forwarder's `ForwardObserver`: fills in the request's record, feeds the metrics."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def tenant_resolved(self, request: web.Request, tenant: str) -> None:
        record = request.get(RECORD)
        if record is not None:
            record.tenant = tenant

    def upstream_answered(
        self,
        request: web.Request,
        tenant: str,
        upstream: aiohttp.ClientResponse,
        seconds: float,
    ) -> None:
        record = request.get(RECORD)
        if record is not None:
            record.upstream_status = upstream.status
        self._metrics.upstream_answered(tenant, upstream.headers, seconds)

    def upstream_retried(self, request: web.Request, tenant: str, reason: str) -> None:
        self._metrics.upstream_retry(tenant, reason)


def access_middleware(metrics: Metrics, *, log_requests: bool = True) -> Middleware:
    """The outermost middleware of the proxy app: metrics and the access log for each request."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        record = request[RECORD] = RequestRecord()
        started = time.perf_counter()
        metrics.request_started()
        response: web.StreamResponse | None = None
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = 499  # the client went away first (nginx's code for it)
            raise
        finally:
            seconds = time.perf_counter() - started
            error = response.headers.get("X-Proxy-Error") if response is not None else None
            failed = error is not None or status >= 500
            metrics.request_finished(record.tenant, request.method, status, seconds, failed=failed)
            if log_requests and access_log.isEnabledFor(logging.INFO):
                _log_line(
                    request,
                    record=record,
                    status=status,
                    seconds=seconds,
                    response=response,
                    error=error,
                )

    return middleware


def _log_line(
    request: web.Request,
    *,
    record: RequestRecord,
    status: int,
    seconds: float,
    response: web.StreamResponse | None,
    error: str | None,
) -> None:
    correlation = None
    if response is not None:
        correlation = response.headers.get(CORRELATION_HEADER)
    correlation = _clean_correlation_id(correlation or request.headers.get(CORRELATION_HEADER))
    # makeRecord + handle is what `access_log.info` does once the caller's level check passed,
    # minus the stack walk for the caller's file and line, which no formatter here shows:
    # the same record reaches the same handlers (and pytest's caplog) for a fifth less CPU.
    line = access_log.makeRecord(
        access_log.name,
        logging.INFO,
        __file__,
        0,
        "request",
        (),
        None,
        extra={
            "tenant": record.tenant,
            "method": request.method if request.method.isalpha() else "other",
            "path": redact_target(request.raw_path),
            "status": status,
            "upstream_status": record.upstream_status,
            "duration_ms": round(seconds * 1000, 1),
            "correlation_id": correlation,
            "error": error,
        },
    )
    access_log.handle(line)


def redact_target(target: str) -> str:
    """The request target with secret-looking query values replaced by `REDACTED`."""
    if len(target) > MAX_LOGGED_PATH:
        target = target[:MAX_LOGGED_PATH] + "..."
    path, question, query = target.partition("?")
    if not question:
        return path
    return f"{path}?{'&'.join(_redact_pair(pair) for pair in query.split('&'))}"


def _redact_pair(pair: str) -> str:
    name, equals, value = pair.partition("=")
    if not equals or not value:
        return pair
    if _SECRET_NAME.search(_unquote(name)) or looks_like_secret(_unquote(value)):
        return f"{name}={REDACTED}"
    return pair


def _unquote(text: str) -> str:
    # Most query text has nothing to decode; unquote_plus costs a microsecond even then.
    return unquote_plus(text) if "%" in text or "+" in text else text


def looks_like_secret(value: str) -> bool:
    """A long token-alphabet string mixing letters and digits, and not a UUID."""
    return _TOKEN_LIKE.fullmatch(value) is not None and _UUID.fullmatch(value) is None


def _clean_correlation_id(value: str | None) -> str | None:
    # It may come from the app: a log line must not carry arbitrary bytes from a header.
    if value is None or _CORRELATION_ID.fullmatch(value) is None:
        return None
    return value
