"""Byte for byte: the request target and header values reach the other side as they came.

aiohttp's parsers decode the request line and header values as UTF-8 with `surrogateescape`,
so a byte that is not UTF-8 (`X-Foo: caf\\xe9`, latin-1 from an old client) survives as a lone
surrogate. Its writer then encodes as strict UTF-8 and silently drops those surrogates (the C
writer) or fails (the Python one): a header value would lose bytes on the way through. The
proxy installs one serializer for the whole process, server and client side alike, that writes
such values back as the bytes they came from.

`upstream_url()` is the other half: the app's request target, unparsed, on the region's URL.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from aiohttp import http_writer
from multidict import CIMultiDict
from yarl import URL

Serializer = Callable[[str, "CIMultiDict[str]"], bytes]

# As aiohttp's own check (RFC 9110 section 5.5): no header injection, whatever the bytes.
_FORBIDDEN_CHARS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _keeping_bytes(fast: Serializer) -> Serializer:
    def serialize_headers(status_line: str, headers: CIMultiDict[str]) -> bytes:
        # Nearly every message is pure ASCII: those take aiohttp's C writer unchanged. (One
        # join and one check: a third of the cost of checking value by value.)
        if status_line.isascii() and "".join(headers.values()).isascii():
            return fast(status_line, headers)
        lines = [status_line, *(f"{name}: {value}" for name, value in headers.items())]
        for line in lines:
            if _FORBIDDEN_CHARS.search(line):
                raise ValueError("a control character in a header: refusing to send it")
        text = "\r\n".join(lines) + "\r\n\r\n"
        try:
            return text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            # A surrogate no parser made (only U+DC80-U+DCFF stand for bytes): aiohttp's way.
            return fast(status_line, headers)

    serialize_headers.keeps_bytes = True  # type: ignore[attr-defined]
    return serialize_headers


def install() -> None:
    """Make aiohttp write undecodable header bytes back unchanged (idempotent)."""
    current = http_writer._serialize_headers
    if not getattr(current, "keeps_bytes", False):
        http_writer._serialize_headers = _keeping_bytes(current)  # type: ignore[assignment]


def upstream_url(base: URL, target: str) -> URL:
    """`base` (the region's API URL) with the app's request target appended, unparsed.

    `target` is the request target exactly as received (`request.raw_path`: path, `?` and
    query). It goes into the URL's path as one encoded string, so yarl neither removes
    dot-segments nor decodes or re-encodes anything, and aiohttp's client puts it on the
    request line as it is; scheme, host and port come from `base` alone.
    """
    return base.with_path(base.raw_path.rstrip("/") + target, encoded=True)
