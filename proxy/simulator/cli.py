"""`python -m proxy.simulator`: run the simulator standalone, for demos and manual testing."""

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from proxy.simulator.model import ResourceLimit
from proxy.simulator.server import GenesysSimulator


@dataclass(frozen=True)
class _ClientSpec:
    client_id: str
    client_secret: str
    domain: str


def _client_spec(text: str) -> _ClientSpec:
    """Parse `ID:SECRET:DOMAIN`; the secret may itself contain colons."""
    client_id, _, rest = text.partition(":")
    client_secret, _, domain = rest.rpartition(":")
    if not client_id or not client_secret or not domain:
        raise argparse.ArgumentTypeError("expected ID:SECRET:DOMAIN")
    return _ClientSpec(client_id, client_secret, domain)


def _resource_limit(text: str) -> ResourceLimit:
    """Parse `PATH:N[:SECONDS]`: N requests per client per window to paths under PATH."""
    path, _, rest = text.partition(":")
    allowed, _, seconds = rest.partition(":")
    try:
        return ResourceLimit(path, int(allowed), float(seconds or 60))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected PATH:N[:SECONDS] ({exc})") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m proxy.simulator",
        description="Serve a local simulator of Genesys Cloud's login service and API.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: any free one)")
    parser.add_argument(
        "--client",
        action="append",
        default=[],
        type=_client_spec,
        metavar="ID:SECRET:DOMAIN",
        help="register a test OAuth client (repeatable)",
    )
    parser.add_argument(
        "--token-lifetime", type=float, default=86400, help="token lifetime in seconds"
    )
    parser.add_argument(
        "--api-rpm",
        type=int,
        default=300,
        help="API requests per token per rate window (0: no limit)",
    )
    parser.add_argument(
        "--api-window",
        type=float,
        default=60.0,
        help="seconds of a token's rate window (Genesys: 60; shorter ones for tests)",
    )
    parser.add_argument(
        "--resource-limit",
        action="append",
        default=[],
        type=_resource_limit,
        metavar="PATH:N[:SECONDS]",
        help="limit paths under PATH to N requests per client per window (repeatable)",
    )
    parser.add_argument(
        "--token-rpm", type=int, default=300, help="token requests per minute per client"
    )
    return parser


async def _serve(sim: GenesysSimulator, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with sim.running(host, port):
        print(f"Genesys simulator listening on {sim.base_url}", flush=True)
        print(f"  login_url: {sim.login_url_template}", flush=True)
        print(f"  api_url:   {sim.api_url_template}", flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    """Run until SIGINT or SIGTERM; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.api_rpm < 0 or args.token_rpm < 1 or args.token_lifetime <= 0 or args.api_window <= 0:
        parser.error(
            "--api-rpm must be >= 0, --token-rpm >= 1, --token-lifetime > 0 and --api-window > 0"
        )
    sim = GenesysSimulator(
        api_requests_per_minute=args.api_rpm or None,
        token_requests_per_minute=args.token_rpm,
        rate_window_seconds=args.api_window,
        resource_limits=args.resource_limit,
    )
    for spec in args.client:
        sim.add_client(
            spec.client_id,
            spec.client_secret,
            domain=spec.domain,
            token_lifetime=args.token_lifetime,
        )
        print(f"client {spec.client_id} registered for {spec.domain}", flush=True)
    try:
        asyncio.run(_serve(sim, args.host, args.port))
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0
