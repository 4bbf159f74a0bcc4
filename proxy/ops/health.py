"""Readiness as a state the kubelet can ask at any time: starting → ready → draining.

    starting ── the credential source worked once ──▶ ready ── shutdown begins ──▶ draining
    (503)       (Vault login and a read or lookup;     (200, "vault": "ok" or       (503)
                 for the file source, the file loaded)  "unavailable")

A Vault outage after start does not leave "ready": cached tenants are still served, and a
readiness probe must not take every pod out of its Service when Vault blips. `/readyz` answers
from this object alone, so it never waits on Vault.

Wiring: the Vault session reports into it (`VaultSession(health=readiness)`), the file source's
start calls `source_worked()`, the server calls `start_draining()` when shutdown begins.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

Status = Literal["starting", "ready", "draining"]


class Readiness:
    """The proxy's readiness and Vault's last known state; `on_vault_up` feeds the gauge."""

    def __init__(
        self, *, uses_vault: bool = True, on_vault_up: Callable[[bool], None] | None = None
    ) -> None:
        self._uses_vault = uses_vault
        self._on_vault_up = on_vault_up
        self._worked = False
        self._vault_up = False
        self._draining = False
        self.started_at = time.time()  # the admin page's uptime

    def __repr__(self) -> str:
        return f"Readiness(status={self.status!r}, vault_up={self._vault_up})"

    # -- what the proxy reports -------------------------------------------------------------------

    def source_worked(self) -> None:
        """The credential source has served a login and a read or lookup (or loaded its file)."""
        self._worked = True

    def vault_up(self, up: bool) -> None:
        """Vault answered (True) or was found unavailable (False)."""
        self._vault_up = up
        if self._on_vault_up is not None:
            self._on_vault_up(up)

    def start_draining(self) -> None:
        """Shutdown has begun: readiness is 503 from now on."""
        self._draining = True

    # -- what /readyz answers ---------------------------------------------------------------------

    @property
    def status(self) -> Status:
        if self._draining:
            return "draining"
        return "ready" if self._worked else "starting"

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def is_vault_up(self) -> bool:
        return self._vault_up

    def answer(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body) of `GET /readyz`."""
        status = self.status
        if status != "ready":
            return 503, {"status": status}
        body: dict[str, Any] = {"status": status}
        if self._uses_vault:
            body["vault"] = "ok" if self._vault_up else "unavailable"
        return 200, body
