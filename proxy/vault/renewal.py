"""Keep the Vault session's token alive, as Vault Agent's auto-auth does.

    log in ──▶ renew-self at 2/3 of the TTL ──▶ ... ──▶ renewal refused or capped by the max TTL
       ▲                                                         │
       └──────── log in again at 2/3 of what is left ◀───────────┘

A failed login or an unreachable Vault is retried with capped exponential backoff and jitter;
the current token keeps serving while it lasts, so requests never wait on this loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

from proxy.backoff import backoff_delay
from proxy.errors import VaultUnavailable
from proxy.vault.session import TokenInfo, VaultSession

log = logging.getLogger("proxy.vault.session")

# Renew or log in again once this fraction of the token's TTL has passed (Vault Agent's choice):
# a third of the TTL is left to retry in if Vault is briefly unreachable.
RENEW_FRACTION = 2 / 3
# How often to look again at a token that never expires (nothing to renew; cheap to check).
IDLE_INTERVAL = 60.0
# Keeps a token with an absurdly short TTL from turning the loop into a busy loop.
MIN_STEP = 0.1

BACKOFF_BASE = 1.0
BACKOFF_CAP = 30.0

Action = Literal["login", "renew", "wait"]


@dataclass(frozen=True)
class Step:
    """What the loop does next, and when (on the session's clock)."""

    action: Action
    at: float


def plan_next(info: TokenInfo | None, *, authenticated: bool, can_log_in: bool, now: float) -> Step:
    """The next step for a session in this state; pure, so it is tested without waiting."""
    if not authenticated or info is None:
        return Step("login", now)
    expires_at = info.expires_at
    if expires_at is None:
        return Step("wait", now + IDLE_INTERVAL)
    due = info.obtained_at + info.ttl * RENEW_FRACTION
    if info.renewable:
        return Step("renew", due)
    if can_log_in:
        return Step("login", due)
    # A literal token Vault will not renew: nothing helps; look again when it has expired, so
    # the session notices and reports not ready.
    return Step("login", expires_at)


class VaultRenewer:
    """Runs the loop in the module docstring for one session until cancelled."""

    def __init__(
        self,
        session: VaultSession,
        *,
        backoff_base: float = BACKOFF_BASE,
        backoff_cap: float = BACKOFF_CAP,
        rng: random.Random | None = None,
    ) -> None:
        self._session = session
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._rng = rng or random.Random()  # noqa: S311 (jitter, not cryptography)
        self.failures_in_a_row = 0

    def next_step(self) -> Step:
        session = self._session
        return plan_next(
            session.token_info,
            authenticated=session.authenticated,
            can_log_in=session.can_log_in,
            now=session.clock(),
        )

    async def run(self) -> None:
        """Renew and log in as planned, forever; returns only if the session is closed."""
        session = self._session
        while not session.closed:
            step = self.next_step()
            delay = max(step.at - session.clock(), MIN_STEP)
            if self.failures_in_a_row:
                backoff = backoff_delay(
                    self.failures_in_a_row,
                    self._rng.random,
                    base=self._backoff_base,
                    cap=self._backoff_cap,
                )
                delay = max(delay, backoff)
            # A login or a rejected token elsewhere (a request's) changes the plan: replan then.
            if await session.wait_for_change(delay) or step.action == "wait" or session.closed:
                continue
            try:
                if step.action == "renew":
                    await session.renew()
                else:
                    await session.login()
            except VaultUnavailable as exc:
                # The session has logged the reason; say when the next attempt comes.
                self.failures_in_a_row += 1
                log.debug("Vault %s failed (%s); retrying with backoff", step.action, exc.message)
            # A bug must not end the loop: the token would lapse and the proxy stop serving.
            except Exception:
                self.failures_in_a_row += 1
                log.exception("Vault %s failed unexpectedly; retrying with backoff", step.action)
            else:
                self.failures_in_a_row = 0

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[VaultRenewer]:
        """Run the loop as a background task for the duration of the `async with` block."""
        task = asyncio.create_task(self.run(), name="vault-renewal")
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
