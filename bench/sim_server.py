"""`python -m bench.sim_server`: the Genesys simulator in its own process, counters exposed.

The benchmarks run the simulator as a separate process (so its CPU is not the proxy's) and
still need to count the token fetches it served: this adds `GET /bench/counters` to the
project's `GenesysSimulator` and reads its OAuth clients from a JSON file, since thousands of
`--client` arguments would not fit on a command line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from proxy.simulator import GenesysSimulator

# High enough that no benchmark burst is ever rate-limited by the simulated login service.
TOKEN_REQUESTS_PER_MINUTE = 1_000_000


def build_simulator(
    clients: Sequence[dict[str, str]],
    token_lifetime: float,
    *,
    api_limit: int | None = None,
    api_window: float = 60.0,
) -> GenesysSimulator:
    """A simulator that knows `clients` ({client_id, client_secret, domain}); by default without
    API rate limits, else `api_limit` requests per token per `api_window` seconds."""
    sim = GenesysSimulator(
        api_requests_per_minute=api_limit,
        token_requests_per_minute=TOKEN_REQUESTS_PER_MINUTE,
        rate_window_seconds=api_window,
    )
    for client in clients:
        sim.add_client(
            client["client_id"],
            client["client_secret"],
            domain=client["domain"],
            token_lifetime=token_lifetime,
        )

    async def counters(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "token_requests": sim.token_requests(),
                "tokens_issued": sim.tokens_issued(),
                "api_requests": sim.api_requests(),
                "api_401s": sim.api_401s(),
                "rate_limited": sim.rate_limited(),
            }
        )

    sim.app.router.add_get("/bench/counters", counters)
    return sim


async def _serve(sim: GenesysSimulator, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with sim.running("127.0.0.1", port):
        print(f"simulator listening on {sim.base_url}", flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sim_server")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--clients", type=Path, required=True, help="JSON list of clients")
    parser.add_argument("--token-lifetime", type=float, default=86400)
    parser.add_argument("--api-limit", type=int, help="API requests per token per window")
    parser.add_argument("--api-window", type=float, default=60.0, help="seconds of a window")
    args = parser.parse_args(argv)
    clients = json.loads(args.clients.read_text(encoding="utf-8"))
    sim = build_simulator(
        clients, args.token_lifetime, api_limit=args.api_limit, api_window=args.api_window
    )
    asyncio.run(_serve(sim, args.port))


if __name__ == "__main__":
    main()
