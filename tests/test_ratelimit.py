"""The rate-limit logic on a fake clock: budgets from headers, holding, refusing, the pool."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from proxy.config import parse_config
from proxy.errors import RateLimited
from proxy.tenants.ratelimit import (
    Lease,
    RateLimiter,
    RateLimitSettings,
    TenantBudget,
    TokenWindow,
    parse_ratelimit_headers,
)
from tests.conftest import FakeClock


class Counts:
    """A RateLimitObserver that counts."""

    def __init__(self) -> None:
        self.held: list[tuple[str, str]] = []
        self.rejected: list[str] = []
        self.upstream: list[tuple[str, str]] = []

    def ratelimit_held(self, tenant: str, reason: str) -> None:
        self.held.append((tenant, reason))

    def ratelimit_rejected(self, tenant: str) -> None:
        self.rejected.append(tenant)

    def upstream_429(self, tenant: str, outcome: str) -> None:
        self.upstream.append((tenant, outcome))


def window(allowed: int, count: int, reset: int) -> dict[str, str]:
    return {
        "inin-ratelimit-allowed": str(allowed),
        "inin-ratelimit-count": str(count),
        "inin-ratelimit-reset": str(reset),
    }


async def settle() -> None:
    """Let woken tasks run (a few loop turns; no time passes)."""
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.fixture
def counts() -> Counts:
    return Counts()


def limiter_with(clock: FakeClock, counts: Counts, **settings: float) -> RateLimiter:
    return RateLimiter(RateLimitSettings(**settings), clock=clock, observer=counts)


def pool(*tokens: str) -> tuple[str, ...]:
    return tokens


async def known(
    budget: TenantBudget[str], tokens: Sequence[str], allowed: int, count: int, reset: int = 5
) -> None:
    """Describe each token's window as Genesys would on its first answer."""
    probes = [await budget.acquire(lambda: tokens) for _ in tokens]
    assert sorted(probe.token for probe in probes) == sorted(tokens)
    for probe in probes:
        probe.answered(200, window(allowed, count, reset))


async def test_a_token_without_a_known_window_gets_one_probe_until_its_first_answer(
    clock: FakeClock, counts: Counts
) -> None:
    budget: TenantBudget[str] = TenantBudget("acme", limiter_with(clock, counts))
    probe = await budget.acquire(lambda: ("t1",))
    held = asyncio.create_task(budget.acquire(lambda: ("t1",)))
    await settle()
    assert not held.done()
    assert budget.waiting == 1

    probe.answered(200, window(50, 1, 5))

    second = await held
    assert second.token == "t1"
    assert counts.held == [("acme", "budget")]
    assert budget.remaining() == 49


async def test_a_token_whose_answers_describe_no_window_is_not_held_to_one_request(
    clock: FakeClock, counts: Counts
) -> None:
    # An upstream that sends no inin-ratelimit-* headers (an endpoint without them, a gateway's
    # error page, a stand-in API) gives no budget to keep: after its first answer the token
    # must not stay at one request at a time.
    budget: TenantBudget[str] = TenantBudget("acme", limiter_with(clock, counts))
    probe = await budget.acquire(lambda: ("t1",))
    probe.answered(200, {})
    acquiring = [asyncio.create_task(budget.acquire(lambda: ("t1",))) for _ in range(32)]
    await settle()
    assert all(task.done() for task in acquiring)
    leases = [task.result() for task in acquiring]
    assert counts.held == []
    assert budget.remaining() is None
    # Once an answer does describe the window, it is kept as usual.
    for lease in leases:
        lease.answered(200, window(50, 40, 5))
    assert budget.remaining() == 10


async def test_no_more_requests_go_out_than_the_window_has_left_counting_those_in_flight(
    clock: FakeClock, counts: Counts
) -> None:
    budget: TenantBudget[str] = TenantBudget("acme", limiter_with(clock, counts, max_wait=0.5))
    await known(budget, ["t1"], allowed=4, count=1, reset=10)

    leases = [await budget.acquire(lambda: ("t1",)) for _ in range(3)]
    with pytest.raises(RateLimited) as refused:
        await budget.acquire(lambda: ("t1",))

    assert len(leases) == 3
    assert refused.value.retry_after == 10  # seconds to the window's reset
    assert refused.value.status == 429
    assert refused.value.code == "rate_limited"
    assert counts.rejected == ["acme"]


async def test_each_request_goes_to_the_token_with_the_most_budget_left(
    clock: FakeClock, counts: Counts
) -> None:
    budget: TenantBudget[str] = TenantBudget("acme", limiter_with(clock, counts))
    tokens = ("t1", "t2", "t3")
    probes = [await budget.acquire(lambda: tokens) for _ in tokens]  # one probe each
    for probe, count in zip(probes, (40, 10, 25), strict=True):
        probe.answered(200, window(50, count, 30))

    chosen = [(await budget.acquire(lambda: tokens)).token for _ in range(3)]

    assert chosen == ["t2", "t2", "t2"]
    assert budget.best(tokens) == "t2"
    assert budget.remaining() == 10 + 40 + 25


