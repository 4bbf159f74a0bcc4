"""Capped exponential backoff with jitter: the one implementation every retry loop uses."""

from __future__ import annotations

from collections.abc import Callable


def backoff_delay(failures: int, draw: Callable[[], float], *, base: float, cap: float) -> float:
    """Seconds to wait after `failures` failures in a row: exponential, capped, jittered.

    Half the delay is fixed and half drawn from `draw()` in [0, 1) ("equal jitter"), so many
    clients that failed together (a Vault or login outage) do not come back at the same
    instant, yet none retries much sooner than planned.
    """
    ceiling = min(cap, base * 2.0 ** min(max(0, failures - 1), 64))
    return ceiling / 2 + draw() * ceiling / 2
