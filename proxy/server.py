"""The daemon's lifecycle: start both listeners, wait for a signal, drain, stop.

startup   open resources (proxy app's cleanup_ctx), bind the proxy and admin listeners
serve     until SIGTERM/SIGINT sets the stop event; SIGHUP and a changed --config file reload
          (proxy.reload). Signal handlers only set events.
shutdown  /readyz turns 503, the proxy listener stops accepting and closes idle connections,
          requests in flight get `listen.shutdown_grace` seconds; those still running then
          (a download still streaming) are cut, and logged; the access log is flushed;
          resources close and the admin listener stops. The process exits within the grace
          plus CLOSE_SECONDS whatever it was doing: Kubernetes kills it at
          terminationGracePeriodSeconds, and an exit the operator can predict beats that.

Signals: SIGTERM and SIGINT drain and exit 0 (a second one cuts the grace short); SIGHUP
reloads; SIGUSR1 and SIGUSR2 are logged and ignored (Envoy reopens its logs on SIGUSR1; this
proxy's go to stderr, so there is nothing to reopen, and a log rotator's signal must not kill
it); every other signal keeps Python's default.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

from aiohttp import web
from aiohttp.typedefs import Handler

from proxy.app import ACCESS_LOG, METRICS, READINESS, create_app
from proxy.config import Config
from proxy.errors import StartupError
from proxy.http.listener import listener_options
from proxy.ops.admin import create_admin_app
from proxy.ops.logs import LoggingSettings
from proxy.reload import RECONFIGURABLE, Reloader

log = logging.getLogger("proxy.server")

# Allocations (minus deallocations) between first-generation collections; CPython's is 700.
GC_THRESHOLD = 20_000
# After the grace: this long for cut requests to unwind, resources to close and both listeners
# to stop, so the process is gone within `listen.shutdown_grace` + 1 s.
CLOSE_SECONDS = 1.0
# Of CLOSE_SECONDS, what cut requests get to unwind (their access line is written meanwhile).
CANCEL_SECONDS = 0.3
# What aiohttp's runners wait per connection once no request is left (idle ones close at once).
RUNNER_SHUTDOWN_SECONDS = 0.25
IGNORED_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)


class RequestTasks:
    """The proxy listener's requests in progress, so shutdown can wait for them, then cut them."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        # aiohttp runs each request in a task of its own; it ends once the answer is written.
        task = asyncio.current_task()
        if task is not None and task not in self._tasks:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await handler(request)

    async def wait(self, seconds: float, interrupt: asyncio.Event) -> int:
        """Wait up to `seconds` (or until `interrupt`) for them to end; how many are left."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        interrupted = asyncio.create_task(interrupt.wait())
        try:
            # One at a time, so that a request that starts meanwhile is waited for too.
            while self._tasks and not interrupted.done():
                left = deadline - loop.time()
                if left <= 0:
                    break
                await asyncio.wait(
                    [*self._tasks, interrupted], timeout=left, return_when="FIRST_COMPLETED"
                )
        finally:
            interrupted.cancel()
        return len(self._tasks)

    async def cancel(self, seconds: float) -> None:
        """Cancel those still running and give them `seconds` to unwind."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=seconds)


