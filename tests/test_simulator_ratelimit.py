"""The simulator limits like Genesys: per-token windows, resource limits, settable per run."""

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from proxy.simulator import GenesysSimulator, ResourceLimit
from proxy.simulator.cli import _parser
from tests.conftest import FakeClock
from tests.test_simulator import DOMAIN_A, api, bearer, fetch_token

Client = TestClient[Any, Any]
ClientFactory = Callable[..., Awaitable[Client]]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_700_000_000.0)


async def simulated(
    aiohttp_client: ClientFactory, clock: FakeClock, **limits: Any
) -> tuple[GenesysSimulator, Client]:
    sim = GenesysSimulator(clock=clock, **limits)
    sim.add_client("client-a", "secret-a", domain=DOMAIN_A, org_name="Acme Ireland")
    return sim, await aiohttp_client(sim.app)


async def test_a_short_window_counts_each_token_and_refuses_without_processing(
    aiohttp_client: ClientFactory, clock: FakeClock
) -> None:
    sim, http = await simulated(
        aiohttp_client, clock, api_requests_per_minute=3, rate_window_seconds=5
    )
    first, second = await fetch_token(http), await fetch_token(http)
    answers = [await http.post(api("sim/echo"), headers=bearer(first)) for _ in range(3)]
    clock.advance(2)

    refused = await http.post(api("sim/echo"), headers=bearer(first), data=b"x" * 10)
    other = await http.get(api("organizations/me"), headers=bearer(second))

    assert [a.headers["inin-ratelimit-count"] for a in answers] == ["1", "2", "3"]
    assert answers[0].headers["inin-ratelimit-allowed"] == "3"
    assert answers[0].headers["inin-ratelimit-reset"] == "5"
    assert refused.status == 429
    assert refused.headers["Retry-After"] == "3"
    assert refused.headers["inin-ratelimit-count"] == "3"  # the refused request is not counted
    assert (await refused.json())["code"] == "too.many.requests.retry.after"
    assert other.status == 200  # the window is the token's, not the client's
    assert other.headers["inin-ratelimit-count"] == "1"
    assert sim.rate_limited("client-a") == 1
    clock.advance(3)
    assert (await http.get(api("organizations/me"), headers=bearer(first))).status == 200


async def test_set_rate_limit_changes_the_limit_of_a_running_simulator(
    aiohttp_client: ClientFactory, clock: FakeClock
) -> None:
    sim, http = await simulated(aiohttp_client, clock)
    sim.set_rate_limit(1, window_seconds=2)
    token = await fetch_token(http)

    assert (await http.get(api("organizations/me"), headers=bearer(token))).status == 200
    assert (await http.get(api("organizations/me"), headers=bearer(token))).status == 429
    clock.advance(2)
    assert (await http.get(api("organizations/me"), headers=bearer(token))).status == 200
    with pytest.raises(ValueError, match="at least 1"):
        sim.set_rate_limit(0)


async def test_a_resource_limit_is_counted_per_client_over_all_its_tokens(
    aiohttp_client: ClientFactory, clock: FakeClock
) -> None:
    sim, http = await simulated(
        aiohttp_client, clock, resource_limits=[ResourceLimit("/api/v2/users", 2, 10)]
    )
    first, second = await fetch_token(http), await fetch_token(http)
    statuses = [
        (await http.get(api("users"), headers=bearer(token))).status
        for token in (first, second, second)
    ]
    elsewhere = await http.get(api("organizations/me"), headers=bearer(second))
    refused = await http.get(api("users"), headers=bearer(first))

    assert statuses == [200, 200, 429]
    assert elsewhere.status == 200
    assert refused.headers["Retry-After"] == "10"
    # The token's own window did not count the refused requests.
    assert refused.headers["inin-ratelimit-count"] == "1"
    assert sim.rate_limited() == 2
    clock.advance(10)
    assert (await http.get(api("users"), headers=bearer(second))).status == 200


def test_the_command_line_sets_windows_and_resource_limits() -> None:
    args = _parser().parse_args(
        ["--api-rpm", "50", "--api-window", "5", "--resource-limit", "/api/v2/users:10:2"]
    )
    assert (args.api_rpm, args.api_window) == (50, 5.0)
    assert args.resource_limit == [ResourceLimit("/api/v2/users", 10, 2.0)]
    with pytest.raises(SystemExit):
        _parser().parse_args(["--resource-limit", "/users:10"])