async def test_held_requests_are_released_in_arrival_order_when_the_window_resets(
    clock: FakeClock, counts: Counts
) -> None:
    budget: TenantBudget[str] = TenantBudget("acme", limiter_with(clock, counts, max_wait=5))
    await known(budget, ["t1"], allowed=2, count=2, reset=2)
    released: list[int] = []

    async def request(number: int) -> Lease[str]:
        lease = await budget.acquire(lambda: ("t1",))
        released.append(number)
        return lease

    held = [asyncio.create_task(request(n)) for n in range(3)]
    await settle()
    assert budget.waiting == 3
    clock.advance(2)
    budget.release()
    await settle()

    assert released == [0, 1]  # the new window holds two
    leases = [held[0].result(), held[1].result()]
    for lease in leases:
        lease.answered(200, window(2, 2, 2))
    clock.advance(2)
    budget.release()
    await held[2]
    assert released == [0, 1, 2]
    assert counts.held == [("acme", "budget")] * 3


async def test_a_reset_beyond_max_wait_is_refused_at_once_and_reserves_nothing(
    clock: FakeClock, counts: Counts
) -> None:
    budget: TenantBudget[str] = TenantBudget("acme", limiter_with(clock, counts, max_wait=2))
    await known(budget, ["t1"], allowed=1, count=1, reset=4)

    with pytest.raises(RateLimited) as refused:
        await budget.acquire(lambda: ("t1",))

    assert refused.value.retry_after == 4
    assert "max_wait" in refused.value.message
    assert budget.waiting == 0
    window_ = budget.window_of("t1")
    assert window_ is not None
    assert window_.in_flight == 0


async def test_requests_that_would_wait_for_a_later_window_are_refused_at_once(
    clock: FakeClock, counts: Counts
) -> None:
    budget: TenantBudget[str] = TenantBudget("acme", limiter_with(clock, counts, max_wait=4.5))
    await known(budget, ["t1"], allowed=2, count=2, reset=3)  # next window in 3 s, holds 2
    held = [asyncio.create_task(budget.acquire(lambda: ("t1",))) for _ in range(2)]
    await settle()

    with pytest.raises(RateLimited) as refused:
        await budget.acquire(
            lambda: ("t1",)
        )  # third in line: the window after, 2 + 3 > 4.5 s (resets may come 1 s early)

    assert refused.value.retry_after == 6
    for task in held:
        task.cancel()
    await asyncio.gather(*held, return_exceptions=True)


async def test_waiters_beyond_the_cap_are_refused_at_once(clock: FakeClock, counts: Counts) -> None:
    budget: TenantBudget[str] = TenantBudget("acme", limiter_with(clock, counts, max_waiting=2))
    await known(budget, ["t1"], allowed=10, count=10, reset=2)
    held = [asyncio.create_task(budget.acquire(lambda: ("t1",))) for _ in range(2)]
    await settle()

    with pytest.raises(RateLimited) as refused:
        await budget.acquire(lambda: ("t1",))

    assert "max_waiting" in refused.value.message
    assert budget.waiting == 2
    clock.advance(2)
    budget.release()
    assert all(isinstance(lease, Lease) for lease in await asyncio.gather(*held))


async def test_a_cancelled_waiter_costs_nothing_and_does_not_block_the_queue(
    clock: FakeClock, counts: Counts
) -> None:
    budget: TenantBudget[str] = TenantBudget("acme", limiter_with(clock, counts))
    await known(budget, ["t1"], allowed=1, count=1, reset=2)
    first = asyncio.create_task(budget.acquire(lambda: ("t1",)))
    second = asyncio.create_task(budget.acquire(lambda: ("t1",)))
    await settle()

    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    clock.advance(2)
    budget.release()

    lease = await second
    assert lease.token == "t1"
    window_ = budget.window_of("t1")
    assert window_ is not None
    assert window_.in_flight == 1


async def test_a_waiter_cancelled_just_after_its_release_hands_the_budget_on(
    clock: FakeClock, counts: Counts
) -> None:
    budget: TenantBudget[str] = TenantBudget("acme", limiter_with(clock, counts))
    await known(budget, ["t1"], allowed=1, count=1, reset=2)
    first = asyncio.create_task(budget.acquire(lambda: ("t1",)))
    second = asyncio.create_task(budget.acquire(lambda: ("t1",)))
    await settle()
    clock.advance(2)
    budget.release()  # the first gets the lease, but is cancelled before it runs
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)

    lease = await second
    window_ = budget.window_of("t1")
    assert lease.token == "t1"
    assert window_ is not None
    assert window_.in_flight == 1


