"""Log setup: text or JSON lines on stderr, with the structured fields handlers attach."""

from __future__ import annotations

import functools
import itertools
import json
import logging
import sys
import time

from proxy.config import Config, LogConfig

_BARE = vars(logging.LogRecord("", 0, "", 0, "", None, None))
# Attributes every LogRecord has; anything else was passed in `extra` and is a structured field.
_STANDARD = frozenset(_BARE) | {"message", "asctime", "taskName"}
# LogRecord.__init__ sets these first, so `extra` fields come after them in the record's dict:
# skipping them halves the cost of finding the fields, once per access-log line.
_SET_BY_INIT = len(_BARE)


def _fields(record: logging.LogRecord) -> dict[str, object]:
    tail = itertools.islice(vars(record).items(), _SET_BY_INIT, None)
    return {k: v for k, v in tail if k not in _STANDARD and not k.startswith("_")}


def _utc(record: logging.LogRecord) -> str:
    return utc_second(int(record.created))


@functools.lru_cache(maxsize=4)
def utc_second(second: int) -> str:
    # Lines come many per second: format each second once.
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))


class TextFormatter(logging.Formatter):
    """`2026-11-26T14:55:11Z INFO proxy.tenants.tokens message key=value ...`."""

    def format(self, record: logging.LogRecord) -> str:
        when = _utc(record)
        line = f"{when} {record.levelname} {record.name} {record.getMessage()}"
        extra = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        if extra:
            line = f"{line} {extra}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": _utc(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_fields(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(config: LogConfig) -> None:
    """Send every log line to stderr in the configured format and level."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if config.format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.level.upper())
    # aiohttp's access log is replaced by the proxy's own; its other loggers stay at WARNING.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    if config.level != "debug":
        logging.getLogger("aiohttp").setLevel(logging.WARNING)


class LoggingSettings:
    """`log.level` and `log.format` as a reloadable component (proxy.reload.Reconfigurable)."""

    def reconfigure(self, config: Config) -> None:
        configure_logging(config.log)
