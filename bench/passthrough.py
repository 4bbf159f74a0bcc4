"""`python -m bench.passthrough`: the framework's own cost, the reference the proxy is held to.

A plain aiohttp pass-through on uvloop, what a 30-line sidecar with one static token would be:
no tenants, tokens, metrics or access log. It forwards every request to `--upstream` + path with
aiohttp's client (one session, default settings but no decompression) and a static
Authorization header (from $BENCH_PASSTHROUGH_TOKEN), minus the hop-by-hop headers, and answers
with the upstream's status, headers and body. The benchmark measures it in the same run as the
proxy, so their ratio is what the proxy's features cost over aiohttp itself, whatever else the
machine is doing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from collections.abc import AsyncIterator, Sequence

import aiohttp
import uvloop
from aiohttp import web

HOP_BY_HOP = {"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade"}
DROPPED = HOP_BY_HOP | {"host", "authorization", "x-tenant-id", "content-length"}
TOKEN_ENV = "BENCH_PASSTHROUGH_TOKEN"
SESSION = web.AppKey("session", aiohttp.ClientSession)


def create_app(upstream: str, token: str) -> web.Application:
    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            app[SESSION] = session
            yield

    async def forward(request: web.Request) -> web.Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in DROPPED}
        headers["Authorization"] = f"Bearer {token}"
        body = await request.read() if request.body_exists else None
        async with request.app[SESSION].request(
            request.method, upstream + request.raw_path, headers=headers, data=body
        ) as answer:
            content = await answer.read()
            kept = {k: v for k, v in answer.headers.items() if k.lower() not in DROPPED}
            return web.Response(status=answer.status, headers=kept, body=content)

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{path:.*}", forward)
    return app


async def serve(port: int, upstream: str, token: str) -> None:
    runner = web.AppRunner(create_app(upstream, token), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.passthrough", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="base URL the request path is added to")
    args = parser.parse_args(argv)
    # From the environment, not argv, where `ps` would show it (it is made up per run anyway).
    token = os.environ[TOKEN_ENV]
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(args.port, args.upstream, token))


if __name__ == "__main__":
    main()