async def test_a_waiter_whose_client_hangs_up_leaves_the_queue(
    clock: FakeClock, counts: Counts
) -> None:
    budget: TenantBudget[str] = TenantBudget("acme", limiter_with(clock, counts))
    await known(budget, ["t1"], allowed=1, count=1, reset=2)
    gone = asyncio.Event()
    held = asyncio.create_task(budget.acquire(lambda: ("t1",), gone=gone.is_set))
    await settle()

    gone.set()
    with pytest.raises(ConnectionResetError):
        await held

    assert budget.waiting == 0
    clock.advance(2)
    assert (await budget.acquire(lambda: ("t1",))).token == "t1"


async def test_the_pool_grows_only_when_every_token_used_80_percent_of_its_window(
    clock: FakeClock, counts: Counts
) -> None:
    tokens = ["t1"]
    grown: list[str] = []

    async def grow() -> None:
        name = f"t{len(tokens) + 1}"
        grown.append(name)
        tokens.append(name)

    budget: TenantBudget[str] = TenantBudget(
        "acme", limiter_with(clock, counts, tokens_per_tenant=2)
    )
    probe = await budget.acquire(lambda: tokens, grow=grow)
    probe.answered(200, window(10, 1, 30))
    for _ in range(6):  # 1 + 6 = 7 of 10
        await budget.acquire(lambda: tokens, grow=grow)
    await settle()
    assert grown == []

    await budget.acquire(lambda: tokens, grow=grow)  # 8 of 10: the pool grows
    await settle()
    assert grown == ["t2"]
    # The most budget left: t1 has 2 of 10, the new t2 one probe until it answers.
    leases = [await budget.acquire(lambda: tokens, grow=grow) for _ in range(3)]
    assert [lease.token for lease in leases] == ["t1", "t1", "t2"]

    leases[2].answered(200, window(10, 8, 30))
    await budget.acquire(lambda: tokens, grow=grow)  # both over 80 %, but the pool is full
    await settle()
    assert grown == ["t2"]


async def test_max_wait_zero_never_holds_nor_refuses(clock: FakeClock, counts: Counts) -> None:
    limiter = limiter_with(clock, counts, max_wait=0)
    budget: TenantBudget[str] = TenantBudget("acme", limiter)
    await known(budget, ["t1", "t2"], allowed=5, count=5, reset=30)

    leases = [await budget.acquire(lambda: ("t1", "t2")) for _ in range(3)]

    assert {lease.token for lease in leases} <= {"t1", "t2"}
    assert counts.held == []
    assert counts.rejected == []
    assert limiter.replay_delay({"Retry-After": "1"}, attempt=0) is None


def test_a_429_is_replayed_only_if_its_retry_after_fits_max_wait_and_retries_are_left(
    clock: FakeClock, counts: Counts
) -> None:
    limiter = limiter_with(clock, counts, max_wait=5, retries=2)

    assert limiter.replay_delay({"Retry-After": "3"}, attempt=0) == 3
    assert limiter.replay_delay({"Retry-After": "3"}, attempt=1) == 3
    assert limiter.replay_delay({"Retry-After": "3"}, attempt=2) is None
    assert limiter.replay_delay({"Retry-After": "6"}, attempt=0) is None
    assert limiter.replay_delay({}, attempt=0) is None
    assert limiter.replay_delay({"Retry-After": "soon"}, attempt=0) is None


async def test_a_429_for_the_tokens_window_holds_the_token_until_its_reset(
    clock: FakeClock, counts: Counts
) -> None:
    budget: TenantBudget[str] = TenantBudget("acme", limiter_with(clock, counts, max_wait=1))
    await known(budget, ["t1"], allowed=50, count=10, reset=30)
    lease = await budget.acquire(lambda: ("t1",))

    # Someone else (an app with the raw token) used the window up.
    lease.answered(429, {**window(50, 50, 4), "Retry-After": "4"})

    with pytest.raises(RateLimited) as refused:
        await budget.acquire(lambda: ("t1",))
    assert refused.value.retry_after == 4


async def test_a_429_of_a_resource_limit_leaves_the_tokens_budget_alone(
    clock: FakeClock, counts: Counts
) -> None:
    budget: TenantBudget[str] = TenantBudget("acme", limiter_with(clock, counts))
    await known(budget, ["t1"], allowed=50, count=10, reset=30)
    lease = await budget.acquire(lambda: ("t1",))

    lease.answered(429, {**window(50, 11, 30), "Retry-After": "4"})

    assert budget.remaining() == 39


