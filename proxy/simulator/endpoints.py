"""The simulated API endpoints, reached once a request is authenticated and within its limits.

Everything under `/api/v2/sim/` exists only in the simulator, so tests can see what arrived:

- `<any method> /api/v2/sim/echo[/...]`: JSON of the request (method, path, query string,
  headers, body length and SHA-256, client and org of the token).
- `GET /api/v2/sim/blob?bytes=N[&gzip=1]`: N deterministic bytes (`blob_content(N)`), streamed in
  64 KiB chunks with a Content-Length; with `gzip=1` precompressed, with `Content-Encoding: gzip`.
- `<any method> /api/v2/sim/slow?seconds=S`: answers after S seconds.
- `<any method> /api/v2/sim/status/{code}`: answers that status with an error body
  (`status/401` is an endpoint that refuses every token, for the proxy's 401-storm rule).

Genesys' own endpoints beyond the directory: `DELETE /api/v2/tokens/me` revokes the token that
calls it (204); any later request with it gets 401 `bad.credentials`.
"""

import asyncio
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import hdrs, web

from proxy.simulator import directory
from proxy.simulator.model import IssuedToken, SimClient

MAX_BLOB_BYTES = 1024 * 1024 * 1024
MAX_GZIP_BLOB_BYTES = 64 * 1024 * 1024
MAX_SLOW_SECONDS = 300.0
EMPTY_SHA256 = hashlib.sha256().hexdigest()

_ERROR_CODES = {
    400: "bad.request",
    401: "bad.credentials",
    403: "missing.permissions",
    404: "not.found",
    408: "request.timeout",
    409: "conflict",
    413: "request.entity.too.large",
    429: "too.many.requests",
    500: "internal.server.error",
    502: "bad.gateway",
    503: "service.unavailable",
    504: "gateway.timeout",
}


class BadRequest(Exception):
    """A malformed query parameter of a simulated endpoint."""


@dataclass
class ApiCall:
    """One API request on its way through the simulator."""

    request: web.Request
    domain: str
    path: str
    correlation_id: str
    response_headers: dict[str, str]
    token: IssuedToken | None = None
    body_length: int = 0
    body_sha256: str = EMPTY_SHA256

    def json(self, body: dict[str, Any]) -> web.Response:
        return web.json_response(body, headers=self.response_headers)

    def error(self, status: int, code: str | None, message: str) -> web.Response:
        """A Genesys-style API error answer; `code` None picks the usual one for `status`."""
        body = error_body(status, message, self.correlation_id, code=code)
        return web.json_response(body, status=status, headers=self.response_headers)


def error_body(
    status: int, message: str, correlation_id: str, *, code: str | None = None
) -> dict[str, Any]:
    """The body of a Genesys API error; `contextId` is the correlation id, as in Genesys."""
    return {
        "message": message,
        "code": code or _ERROR_CODES.get(status, f"http.{status}"),
        "status": status,
        "contextId": correlation_id,
        "details": [],
        "errors": [],
    }


async def route(call: ApiCall, client: SimClient) -> web.StreamResponse:
    """Answer an authenticated request of `client`."""
    try:
        return await _route(call, client)
    except BadRequest as exc:
        return call.error(400, "bad.request", str(exc))


async def _route(call: ApiCall, client: SimClient) -> web.StreamResponse:
    if not call.path.startswith("/api/v2/"):
        return _not_found(call)
    query = call.request.query
    match (call.request.method, *call.path.removeprefix("/api/v2/").split("/")):
        case ("DELETE", "tokens", "me"):
            assert call.token is not None  # authenticated before routing
            call.token.revoked = True
            return web.Response(status=204, headers=call.response_headers)
        case ("GET", "organizations", "me"):
            return call.json(directory.organization(client))
        case ("GET", "users"):
            page_size = _int_param(query, "pageSize", default=25, low=1, high=500)
            page_number = _int_param(query, "pageNumber", default=1, low=1)
            return call.json(directory.user_page(client, page_size, page_number))
        case ("GET", "users", user_id):
            user = next((u for u in directory.users(client) if u["id"] == user_id), None)
            return call.json(user) if user else _not_found(call)
        case (_, "sim", "echo", *_):
            return call.json(_echo(call, client))
        case ("GET", "sim", "blob"):
            return await _blob(call)
        case (_, "sim", "slow"):
            seconds = _float_param(query, "seconds", high=MAX_SLOW_SECONDS)
            await asyncio.sleep(seconds)
            return call.json({"slept": seconds})
        case (_, "sim", "status", code):
            return _simulated_status(call, code)
        case _:
            return _not_found(call)


def _echo(call: ApiCall, client: SimClient) -> dict[str, Any]:
    return {
        "method": call.request.method,
        "path": call.path,
        "query_string": call.request.rel_url.raw_query_string,
        "headers": [[name, value] for name, value in call.request.headers.items()],
        "body_length": call.body_length,
        "body_sha256": call.body_sha256,
        "client_id": client.client_id,
        "org_id": client.org_id,
    }


async def _blob(call: ApiCall) -> web.StreamResponse:
    query = call.request.query
    compressed = query.get("gzip", "0") in {"1", "true"}
    high = MAX_GZIP_BLOB_BYTES if compressed else MAX_BLOB_BYTES
    size = _int_param(query, "bytes", low=0, high=high)
    response = web.StreamResponse(headers=call.response_headers)
    response.content_type = "application/octet-stream"
    if compressed:
        payload = directory.gzipped_blob(size)
        response.headers[hdrs.CONTENT_ENCODING] = "gzip"
        response.content_length = len(payload)
        await response.prepare(call.request)
        step = directory.BLOB_CHUNK_BYTES
        for start in range(0, len(payload), step):
            await response.write(payload[start : start + step])
    else:
        response.content_length = size
        await response.prepare(call.request)
        full, rest = divmod(size, directory.BLOB_CHUNK_BYTES)
        for index in range(full):
            await response.write(directory.blob_chunk(index))
        if rest:
            await response.write(directory.blob_chunk(full, rest))
    await response.write_eof()
    return response


def _simulated_status(call: ApiCall, code: str) -> web.Response:
    if not code.isdigit() or not 200 <= int(code) <= 599:
        raise BadRequest(f"status must be a number from 200 to 599, got {code!r}")
    status = int(code)
    if status in {204, 304}:
        return web.Response(status=status, headers=call.response_headers)
    if status == 429:
        call.response_headers[hdrs.RETRY_AFTER] = "1"
    return call.error(status, None, f"Simulated status {status}")


def _not_found(call: ApiCall) -> web.Response:
    return call.error(404, "not.found", f"Resource not found: {call.request.method} {call.path}")


def _int_param(
    query: Mapping[str, str],
    name: str,
    *,
    default: int | None = None,
    low: int = 0,
    high: int | None = None,
) -> int:
    raw = query.get(name)
    if raw is None:
        if default is None:
            raise BadRequest(f"query parameter {name} is required")
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"query parameter {name} must be an integer, got {raw!r}") from None
    if value < low or (high is not None and value > high):
        raise BadRequest(f"query parameter {name} must be from {low} to {high}, got {value}")
    return value


def _float_param(query: Mapping[str, str], name: str, *, high: float) -> float:
    raw = query.get(name, "0")
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"query parameter {name} must be a number, got {raw!r}") from None
    if not 0 <= value <= high:
        raise BadRequest(f"query parameter {name} must be from 0 to {high}, got {value}")
    return value
