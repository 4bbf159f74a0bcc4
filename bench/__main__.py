"""`python -m bench COMMAND ...`: run a benchmark (bench/run is the one command)."""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from bench import compare, instructions, profile, ratelimit, sidecar, token_path
from bench.procs import BenchError

COMMANDS = ("sidecar", "token-path", "profile", "instructions", "compare", "ratelimit")


def _positive(kind: type[int] | type[float]) -> Callable[[str], float]:
    """An argparse type: a number above zero."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text} is not above zero")
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--no-install", action="store_true", help="never run apt-get")
    common.add_argument(
        "--workdir", type=Path, help="keep configs and logs here (default: a temporary directory)"
    )
    parser = argparse.ArgumentParser(
        prog="bench/run",
        description="Benchmark genesys-token-proxy on loopback (default: the sidecar comparison).",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    side = commands.add_parser(
        "sidecar",
        parents=[common],
        help="direct vs nginx with a static header vs the proxy (the default)",
    )
    side.add_argument(
        "--duration", type=_positive(float), default=5.0, help="seconds per measurement (5)"
    )
    side.add_argument("--connections", type=_positive(int), default=32, help="wrk connections (32)")
    side.add_argument("--threads", type=_positive(int), default=1, help="wrk threads (1)")
    side.add_argument(
        "--runs", type=_positive(int), default=3, help="runs; medians are reported (3)"
    )
    path = commands.add_parser(
        "token-path",
        parents=[common],
        help="cold requests over many tenants: token fetches, Vault reads, memory",
    )
    path.add_argument(
        "--tenants", type=_positive(int), default=100, help="tenants in the burst (100)"
    )
    path.add_argument(
        "--per-tenant", type=_positive(int), default=10, help="concurrent requests per tenant (10)"
    )
    path.add_argument(
        "--memory-tenants", type=int, default=10_000, help="tenants cached for RSS (10000; 0: skip)"
    )
    path.add_argument(
        "--memory-source",
        choices=("vault", "file"),
        default="vault",
        help="credential source of the memory test (vault)",
    )
    prof = commands.add_parser(
        "profile", parents=[common], help="py-spy profile of the proxy under wrk load"
    )
    prof.add_argument(
        "--duration", type=_positive(float), default=10.0, help="seconds of load (10)"
    )
    prof.add_argument("--connections", type=_positive(int), default=32, help="wrk connections (32)")
    prof.add_argument(
        "--rate", type=_positive(int), default=200, help="py-spy samples per second (200)"
    )
    prof.add_argument("--top", type=_positive(int), default=25, help="rows per ranking (25)")
    count = commands.add_parser(
        "instructions",
        parents=[common],
        help="instructions per request of the proxy and the pass-through (valgrind callgrind)",
    )
    count.add_argument(
        "--requests", type=_positive(int), default=300, help="requests counted (300)"
    )
    versus = commands.add_parser(
        "compare",
        parents=[common],
        help="CPU per request of this tree's proxy against another revision's, interleaved",
    )
    versus.add_argument("--against", required=True, help="git revision to compare with")
    versus.add_argument("--rounds", type=_positive(int), default=6, help="rounds (6)")
    versus.add_argument(
        "--duration", type=_positive(float), default=4.0, help="seconds per load (4)"
    )
    versus.add_argument(
        "--connections", type=_positive(int), default=32, help="wrk connections (32)"
    )
    rate = commands.add_parser(
        "ratelimit",
        parents=[common],
        help="a burst of 3x a token's budget: pass-through vs absorbed vs a pool of tokens",
    )
    rate.add_argument(
        "--budget", type=_positive(int), default=50, help="requests per token per window (50)"
    )
    rate.add_argument(
        "--window",
        type=_positive(float),
        action="append",
        help="seconds of a rate window; repeatable (default: 5, then 2)",
    )
    rate.add_argument("--factor", type=_positive(int), default=3, help="the burst, in budgets (3)")
    rate.add_argument(
        "--runs", type=_positive(int), default=3, help="runs; medians are reported (3)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    # The sidecar comparison is the default: `bench/run --runs 5` is `bench/run sidecar --runs 5`.
    if not args_list or args_list[0] not in (*COMMANDS, "-h", "--help"):
        args_list.insert(0, "sidecar")
    args = _parser().parse_args(args_list)
    _raise_open_files_limit()
    if args.workdir is not None and args.workdir.exists() and any(args.workdir.iterdir()):
        # Old logs would be read as new ones (OpenBao's audit log is appended to).
        print(f"bench: error: --workdir {args.workdir} is not empty", file=sys.stderr)
        return 2
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="genesys-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        if args.command == "token-path":
            path_settings = token_path.Settings(
                args.tenants, args.per_tenant, args.memory_tenants, args.memory_source
            )
            return token_path.run(path_settings, workdir=workdir)
        if args.command == "compare":
            versus = compare.Settings(args.against, args.rounds, args.duration, args.connections)
            return compare.run(versus, install=not args.no_install, workdir=workdir)
        if args.command == "instructions":
            count_settings = instructions.Settings(args.requests)
            return instructions.run(count_settings, install=not args.no_install, workdir=workdir)
        if args.command == "ratelimit":
            rate_settings = ratelimit.Settings(
                args.budget, tuple(args.window or (5.0, 2.0)), args.factor, args.runs
            )
            return ratelimit.run(rate_settings, workdir=workdir)
        if args.command == "profile":
            profile_settings = profile.Settings(
                args.duration, args.connections, args.rate, args.top
            )
            return profile.run(profile_settings, install=not args.no_install, workdir=workdir)
        sidecar.run(
            sidecar.Settings(args.duration, args.connections, args.threads, args.runs),
            install=not args.no_install,
            workdir=workdir,
        )
        return 0
    except BenchError as exc:
        kept = f" (logs in {workdir})" if args.workdir else " (--workdir DIR keeps the logs)"
        print(f"bench: error: {exc}{kept}", file=sys.stderr)
        return 1
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


def _raise_open_files_limit() -> None:
    """Thousands of concurrent connections need more descriptors than some shells allow."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


if __name__ == "__main__":
    sys.exit(main())
