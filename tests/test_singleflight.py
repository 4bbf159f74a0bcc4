"""SingleFlight: one running call per key, shared by every concurrent caller."""

from __future__ import annotations

import asyncio
import gc

import pytest

from proxy.tenants.singleflight import SingleFlight


class Call:
    """A call that blocks until released and counts how often it ran."""

    def __init__(self, result: str = "value") -> None:
        self.result = result
        self.started = 0
        self.release = asyncio.Event()
        self.running = asyncio.Event()
        self.error: Exception | None = None

    async def __call__(self) -> str:
        self.started += 1
        self.running.set()
        await self.release.wait()
        if self.error is not None:
            raise self.error
        return self.result


async def finished(flight: SingleFlight[str, str], key: str) -> None:
    """Let the loop run until the call for `key` has ended (nobody awaits it)."""
    for _ in range(100):
        if not flight.in_flight(key):
            return
        await asyncio.sleep(0)
    pytest.fail(f"the call for {key!r} did not finish")


async def test_concurrent_callers_share_one_call() -> None:
    flight: SingleFlight[str, str] = SingleFlight()
    call = Call()
    waiters = [asyncio.create_task(flight.do("acme", call)) for _ in range(50)]
    await call.running.wait()
    assert flight.in_flight("acme")
    call.release.set()
    assert await asyncio.gather(*waiters) == ["value"] * 50
    assert call.started == 1
    assert not flight.in_flight("acme")


async def test_different_keys_run_separately() -> None:
    flight: SingleFlight[str, str] = SingleFlight()
    acme, globex = Call("a"), Call("g")
    acme.release.set()
    globex.release.set()
    results = await asyncio.gather(flight.do("acme", acme), flight.do("globex", globex))
    assert list(results) == ["a", "g"]
    assert (acme.started, globex.started) == (1, 1)


async def test_cancelled_caller_does_not_cancel_the_call_or_strand_the_others() -> None:
    flight: SingleFlight[str, str] = SingleFlight()
    call = Call()
    first = asyncio.create_task(flight.do("acme", call))
    await call.running.wait()
    others = [asyncio.create_task(flight.do("acme", call)) for _ in range(3)]
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    call.release.set()
    assert await asyncio.gather(*others) == ["value"] * 3
    assert call.started == 1


async def test_call_whose_callers_all_gave_up_still_finishes() -> None:
    flight: SingleFlight[str, str] = SingleFlight()
    call = Call()
    caller = asyncio.create_task(flight.do("acme", call))
    await call.running.wait()
    caller.cancel()
    call.release.set()
    await finished(flight, "acme")
    assert call.started == 1


async def test_exception_reaches_every_caller_and_frees_the_key() -> None:
    flight: SingleFlight[str, str] = SingleFlight()
    call = Call()
    call.error = RuntimeError("vault down")
    waiters = [asyncio.create_task(flight.do("acme", call)) for _ in range(5)]
    await call.running.wait()
    call.release.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(r, RuntimeError) and str(r) == "vault down" for r in results)
    assert not flight.in_flight("acme")

    call.error = None
    assert await flight.do("acme", call) == "value"
    assert call.started == 2


async def test_exception_nobody_awaits_is_not_reported_as_never_retrieved() -> None:
    reported: list[dict[str, object]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        flight: SingleFlight[str, str] = SingleFlight()
        call = Call()
        call.error = RuntimeError("boom")
        caller = asyncio.create_task(flight.do("acme", call))
        await call.running.wait()
        caller.cancel()
        call.release.set()
        await finished(flight, "acme")
        del caller
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
    assert reported == []


async def test_close_cancels_running_calls() -> None:
    flight: SingleFlight[str, str] = SingleFlight()
    call = Call()
    waiter = asyncio.create_task(flight.do("acme", call))
    await call.running.wait()
    await flight.close()
    assert not flight.in_flight("acme")
    with pytest.raises(asyncio.CancelledError):
        await waiter
