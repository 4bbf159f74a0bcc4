"""Cost of proxy.http.wire's header writer against aiohttp's C writer, per message.

    .venv/bin/python -m bench.wire_headers

A proxied request writes two messages (the request to Genesys, the answer to the app). Figures
are per message, best of five runs; on a shared machine compare the lines of one run only.
"""

from __future__ import annotations

import timeit

from aiohttp import http_writer
from multidict import CIMultiDict

from proxy.http import wire

RUNS = 5
NUMBER = 200_000
STATUS_LINE = "GET /api/v2/users?pageSize=25 HTTP/1.1"
HEADERS = CIMultiDict(
    [
        ("Host", "api.aps1.pure.cloud"),
        ("Authorization", "Bearer " + "x" * 86),
        ("Content-Type", "application/json"),
        ("Accept", "*/*"),
        ("ININ-Correlation-Id", "0f8fad5b-d9cb-469f-a165-70867728950e"),
        ("Content-Length", "123"),
        ("User-Agent", "purecloud-sdk/200"),
        ("Accept-Encoding", "gzip"),
        *((f"X-Header-{n}", f"value {n}") for n in range(4)),
    ]
)


def per_message(serialize: wire.Serializer, headers: CIMultiDict[str], number: int) -> float:
    best = min(timeit.repeat(lambda: serialize(STATUS_LINE, headers), number=number, repeat=RUNS))
    return best / number * 1e6


def main() -> None:
    original = http_writer._serialize_headers
    wire.install()
    keeping = http_writer._serialize_headers
    print(f"aiohttp C writer:               {per_message(original, HEADERS, NUMBER):6.2f} us")
    print(f"wire writer, ASCII message:     {per_message(keeping, HEADERS, NUMBER):6.2f} us")
    latin1 = CIMultiDict(HEADERS)
    latin1["X-Foo"] = b"caf\xe9".decode("utf-8", "surrogateescape")
    print(f"wire writer, a non-UTF-8 value: {per_message(keeping, latin1, NUMBER // 10):6.2f} us")


if __name__ == "__main__":
    main()
