"""Config reload: SIGHUP, or a change of the `--config` file, applies what can change live.

    SIGHUP / file stamp changed (checked every RELOAD_CHECK_SECONDS)
      -> load the file again (a file that does not load: logged naming the key, nothing changes)
      -> changed_keys(running, loaded): the reloadable ones are applied at once,
         the others are logged as needing a restart and left as they run
      -> running config with only the reloadable keys replaced
      -> reconfigure(config) on every registered component

Components that hold a reloadable setting implement `Reconfigurable` and whoever creates them
(proxy/app.py) appends them to the app's `RECONFIGURABLE` list. Each takes what it needs from
the merged Config; nothing else in the process changes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

from aiohttp import web

from proxy.config import Config, changed_keys, load_config, with_keys_from
from proxy.errors import ConfigError
from proxy.filestamp import FileWatch

log = logging.getLogger("proxy.reload")

# Kubernetes updates a mounted ConfigMap without a signal (by swapping a symlink, about a minute
# after the change): the file is polled. A stat every 5 s costs nothing measurable.
RELOAD_CHECK_SECONDS = 5.0

# The keys that apply at once; a name that is a section covers all of its keys. Adding a
# reloadable section is one line here (and a `reconfigure` on the component that uses it).
RELOADABLE: tuple[str, ...] = (
    "log",
    "tenant.pattern",
    "tenant.default",
    "credentials.ttl",
    "credentials.negative_ttl",
    "credentials.stale_ttl",
    "genesys.refresh_at",
    "genesys.rate_limit",
)


class Reconfigurable(Protocol):
    """A component that takes new values of reloadable keys while it runs."""

    def reconfigure(self, config: Config) -> None: ...


RECONFIGURABLE = web.AppKey("reconfigurable", list[Reconfigurable])


def is_reloadable(key: str) -> bool:
    return any(key == name or key.startswith(name + ".") for name in RELOADABLE)


class Reloader:
    """Holds the running Config and applies reloads of the file it came from."""

    def __init__(
        self,
        config: Config,
        path: Path | None,
        env: Mapping[str, str],
        components: list[Reconfigurable],
        on_outcome: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self.path = path
        self._env = dict(env)
        self._components = components
        self._on_outcome = on_outcome
        self._watch = FileWatch(path) if path is not None else None

    def reload(self, reason: str) -> bool:
        """Load the file again and apply it; True if it loaded (whatever needed a restart)."""
        if self.path is None:
            log.info("reload (%s): no --config file, nothing to reload", reason)
            return True
        try:
            loaded = load_config(self.path, self._env)
        except ConfigError as exc:
            log.error("config reload (%s) failed, the running config stays: %s", reason, exc)
            self._count("error")
            return False
        changed = changed_keys(self.config, loaded)
        restart = [key for key in changed if not is_reloadable(key)]
        applied = [key for key in changed if is_reloadable(key)]
        if restart:
            log.warning(
                "config reload (%s): %s changed; a restart is needed to apply it",
                reason,
                ", ".join(restart),
            )
        if applied:
            try:
                merged = with_keys_from(self.config, loaded, applied)
            except ConfigError as exc:
                log.error("config reload (%s) failed, the running config stays: %s", reason, exc)
                self._count("error")
                return False
            self.config = merged
            failed = False
            for component in self._components:
                try:
                    component.reconfigure(merged)
                except Exception:  # a bug in one component must not stop the others
                    log.exception("config reload (%s): %r could not take it", reason, component)
                    failed = True
            if failed:
                self._count("error")
                return False
            log.info("config reloaded (%s): applied %s", reason, ", ".join(applied))
        elif not restart:
            log.info("config reload (%s): nothing changed", reason)
        self._count("success")
        return True

    def check_file(self) -> bool:
        """Reload if the file changed since last seen (modified, or replaced through a symlink)."""
        if self._watch is None or not self._watch.changed():
            return False
        self.reload("file changed")
        return True

    async def run(self, requested: asyncio.Event, interval: float = RELOAD_CHECK_SECONDS) -> None:
        """Reload when `requested` is set (SIGHUP) and when the file changes, until cancelled."""
        while True:
            try:
                async with asyncio.timeout(interval):
                    await requested.wait()
            except TimeoutError:
                self.check_file()
                continue
            requested.clear()
            if self._watch is not None:
                self._watch.changed()  # this reload reads the file as it is now
            self.reload("SIGHUP")

    def _count(self, outcome: str) -> None:
        if self._on_outcome is not None:
            self._on_outcome(outcome)