class Server:
    """Runs the proxy and admin listeners for one Config."""

    def __init__(
        self,
        config: Config,
        config_path: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.proxy_app = create_app(config)
        self.admin_app = create_admin_app(self.proxy_app)
        self.requests = RequestTasks()
        # Outermost, so a request counts until its answer is written; the app stays unaware.
        self.proxy_app.middlewares.insert(0, self.requests.middleware)
        self._proxy_runner = web.AppRunner(
            self.proxy_app,
            access_log=None,
            # Only what is left once shutdown() drained the requests itself (bounded).
            shutdown_timeout=RUNNER_SHUTDOWN_SECONDS,
            **listener_options(config.listen),
        )
        self._admin_runner = web.AppRunner(
            self.admin_app, access_log=None, shutdown_timeout=RUNNER_SHUTDOWN_SECONDS
        )
        self.proxy_port = config.listen.port
        self.admin_port = config.admin.port
        # The app's list grows as its resources open; the reloader reads it at each reload.
        components = self.proxy_app[RECONFIGURABLE]
        components.insert(0, LoggingSettings())
        self.reloader = Reloader(
            config,
            config_path,
            env or {},
            components,
            on_outcome=self.proxy_app[METRICS].config_reload,
        )
        self.reload_requested = asyncio.Event()
        self.force_exit = asyncio.Event()

    async def startup(self) -> None:
        """Open resources and bind both listeners, or raise StartupError."""
        await self._proxy_runner.setup()
        await self._admin_runner.setup()
        listen, admin = self.config.listen, self.config.admin
        self.proxy_port = await self._bind(self._proxy_runner, listen.host, listen.port, "listen")
        self.admin_port = await self._bind(self._admin_runner, admin.host, admin.port, "admin")
        log.info(
            "serving: proxy on %s:%d, admin on %s:%d",
            listen.host,
            self.proxy_port,
            admin.host,
            self.admin_port,
        )

    async def _bind(self, runner: web.AppRunner, host: str, port: int, key: str) -> int:
        site = web.TCPSite(runner, host, port, reuse_address=True, backlog=1024)
        try:
            await site.start()
        except OSError as exc:
            await self.close()
            raise StartupError(f"cannot listen on {host}:{port} ({key}): {exc.strerror}") from exc
        # With port 0 the kernel picks one: report the real address.
        for address in runner.addresses:
            if isinstance(address, tuple):
                return int(address[1])
        return port

    async def serve(
        self, stop: asyncio.Event, on_started: Callable[[Server], None] | None = None
    ) -> None:
        """Start, run until `stop` is set (reloading on request), then shut down gracefully."""
        await self.startup()
        if on_started is not None:
            on_started(self)
        reloads = asyncio.create_task(self.reloader.run(self.reload_requested), name="reloader")
        try:
            await stop.wait()
        finally:
            reloads.cancel()
            await asyncio.gather(reloads, return_exceptions=True)
            await self.shutdown()

    async def shutdown(self) -> None:
        """Drain: refuse readiness, stop accepting, give requests the grace, cut the rest, close."""
        loop = asyncio.get_running_loop()
        grace = self.config.listen.shutdown_grace
        deadline = loop.time() + grace + CLOSE_SECONDS
        self._start_draining()
        log.info("shutting down: %d requests in flight get up to %gs", len(self.requests), grace)
        await self._stop_accepting()
        left = await self.requests.wait(grace, self.force_exit)
        if left:
            log.warning(
                "shutdown grace over: cutting %d requests still running (answers still streaming)",
                left,
            )
            await self.requests.cancel(CANCEL_SECONDS)
        # Every request has ended, answered or cut, so every access line is queued: write them
        # before anything else can go wrong (bounded: the output may be a pipe nobody reads).
        access = self.proxy_app[ACCESS_LOG]
        await asyncio.to_thread(access.close, max(deadline - loop.time(), 0.1) / 2)
        try:
            async with asyncio.timeout(max(deadline - loop.time(), 0.1)):
                await self.close()
        except TimeoutError:
            log.warning("resources did not close within %gs of the grace; exiting", CLOSE_SECONDS)
        log.info("stopped")

    def _start_draining(self) -> None:
        """/readyz answers 503 draining from now on."""
        self.proxy_app[READINESS].start_draining()

    async def _stop_accepting(self) -> None:
        """Close the proxy listener's socket and its idle keep-alive connections."""
        for site in list(self._proxy_runner.sites):
            await site.stop()
        server = self._proxy_runner.server
        if server is not None:
            # Connections with a request in progress close once it is answered.
            server.pre_shutdown()

    async def close(self) -> None:
        await self._proxy_runner.cleanup()
        await self._admin_runner.cleanup()


async def run_until_signalled(
    server: Server, on_started: Callable[[Server], None] | None = None
) -> None:
    """Serve until SIGTERM or SIGINT; SIGHUP reloads. The handlers only set events."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_stop(name: str) -> None:
        if stop.is_set():
            log.warning("%s again: cutting the shutdown grace short", name)
            server.force_exit.set()
        else:
            log.info("%s: shutting down", name)
            stop.set()

    handlers: dict[signal.Signals, Callable[[], None]] = {
        signal.SIGTERM: lambda: on_stop("SIGTERM"),
        signal.SIGINT: lambda: on_stop("SIGINT"),
        signal.SIGHUP: server.reload_requested.set,
    }
    for sig in IGNORED_SIGNALS:
        handlers[sig] = _ignored(sig)
    for sig, handler in handlers.items():
        loop.add_signal_handler(sig, handler)
    try:
        await server.serve(stop, on_started)
    finally:
        for sig in handlers:
            loop.remove_signal_handler(sig)


def _ignored(sig: signal.Signals) -> Callable[[], None]:
    def handler() -> None:
        log.info("%s received: ignored (logs go to stderr; nothing to reopen)", sig.name)

    return handler


def run(
    config: Config, config_path: Path | None = None, env: Mapping[str, str] | None = None
) -> None:
    """Run the daemon to completion on a fresh event loop (uvloop when it is installed)."""
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(_main(config, config_path, env))


async def _main(config: Config, config_path: Path | None, env: Mapping[str, str] | None) -> None:
    await run_until_signalled(Server(config, config_path, env), on_started=_tune_gc)


def _tune_gc(server: Server) -> None:
    """Make the cyclic garbage collector cheaper for a long-running request loop."""
    # Everything built at startup (modules, config, apps) lives until exit: freezing it keeps
    # collections from scanning it again. Each request allocates hundreds of objects, so
    # CPython's default first-generation threshold (700) ran a collection every few requests;
    # at 20,000 the proxy spent about 5% less CPU per request (bench/run). Memory held by
    # uncollected cycles stays small: the threshold counts objects, not bytes.
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 20)


def _loop_factory() -> type[asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return cast(type[asyncio.AbstractEventLoop], uvloop.Loop)
