"""What bounding each wait for request-body bytes costs a small-body POST.

    python bench/body_timeout.py [--iterations N] [--runs N]

CPU time of this process, best of `runs`, microseconds per request body read. Each read is of a
fresh aiohttp StreamReader holding a whole 512-byte body, as the proxy's handler finds a small
POST (head and body in one packet), read the three ways the buffered path could read it:

- `bare`: `readexactly` alone (the proxy before request bodies were timed);
- `is_eof fast path`: what the proxy does now: the body is all there, so no timeout is armed;
- `asyncio.timeout`: the wrapper every read would pay without the fast path (and what a body
  still arriving pays).

The setup (a new reader fed its body) is in every variant; the differences are the cost.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable

from aiohttp.base_protocol import BaseProtocol
from aiohttp.streams import StreamReader

BODY = b"x" * 512
LIMIT = 2**16  # aiohttp's read_bufsize default


async def best_of(
    runs: int, iterations: int, read: Callable[[StreamReader], Awaitable[bytes]]
) -> float:
    """Microseconds per body read, best of `runs`."""
    loop = asyncio.get_running_loop()
    protocol = BaseProtocol(loop)
    best = float("inf")
    for _ in range(runs):
        started = time.process_time_ns()
        for _ in range(iterations):
            content = StreamReader(protocol, LIMIT, loop=loop)
            content.feed_data(BODY)
            content.feed_eof()
            assert await read(content) == BODY
        best = min(best, (time.process_time_ns() - started) / iterations / 1000)
    return best


async def bare(content: StreamReader) -> bytes:
    return await content.readexactly(len(BODY))


async def fast_path(content: StreamReader) -> bytes:
    if content.is_eof():
        return await content.readexactly(len(BODY))
    async with asyncio.timeout(60.0):
        return await content.readexactly(len(BODY))


async def always_timed(content: StreamReader) -> bytes:
    async with asyncio.timeout(60.0):
        return await content.readexactly(len(BODY))


async def main(iterations: int, runs: int) -> None:
    variants = [("bare", bare), ("is_eof fast path", fast_path), ("asyncio.timeout", always_timed)]
    results = [(name, await best_of(runs, iterations, read)) for name, read in variants]
    base = results[0][1]
    print(f"{'variant':<18} {'us/read':>8} {'vs bare':>8}")
    for name, micros in results:
        print(f"{name:<18} {micros:8.2f} {micros - base:+8.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.iterations, args.runs))