async def test_reconfigure_applies_new_settings_at_once(clock: FakeClock, counts: Counts) -> None:
    limiter = limiter_with(clock, counts)
    budget: TenantBudget[str] = TenantBudget("acme", limiter)
    await known(budget, ["t1"], allowed=1, count=1, reset=3)

    limiter.reconfigure(parse_config({"genesys": {"rate_limit": {"max_wait": 1, "retries": 0}}}))

    assert limiter.settings == RateLimitSettings(max_wait=1, retries=0)
    with pytest.raises(RateLimited):
        await budget.acquire(lambda: ("t1",))


def test_a_window_takes_the_highest_count_of_out_of_order_answers_and_spots_a_new_window(
    clock: FakeClock,
) -> None:
    token_window = TokenWindow()
    token_window.observe(50, 30, 20, clock())
    token_window.observe(50, 12, 20, clock())  # an older answer, late
    assert token_window.left(clock()) == 20

    clock.advance(1)
    token_window.observe(50, 3, 60, clock())  # Genesys reset it earlier than promised
    assert token_window.left(clock()) == 47

    clock.advance(61)
    assert token_window.left(clock()) == 50  # the window is over: the full budget is back


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (window(300, 17, 42), (300, 17, 42.0)),
        ({"inin-ratelimit-allowed": "300", "inin-ratelimit-count": "1"}, (300, 1, 60.0)),
        ({"inin-ratelimit-allowed": "lots", "inin-ratelimit-count": "1"}, None),
        ({"inin-ratelimit-allowed": "0", "inin-ratelimit-count": "0"}, None),
        ({}, None),
    ],
)
def test_ratelimit_headers_are_parsed_or_ignored(
    headers: dict[str, str], expected: tuple[int, int, float] | None
) -> None:
    assert parse_ratelimit_headers(headers) == expected


async def test_budgets_live_on_their_holder_and_a_reload_reaches_the_held(
    clock: FakeClock, counts: Counts
) -> None:
    class Holder:
        def __init__(self) -> None:
            self.id = "acme"
            self.budget: TenantBudget[str] | None = None

    holder = Holder()
    limiter: RateLimiter[str] = RateLimiter(
        clock=clock, observer=counts, budgets=lambda: [holder.budget] if holder.budget else []
    )
    budget = limiter.budget_of(holder)
    assert limiter.budget_of(holder) is budget
    await known(budget, ["t1"], allowed=1, count=1, reset=3)
    held = asyncio.create_task(budget.acquire(lambda: ("t1",)))
    await settle()

    # A reload that lowers max_wait below the reset refuses the held request at once.
    limiter.reconfigure(parse_config({"genesys": {"rate_limit": {"max_wait": 1}}}))
    clock.advance(0.5)
    budget.release()
    await settle()

    assert isinstance(held.exception(), RateLimited)
    limiter.close()


async def test_once_the_window_is_known_held_requests_that_cannot_make_it_are_refused_at_once(
    clock: FakeClock, counts: Counts
) -> None:
    budget: TenantBudget[str] = TenantBudget("acme", limiter_with(clock, counts, max_wait=5))
    probe = await budget.acquire(lambda: ("t1",))
    held = [asyncio.create_task(budget.acquire(lambda: ("t1",))) for _ in range(5)]
    await settle()
    assert budget.waiting == 5  # the window is unknown: everyone waits for the probe

    probe.answered(200, window(2, 1, 4))  # one left now; two more in 4 s; the rest in 8 s
    await settle()

    assert held[0].done()
    assert not held[0].exception()
    assert [task.done() for task in held[1:]] == [False, False, True, True]
    for task in held[3:]:
        refused = task.exception()
        assert isinstance(refused, RateLimited)
        assert refused.retry_after == 8
    assert counts.rejected == ["acme", "acme"]
    for task in held[1:3]:
        task.cancel()
    await asyncio.gather(*held, return_exceptions=True)


async def test_one_request_tries_early_since_a_rounded_reset_may_come_a_second_sooner(
    clock: FakeClock, counts: Counts
) -> None:
    budget: TenantBudget[str] = TenantBudget("acme", limiter_with(clock, counts))
    await known(budget, ["t1"], allowed=2, count=2, reset=3)
    clock.advance(2.1)  # inin-ratelimit-reset said 3, so the reset is somewhere in (2, 3]

    early = await budget.acquire(lambda: ("t1",))
    behind = asyncio.create_task(budget.acquire(lambda: ("t1",)))
    await settle()
    assert not behind.done()  # only one tries early

    early.answered(429, {**window(2, 2, 1), "Retry-After": "1"})  # too early after all
    budget.release()
    await settle()
    assert not behind.done()  # no second early try in this window
    clock.advance(1)
    budget.release()
    assert (await behind).token == "t1"
