"""`genesys-token-proxy inject`: its flags, the settings built from them, and the TLS listener.

Bad flags are one-line errors naming the flag (`--tls-key: does not match --tls-cert`), exit 2;
a port in use is exit 1, like `serve`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import ssl
from pathlib import Path
from typing import Any

from aiohttp import web

from proxy import __version__
from proxy.config import LogConfig
from proxy.errors import ConfigError
from proxy.injector.sidecar import (
    ALWAYS_EXCLUDED_NAMESPACES,
    Resources,
    SidecarOptions,
    check_object_name,
    check_quantity,
    check_word,
)
from proxy.injector.webhook import InjectorSettings, ReloadingCertificate, create_injector_app
from proxy.ops.logs import configure_logging

log = logging.getLogger("proxy.injector")

DEFAULT_IMAGE = f"genesys-token-proxy:{__version__}"


def _typed(check: Any) -> Any:
    """An argparse type from a `check_*` function: its ValueError becomes a usage error."""

    def convert(value: str) -> str:
        try:
            return str(check(value))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def _port(value: str) -> int:
    if not value.isdigit() or not 0 <= int(value) <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number 0-65535")
    return int(value)


def add_inject_command(commands: Any) -> None:
    """Register `inject` on the CLI's subcommand parsers."""
    defaults, res = SidecarOptions(image=DEFAULT_IMAGE), Resources()
    inject = commands.add_parser(
        "inject", help="serve the mutating admission webhook that adds the proxy sidecar to pods"
    )
    tls = inject.add_argument_group("listener")
    tls.add_argument(
        "--tls-cert",
        type=Path,
        required=True,
        metavar="FILE",
        help="PEM certificate (chain) the webhook serves; re-read when it changes",
    )
    tls.add_argument(
        "--tls-key", type=Path, required=True, metavar="FILE", help="PEM private key of --tls-cert"
    )
    tls.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    tls.add_argument("--port", type=_port, default=8443, help="HTTPS port (default 8443)")
    side = inject.add_argument_group("sidecar defaults (pods may override with annotations)")
    side.add_argument(
        "--image",
        type=_typed(check_word),
        default=defaults.image,
        help=f"proxy image (default {defaults.image})",
    )
    side.add_argument(
        "--config-map",
        type=_typed(check_object_name),
        default=defaults.config_map,
        help=f"ConfigMap with proxy.yaml (default {defaults.config_map})",
    )
    side.add_argument(
        "--admin-secret",
        type=_typed(check_object_name),
        default=defaults.admin_secret,
        help=f"Secret with the admin bearer token (default {defaults.admin_secret})",
    )
    side.add_argument(
        "--vault-role",
        type=_typed(check_word),
        default=defaults.vault_role,
        help=f"Vault Kubernetes-auth role (default {defaults.vault_role})",
    )
    side.add_argument(
        "--admin-port",
        type=_port,
        default=defaults.admin_port,
        help="the proxy's admin port in the ConfigMap, for the probes (default 9090)",
    )
    side.add_argument(
        "--sidecar",
        choices=("native", "container"),
        default=defaults.mode,
        help="native sidecar (Kubernetes 1.29+) or a plain container",
    )
    for flag, value in (
        ("--cpu-request", res.cpu_request),
        ("--memory-request", res.memory_request),
        ("--cpu-limit", res.cpu_limit),
        ("--memory-limit", res.memory_limit),
    ):
        side.add_argument(
            flag,
            type=_typed(check_quantity),
            default=value,
            help=f"sidecar resources (default {value or 'none'})",
        )
    inject.add_argument(
        "--exclude-namespace",
        action="append",
        default=[],
        metavar="NAME",
        help="never inject here (repeatable; kube-system and kube-public always)",
    )
    inject.add_argument(
        "--log-level", choices=("debug", "info", "warning", "error"), default="info"
    )
    inject.add_argument("--log-format", choices=("text", "json"), default="text")


def settings_from_args(args: argparse.Namespace) -> InjectorSettings:
    """The injector's settings; ConfigError naming the flag when a file is unusable."""
    for flag, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
        try:
            path.read_bytes()
        except OSError as exc:
            raise ConfigError(flag, f"cannot read {path}: {exc.strerror}") from None
    sidecar = SidecarOptions(
        image=args.image,
        config_map=args.config_map,
        admin_secret=args.admin_secret,
        vault_role=args.vault_role,
        admin_port=args.admin_port,
        mode=args.sidecar,
        resources=Resources(
            args.cpu_request, args.memory_request, args.cpu_limit, args.memory_limit
        ),
    )
    return InjectorSettings(
        sidecar=sidecar,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        host=args.host,
        port=args.port,
        excluded_namespaces=ALWAYS_EXCLUDED_NAMESPACES | frozenset(args.exclude_namespace),
    )


def load_certificate(settings: InjectorSettings) -> ReloadingCertificate:
    """The TLS context for the listener; ConfigError naming the flag when the pair is unusable."""
    try:
        return ReloadingCertificate(settings.tls_cert, settings.tls_key)
    except ssl.SSLError as exc:
        if b"-----BEGIN CERTIFICATE-----" not in settings.tls_cert.read_bytes():
            raise ConfigError(
                "--tls-cert", f"{settings.tls_cert} is not a PEM certificate"
            ) from None
        if b"PRIVATE KEY-----" not in settings.tls_key.read_bytes():
            raise ConfigError("--tls-key", f"{settings.tls_key} is not a PEM private key") from None
        raise ConfigError("--tls-key", f"does not match --tls-cert ({exc.reason})") from None


def run_inject_command(args: argparse.Namespace) -> None:
    """Serve the webhook until SIGTERM or SIGINT."""
    settings = settings_from_args(args)
    certificate = load_certificate(settings)
    configure_logging(LogConfig(level=args.log_level, format=args.log_format))
    asyncio.run(serve_injector(settings, certificate))


async def serve_injector(
    settings: InjectorSettings,
    certificate: ReloadingCertificate,
    stop: asyncio.Event | None = None,
) -> None:
    """Listen with TLS until `stop` is set (default: until SIGTERM or SIGINT)."""
    from proxy.errors import StartupError

    loop = asyncio.get_running_loop()
    signals = stop is None
    stop = stop or asyncio.Event()
    runner = web.AppRunner(create_injector_app(settings), access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port, ssl_context=certificate.context)
        try:
            await site.start()
        except OSError as exc:
            where = f"{settings.host}:{settings.port}"
            raise StartupError(f"cannot listen on {where} (--port): {exc.strerror}") from exc
        if signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
        log.info("injector serving on https://%s:%d/mutate", settings.host, settings.port)
        async with certificate.watching():
            await stop.wait()
        log.info("injector stopping")
    finally:
        await runner.cleanup()
