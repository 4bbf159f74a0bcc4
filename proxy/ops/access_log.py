"""One access-log line and one set of metrics per request on the proxy listener.

`AccessLog.middleware` wraps everything else (the error middleware included), so it sees the
final status of every request, the proxy's own errors too. The forwarder and the tenant resolver
fill in what only they know (the tenant, the upstream status) through `RequestObserver`.

The line is written off the request path: the middleware appends a tuple of raw fields to a
bounded queue, and a writer thread formats what has gathered and writes it in one `write` per
batch (every BATCH_SECONDS). Logging's machinery (a LogRecord, handler locks, a formatter and a
flush per line) cost about a fifth of a proxied request's CPU; a tuple costs almost nothing.
`flush()` writes whatever is queued at once; shutdown calls it after the last request ended,
so SIGTERM loses no line. A full queue (QUEUE_LIMIT lines: the output blocked for seconds, say
a stalled log collector on the other end of stderr) drops new lines, counted and warned about,
rather than holding requests: a stuck log must not stop the traffic it describes.

A line, in `log.format: json` (text: the same fields as `key=value`, as `proxy.ops.logs`)::

    {"time": "...", "level": "info", "logger": "proxy.access", "message": "request",
     "tenant": "acme", "method": "GET", "path": "/api/v2/users?pageSize=25", "status": 200,
     "upstream_status": 200, "duration_ms": 41.2, "correlation_id": "5f0c...", "error": null}

Query values that look like secrets are replaced by `REDACTED`; the tenant is logged only once
it passed the tenant pattern.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import re
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import IO
from urllib.parse import unquote_plus

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Middleware

from proxy.config import Config, LogConfig
from proxy.ops.logs import utc_second
from proxy.ops.metrics import Metrics

ACCESS_LOGGER = "proxy.access"
log = logging.getLogger("proxy.ops.access_log")

CORRELATION_HEADER = "ININ-Correlation-Id"
REDACTED = "REDACTED"
MAX_LOGGED_PATH = 2048
# Lines gather this long before one write: short enough that `kubectl logs -f` feels live.
BATCH_SECONDS = 0.1
# About 10 MB of queued lines at worst; at 5,000 requests a second, 2 s of output.
QUEUE_LIMIT = 10_000
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

# What the request path hands the writer: wall time, tenant, method, raw target, status,
# upstream status, seconds, correlation id (unchecked), error code.
Entry = tuple[float, str | None, str, str, int, int | None, float, str | None, str | None]


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


class AccessLog:
    """The access log: the proxy app's outermost middleware and the writer of its lines."""

    def __init__(
        self,
        metrics: Metrics,
        config: LogConfig,
        *,
        stream: IO[str] | None = None,
        queue_limit: int = QUEUE_LIMIT,
    ) -> None:
        self._metrics = metrics
        self._stream = stream  # None: sys.stderr as it is at each write
        self._queue: collections.deque[Entry] = collections.deque()
        self._queue_limit = queue_limit
        self._lock = threading.Lock()  # one writer at a time: the thread or flush()
        self._wake = threading.Event()
        self._idle = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self.dropped = 0
        self._dropped_reported = 0
        self.enabled = False
        self._json = False
        self.reconfigure_log(config)

    # -- settings ---------------------------------------------------------------------------------

    def reconfigure(self, config: Config) -> None:
        """Take `log.access`, `log.format` and `log.level` from a reloaded config."""
        self.reconfigure_log(config.log)

    def reconfigure_log(self, config: LogConfig) -> None:
        # Access lines are info lines: `log.level: warning` turns them off, as before.
        self.enabled = config.access and config.level in ("debug", "info")
        self._json = config.format == "json"

    # -- the request path -----------------------------------------------------------------------

    @property
    def middleware(self) -> Middleware:
        metrics, queue = self._metrics, self._queue

        @web.middleware
        async def access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
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
                status = 499  # the client went away first, or shutdown cut it (nginx's code)
                raise
            finally:
                seconds = time.perf_counter() - started
                error = response.headers.get("X-Proxy-Error") if response is not None else None
                failed = error is not None or status >= 500
                metrics.request_finished(
                    record.tenant, request.method, status, seconds, failed=failed
                )
                if self.enabled:
                    correlation = None
                    if response is not None:
                        correlation = response.headers.get(CORRELATION_HEADER)
                    if not correlation:
                        correlation = request.headers.get(CORRELATION_HEADER)
                    if len(queue) >= self._queue_limit:
                        self.dropped += 1
                    else:
                        queue.append(
                            (
                                time.time(),
                                record.tenant,
                                request.method,
                                request.raw_path,
                                status,
                                record.upstream_status,
                                seconds,
                                correlation,
                                error,
                            )
                        )
                        if self._idle:
                            self._idle = False
                            self._wake.set()

        return access_middleware

    # -- the writer -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer thread (idempotent)."""
        if self._thread is None:
            self._closed = False
            self._thread = threading.Thread(target=self._run, name="access-log-writer", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 1.0) -> None:
        """Write every queued line and stop the writer thread, waiting at most `timeout`."""
        self._closed = True
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)  # it writes what is queued, then ends
            if thread.is_alive():
                # Its write is stuck (a full pipe nobody reads): waiting longer would hang exit.
                log.warning(
                    "the access log's output is blocked: %d lines not written", len(self._queue)
                )
                return
        self.flush(timeout)

    def flush(self, timeout: float = -1) -> bool:
        """Write every line queued so far, now, on the caller's thread; False if it could not."""
        if not self._lock.acquire(timeout=timeout):
            return False  # the writer thread is stuck in a write
        try:
            self._write_queued()
        finally:
            self._lock.release()
        return True

    def _run(self) -> None:
        while not self._closed:
            self._idle = True
            # Appended after the flag was read, or before it was set: seen here either way.
            if not self._queue:
                self._wake.wait()
            self._idle = False
            self._wake.clear()
            if not self._closed:
                time.sleep(BATCH_SECONDS)  # let a batch gather
            self.flush()

    def _write_queued(self) -> None:
        queue, lines = self._queue, []
        format_line = json_line if self._json else text_line
        while queue:
            lines.append(format_line(queue.popleft()))
        if self.dropped != self._dropped_reported:
            lost, self._dropped_reported = self.dropped - self._dropped_reported, self.dropped
            log.warning("the access log fell behind its output: %d lines dropped", lost)
        if not lines:
            return
        stream = self._stream if self._stream is not None else sys.stderr
        try:
            stream.write("".join(lines))
            stream.flush()
        except (OSError, ValueError):
            pass  # stderr closed or gone: there is nowhere left to say so


