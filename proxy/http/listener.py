"""How the app-facing listener treats hostile or broken clients: limits, timeouts, quiet logs.

aiohttp parses requests before the proxy sees them. These are its settings for the proxy:

- a request line, header line or header count over the limits below gets aiohttp's own 400
  and a closed connection, before any handler runs;
- `listen.idle_timeout` closes a connection that has not sent a complete request head within
  that many seconds of connecting or of its previous answer: idle keep-alive connections, and
  slowloris-style clients that trickle their headers, byte by byte, to hold connections open
  (the same timeout bounds each wait for request-body bytes: that is the forwarder's, as aiohttp
  has no body timeout);
- those 400s are logged as one line, not as aiohttp's "Error handling request" traceback: a
  client's garbage is not the proxy's error, and must not be able to flood the log with stacks.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError

from proxy.config import ListenConfig

# aiohttp's defaults, stated here so they are the proxy's documented limits, not an accident.
MAX_LINE_BYTES = 8190
MAX_FIELD_BYTES = 8190
MAX_HEADERS = 128
# Client data quoted in a log line is cut to this many characters.
QUOTED_CHARS = 120

http_log = logging.getLogger("proxy.http")


class ClientErrorFilter(logging.Filter):
    """Rewrites aiohttp's log of a malformed request into one line without a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and 400 <= exc.code < 500:
            # The message may quote what the client sent: cut it, and show it as a repr.
            quoted = repr(exc.message[:QUOTED_CHARS])
            record.msg = "refused a malformed request (%d): %s"
            record.args = (exc.code, quoted)
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info, record.exc_text = None, None
            # Level checks ran before filters: honour the logger's level for the new one.
            return http_log.isEnabledFor(logging.INFO)
        return True


http_log.addFilter(ClientErrorFilter())


def listener_options(listen: ListenConfig) -> dict[str, Any]:
    """Keyword arguments for the proxy listener's `web.AppRunner` (and test servers)."""
    return {
        "keepalive_timeout": listen.idle_timeout,
        "max_line_size": MAX_LINE_BYTES,
        "max_field_size": MAX_FIELD_BYTES,
        "max_headers": MAX_HEADERS,
        "logger": http_log,
    }
