"""Share one running call among concurrent callers that ask for the same key."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from proxy.tasks import cancel_and_wait

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    """Run at most one call per key at a time; every caller asking meanwhile gets its outcome.

    The call runs in its own task, so a caller that is cancelled (a client that gave up) neither
    cancels it nor strands the other callers. An exception reaches every waiting caller, and the
    key is free for a new call as soon as the current one has finished.
    """

    def __init__(self, name: str = "singleflight") -> None:
        self._name = name
        self._tasks: dict[K, asyncio.Task[V]] = {}

    async def do(self, key: K, fn: Callable[[], Awaitable[V]]) -> V:
        """Return the result of `fn()`, joining the call already running for `key` if any."""
        task = self._tasks.get(key)
        if task is None:
            task = asyncio.create_task(_call(fn), name=f"{self._name}:{key}")
            self._tasks[key] = task
            # Registered before any waiter's callback, so the key is free when waiters resume.
            task.add_done_callback(lambda done: self._finished(key, done))
        return await asyncio.shield(task)

    def in_flight(self, key: K) -> bool:
        """Whether a call for `key` is running."""
        return key in self._tasks

    def __len__(self) -> int:
        return len(self._tasks)

    async def close(self) -> None:
        """Cancel the running calls and wait for them to end."""
        await cancel_and_wait(self._tasks.values())

    def _finished(self, key: K, task: asyncio.Task[V]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        # Mark the exception retrieved: when every caller was cancelled nobody else will, and
        # asyncio would log "Task exception was never retrieved".
        if not task.cancelled():
            task.exception()


async def _call(fn: Callable[[], Awaitable[V]]) -> V:
    return await fn()