def access_log_ctx(
    access: AccessLog,
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A `cleanup_ctx` entry: the writer runs while the app does, and flushes at the end."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        access.start()
        try:
            yield
        finally:
            access.close(timeout=0.2)  # the server closed it already, with its budget

    return ctx


def _fields(entry: Entry) -> tuple[str, dict[str, object]]:
    when, tenant, method, target, status, upstream, seconds, correlation, error = entry
    return utc_second(int(when)), {
        "tenant": tenant,
        "method": method if method.isalpha() else "other",
        "path": redact_target(target),
        "status": status,
        "upstream_status": upstream,
        "duration_ms": round(seconds * 1000, 1),
        "correlation_id": _clean_correlation_id(correlation),
        "error": error,
    }


def text_line(entry: Entry) -> str:
    """The line in `log.format: text`, newline included."""
    when, fields = _fields(entry)
    extra = " ".join(f"{k}={v}" for k, v in fields.items())
    return f"{when} INFO {ACCESS_LOGGER} request {extra}\n"


def json_line(entry: Entry) -> str:
    """The line in `log.format: json`, newline included."""
    when, fields = _fields(entry)
    line: dict[str, object] = {
        "time": when,
        "level": "info",
        "logger": ACCESS_LOGGER,
        "message": "request",
    }
    line.update(fields)
    return json.dumps(line, default=str) + "\n"


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
