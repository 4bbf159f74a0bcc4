"""The Genesys Cloud simulator behaves like Genesys wherever the proxy can tell the difference."""

import asyncio
import base64
import gzip
import hashlib
import io
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from proxy.simulator import GenesysSimulator, SimClient, blob_content, main
from tests.conftest import FakeClock

DOMAIN_A = "mypurecloud.ie"
DOMAIN_B = "aps1.pure.cloud"

Client = TestClient[Any, Any]
ClientFactory = Callable[..., Awaitable[Client]]


def basic(client_id: str, secret: str) -> dict[str, str]:
    encoded = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {encoded}"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def request_token(
    http: Client,
    client_id: str = "client-a",
    secret: str = "secret-a",
    domain: str = DOMAIN_A,
    grant_type: str | None = "client_credentials",
) -> aiohttp.ClientResponse:
    form = {} if grant_type is None else {"grant_type": grant_type}
    return await http.post(
        f"/login/{domain}/oauth/token", data=form, headers=basic(client_id, secret)
    )


async def fetch_token(http: Client, client_id: str = "client-a", domain: str = DOMAIN_A) -> str:
    secret = client_id.replace("client", "secret")
    response = await request_token(http, client_id, secret, domain)
    assert response.status == 200
    token: str = (await response.json())["access_token"]
    return token


def api(path: str, domain: str = DOMAIN_A) -> str:
    return f"/api/{domain}/api/v2/{path}"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_700_000_000.0)


def make_simulator(clock: FakeClock, **limits: Any) -> GenesysSimulator:
    sim = GenesysSimulator(clock=clock, **limits)
    sim.add_client("client-a", "secret-a", domain=DOMAIN_A, org_name="Acme Ireland")
    sim.add_client("client-b", "secret-b", domain=DOMAIN_B, org_name="Bharat Telecom")
    return sim


@pytest.fixture
def sim(clock: FakeClock) -> GenesysSimulator:
    return make_simulator(clock)


@pytest.fixture
async def http(aiohttp_client: ClientFactory, sim: GenesysSimulator) -> Client:
    return await aiohttp_client(sim.app)


# -- login service -----------------------------------------------------------------------------


async def test_client_credentials_grant_returns_an_opaque_bearer_token(
    http: Client, sim: GenesysSimulator
) -> None:
    response = await request_token(http)

    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = await response.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 86400
    assert len(body["access_token"]) == 86
    assert sim.issued_tokens() == [body["access_token"]]
    assert sim.tokens_issued("client-a") == 1


async def test_wrong_secret_is_invalid_client_with_400(http: Client, sim: GenesysSimulator) -> None:
    response = await request_token(http, secret="not-the-secret")

    assert response.status == 400
    body = await response.json()
    assert body["error"] == "invalid_client"
    assert body["error_description"]
    assert sim.token_requests("client-a") == 1
    assert sim.tokens_issued() == 0


async def test_client_registered_in_another_region_is_invalid_client(http: Client) -> None:
    response = await request_token(http, "client-b", "secret-b", domain=DOMAIN_A)

    assert response.status == 400
    assert (await response.json())["error"] == "invalid_client"


@pytest.mark.parametrize(
    "authorization",
    [None, "Basic !!!not-base64", "Bearer abc", "Basic " + base64.b64encode(b"no-colon").decode()],
)
async def test_missing_or_garbled_basic_header_is_invalid_client(
    http: Client, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = await http.post(
        f"/login/{DOMAIN_A}/oauth/token", data={"grant_type": "client_credentials"}, headers=headers
    )

    assert response.status == 400
    assert (await response.json())["error"] == "invalid_client"


@pytest.mark.parametrize("grant_type", ["password", None])
async def test_other_or_missing_grant_type_is_unsupported_grant_type(
    http: Client, grant_type: str | None
) -> None:
    response = await request_token(http, grant_type=grant_type)

    assert response.status == 400
    assert (await response.json())["error"] == "unsupported_grant_type"


async def test_login_rate_limit_answers_429_with_retry_after_until_the_window_slides(
    aiohttp_client: ClientFactory, clock: FakeClock
) -> None:
    sim = make_simulator(clock, token_requests_per_minute=3)
    http = await aiohttp_client(sim.app)
    for _ in range(3):
        assert (await request_token(http)).status == 200
        clock.advance(10)

    limited = await request_token(http)

    assert limited.status == 429
    assert limited.headers["Retry-After"] == "30"
    assert "error" in await limited.json()
    assert (await request_token(http, "client-b", "secret-b", DOMAIN_B)).status == 200
    clock.advance(30)
    assert (await request_token(http)).status == 200


async def test_set_token_lifetime_changes_expires_in_of_new_tokens(
    http: Client, sim: GenesysSimulator
) -> None:
    sim.set_token_lifetime("client-a", 600)

    body = await (await request_token(http)).json()

    assert body["expires_in"] == 600


async def test_removed_client_can_no_longer_log_in_and_its_tokens_stop_working(
    http: Client, sim: GenesysSimulator
) -> None:
    token = await fetch_token(http)

    sim.remove_client("client-a")

    assert (await request_token(http)).status == 400
    response = await http.get(api("organizations/me"), headers=bearer(token))
    assert (await response.json())["code"] == "bad.credentials"


def test_sim_client_repr_hides_the_secret(sim: GenesysSimulator) -> None:
    client = sim.add_client("client-c", "very-secret-value", domain=DOMAIN_A)

    assert isinstance(client, SimClient)
    assert "very-secret-value" not in repr(client)
    assert client.org_name == "Org client-c"


# -- API authentication --------------------------------------------------------------------------


async def test_token_reaches_its_own_organization(http: Client) -> None:
    token = await fetch_token(http)

    org = await (await http.get(api("organizations/me"), headers=bearer(token))).json()
    users = await (await http.get(api("users"), headers=bearer(token))).json()

    assert org["name"] == "Acme Ireland"
    assert org["thirdPartyOrgName"] == "acme-ireland"
    assert all("Acme Ireland" in user["name"] for user in users["entities"])
    assert all("acme-ireland" in user["email"] for user in users["entities"])


async def test_token_from_another_region_is_bad_credentials(http: Client) -> None:
    token = await fetch_token(http, "client-b", DOMAIN_B)

    response = await http.get(api("organizations/me", DOMAIN_A), headers=bearer(token))

    assert response.status == 401
    body = await response.json()
    assert body["code"] == "bad.credentials"
    assert body["status"] == 401
    assert uuid.UUID(body["contextId"])


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer "}, {"Authorization": "Basic x"}]
)
async def test_missing_or_blank_bearer_is_authentication_required(
    http: Client, headers: dict[str, str]
) -> None:
    response = await http.get(api("organizations/me"), headers=headers)

    assert response.status == 401
    assert (await response.json())["code"] == "authentication.required"


async def test_unknown_token_is_bad_credentials(http: Client) -> None:
    response = await http.get(api("organizations/me"), headers=bearer("made-up"))

    assert response.status == 401
    assert (await response.json())["code"] == "bad.credentials"


async def test_token_expires_after_its_lifetime_by_the_injected_clock(
    http: Client, sim: GenesysSimulator, clock: FakeClock
) -> None:
    sim.set_token_lifetime("client-a", 300)
    token = await fetch_token(http)
    clock.advance(299)
    assert (await http.get(api("organizations/me"), headers=bearer(token))).status == 200
    assert sim.expired_tokens_seen() == 0

    clock.advance(1)
    response = await http.get(api("organizations/me"), headers=bearer(token))

    assert response.status == 401
    assert (await response.json())["code"] == "credentials.expired"
    assert sim.expired_tokens_seen() == 1


async def test_revoked_token_is_bad_credentials(http: Client, sim: GenesysSimulator) -> None:
    token = await fetch_token(http)

    assert sim.revoke_tokens("client-a") == 1
    response = await http.get(api("organizations/me"), headers=bearer(token))

    assert response.status == 401
    assert (await response.json())["code"] == "bad.credentials"
    assert sim.revoke_tokens("client-a") == 0


# -- API limits, headers and faults ----------------------------------------------------------------


async def test_authenticated_answers_carry_ratelimit_headers(http: Client) -> None:
    token = await fetch_token(http)

    first = await http.get(api("organizations/me"), headers=bearer(token))
    second = await http.get(api("no/such/thing"), headers=bearer(token))
    anonymous = await http.get(api("organizations/me"))

    assert first.headers["inin-ratelimit-count"] == "1"
    assert first.headers["inin-ratelimit-allowed"] == "300"
    assert first.headers["inin-ratelimit-reset"] == "60"
    assert second.status == 404
    assert second.headers["inin-ratelimit-count"] == "2"
    assert "inin-ratelimit-count" not in anonymous.headers


async def test_api_rate_limit_answers_429_with_retry_after_until_the_window_resets(
    aiohttp_client: ClientFactory, clock: FakeClock
) -> None:
    sim = make_simulator(clock, api_requests_per_minute=2)
    http = await aiohttp_client(sim.app)
    token = await fetch_token(http)
    for _ in range(2):
        assert (await http.get(api("organizations/me"), headers=bearer(token))).status == 200
    clock.advance(15)

    limited = await http.get(api("organizations/me"), headers=bearer(token))

    assert limited.status == 429
    assert limited.headers["Retry-After"] == "45"
    body = await limited.json()
    assert body["code"] == "too.many.requests.retry.after"
    assert body["status"] == 429
    clock.advance(45)
    again = await http.get(api("organizations/me"), headers=bearer(token))
    assert again.status == 200
    assert again.headers["inin-ratelimit-count"] == "1"


@pytest.mark.parametrize("sent", [None, "my-correlation-id"])
async def test_correlation_id_is_echoed_or_generated_on_every_answer(
    http: Client, sent: str | None
) -> None:
    headers = {} if sent is None else {"ININ-Correlation-Id": sent}
    token = await fetch_token(http)

    answers = [
        await http.get(api("organizations/me"), headers={**headers, **bearer(token)}),
        await http.get(api("organizations/me"), headers=headers),
        await http.get(api("nowhere"), headers={**headers, **bearer(token)}),
    ]

    for answer in answers:
        correlation_id = answer.headers["ININ-Correlation-Id"]
        assert correlation_id == sent if sent else uuid.UUID(correlation_id)


async def test_login_fault_is_served_count_times_before_any_check(
    http: Client, sim: GenesysSimulator
) -> None:
    sim.inject_login_fault(status=503, retry_after=7, count=2)

    faulted = [await request_token(http, secret="wrong") for _ in range(2)]
    after = await request_token(http)

    assert [response.status for response in faulted] == [503, 503]
    assert faulted[0].headers["Retry-After"] == "7"
    assert after.status == 200
    assert sim.token_requests("client-a") == 3


async def test_login_fault_for_one_client_spares_the_others(
    http: Client, sim: GenesysSimulator
) -> None:
    sim.inject_login_fault(
        status=500, body=b"<html>oops</html>", content_type="text/html", client_id="client-b"
    )

    spared = await request_token(http)
    faulted = await request_token(http, "client-b", "secret-b", DOMAIN_B)

    assert spared.status == 200
    assert faulted.status == 500
    assert faulted.content_type == "text/html"
    assert await faulted.read() == b"<html>oops</html>"


async def test_api_fault_applies_after_authentication_to_its_client_only(
    http: Client, sim: GenesysSimulator
) -> None:
    token_a = await fetch_token(http)
    token_b = await fetch_token(http, "client-b", DOMAIN_B)
    sim.inject_api_fault(status=502, retry_after=3, client_id="client-a")

    anonymous = await http.get(api("organizations/me"))
    spared = await http.get(api("organizations/me", DOMAIN_B), headers=bearer(token_b))
    faulted = await http.get(api("organizations/me"), headers=bearer(token_a))
    after = await http.get(api("organizations/me"), headers=bearer(token_a))

    assert anonymous.status == 401
    assert spared.status == 200
    assert faulted.status == 502
    assert faulted.headers["Retry-After"] == "3"
    assert (await faulted.json())["status"] == 502
    assert after.status == 200
    assert sim.api_requests("client-a") == 2


async def test_concurrent_requests_consume_exactly_count_faults_and_share_the_delay(
    http: Client, sim: GenesysSimulator
) -> None:
    token = await fetch_token(http)
    sim.inject_api_fault(status=503, delay=30.0, count=100)
    # The delay is waited out here: all 100 faulted requests must be in it at once (shared,
    # not one after another), which a counter shows without timing anything.
    waiting, release = 0, asyncio.Event()
    all_waiting = asyncio.Event()

    async def held(seconds: float) -> None:
        nonlocal waiting
        assert seconds == 30.0
        waiting += 1
        if waiting == 100:
            all_waiting.set()
        await release.wait()

    sim.sleep = held
    calls = asyncio.gather(*(http.get(api("sim/echo"), headers=bearer(token)) for _ in range(250)))
    async with asyncio.timeout(30):  # a bound on waiting: delays taken one at a time fail
        await all_waiting.wait()
    release.set()
    responses = await calls

    statuses = [response.status for response in responses]
    assert (statuses.count(503), statuses.count(200)) == (100, 150)
    assert waiting == 100


async def test_status_200_fault_only_delays_the_real_answer(
    http: Client, sim: GenesysSimulator
) -> None:
    sim.inject_login_fault(status=200, delay=0.1)
    started = time.monotonic()

    response = await request_token(http)

    assert response.status == 200
    assert "access_token" in await response.json()
    assert time.monotonic() - started >= 0.1


async def test_status_200_fault_with_a_body_is_a_malformed_answer(
    http: Client, sim: GenesysSimulator
) -> None:
    sim.inject_login_fault(status=200, body=b"<html>login</html>", content_type="text/html")

    response = await request_token(http)

    assert response.status == 200
    assert await response.read() == b"<html>login</html>"
    assert sim.tokens_issued() == 0


async def test_clear_faults_drops_pending_faults(http: Client, sim: GenesysSimulator) -> None:
    sim.inject_login_fault(count=5)
    sim.inject_api_fault(count=5)

    sim.clear_faults()
    token = await fetch_token(http)

    assert (await http.get(api("organizations/me"), headers=bearer(token))).status == 200


# -- endpoints -------------------------------------------------------------------------------------


async def test_users_page_through_a_deterministic_listing(http: Client) -> None:
    token = await fetch_token(http)

    page = await (
        await http.get(api("users?pageSize=3&pageNumber=3"), headers=bearer(token))
    ).json()
    user_id = page["entities"][0]["id"]
    user = await http.get(api(f"users/{user_id}"), headers=bearer(token))
    missing = await http.get(api("users/nobody"), headers=bearer(token))
    bad = await http.get(api("users?pageSize=zero"), headers=bearer(token))

    assert (page["pageNumber"], page["pageCount"], page["total"]) == (3, 3, 7)
    assert len(page["entities"]) == 1
    assert page["lastUri"] == "/api/v2/users?pageSize=3&pageNumber=3"
    assert (await user.json())["id"] == user_id
    assert missing.status == 404
    assert bad.status == 400


async def test_echo_reports_what_arrived_including_the_body_hash(http: Client) -> None:
    token = await fetch_token(http)
    body = bytes(range(256)) * 12_289  # a little over 3 MiB: beyond aiohttp's default limit

    response = await http.post(
        f"/api/{DOMAIN_A}/api/v2/sim/echo/a%2Fb?x=1&y=%20",
        data=io.BytesIO(body),
        headers={**bearer(token), "X-Custom": "kept"},
    )

    echo = await response.json()
    assert echo["method"] == "POST"
    assert echo["path"] == "/api/v2/sim/echo/a%2Fb"
    assert echo["query_string"] == "x=1&y=%20"
    assert ["X-Custom", "kept"] in echo["headers"]
    assert echo["body_length"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert echo["client_id"] == "client-a"


async def test_blob_streams_exactly_the_requested_bytes(http: Client) -> None:
    token = await fetch_token(http)
    size = 3 * 64 * 1024 + 123

    response = await http.get(api(f"sim/blob?bytes={size}"), headers=bearer(token))

    assert response.headers["Content-Length"] == str(size)
    assert response.content_type == "application/octet-stream"
    assert await response.read() == blob_content(size)


async def test_gzip_blob_keeps_its_content_encoding(
    aiohttp_client: ClientFactory, sim: GenesysSimulator
) -> None:
    http = await aiohttp_client(sim.app, auto_decompress=False)
    token = await fetch_token(http)

    response = await http.get(api("sim/blob?bytes=200000&gzip=1"), headers=bearer(token))

    raw = await response.read()
    assert response.headers["Content-Encoding"] == "gzip"
    assert response.headers["Content-Length"] == str(len(raw))
    assert len(raw) < 200_000
    assert gzip.decompress(raw) == blob_content(200_000)


async def test_status_endpoint_answers_the_requested_status(http: Client) -> None:
    token = await fetch_token(http)

    limited = await http.put(api("sim/status/429"), headers=bearer(token))
    failed = await http.get(api("sim/status/500"), headers=bearer(token))

    assert limited.status == 429
    assert limited.headers["Retry-After"] == "1"
    assert (await limited.json())["code"] == "too.many.requests"
    assert failed.status == 500


async def test_slow_endpoint_answers_after_the_requested_time(http: Client) -> None:
    token = await fetch_token(http)
    started = time.monotonic()

    response = await http.get(api("sim/slow?seconds=0.1"), headers=bearer(token))

    assert response.status == 200
    assert time.monotonic() - started >= 0.1


async def test_unknown_endpoint_is_not_found(http: Client) -> None:
    token = await fetch_token(http)

    response = await http.delete(api("organizations/me"), headers=bearer(token))

    assert response.status == 404
    assert (await response.json())["code"] == "not.found"


# -- bookkeeping -----------------------------------------------------------------------------------


async def test_counters_and_seen_requests_record_every_api_request(
    http: Client, sim: GenesysSimulator
) -> None:
    token = await fetch_token(http)
    await http.post(api("sim/echo?q=1"), data=b"hello", headers=bearer(token))
    await http.get(api("organizations/me"))
    await http.get(api("sim/status/401"), headers=bearer(token))

    assert sim.api_requests() == 3
    assert sim.api_requests("client-a") == 2
    assert sim.api_401s() == 2
    first = sim.requests[0]
    assert (first.method, first.domain, first.path, first.query_string) == (
        "POST",
        DOMAIN_A,
        "/api/v2/sim/echo",
        "q=1",
    )
    assert (first.body_length, first.client_id, first.status) == (5, "client-a", 200)
    assert first.body_sha256 == hashlib.sha256(b"hello").hexdigest()
    assert first.header("authorization") == f"Bearer {token}"
    assert token not in repr(first)
    assert sim.requests[1].client_id is None

    sim.reset_counters()

    assert (sim.api_requests(), sim.api_401s(), sim.token_requests(), len(sim.requests)) == (
        0,
        0,
        0,
        0,
    )
    assert sim.issued_tokens() == [token]


async def test_simulator_never_logs_tokens_or_secrets(
    http: Client, sim: GenesysSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sim.inject_login_fault(status=200)
    token = await fetch_token(http)
    sim.inject_api_fault(status=503)
    await http.get(api("organizations/me"), headers=bearer(token))
    await request_token(http, secret="wrong-secret")

    assert token not in caplog.text
    assert "secret-a" not in caplog.text
    assert "wrong-secret" not in caplog.text


async def test_running_serves_the_url_templates_on_a_free_port(sim: GenesysSimulator) -> None:
    async with sim.running() as running, aiohttp.ClientSession() as session:
        login_url = running.login_url_template.format(domain=DOMAIN_A)
        api_url = running.api_url_template.format(domain=DOMAIN_A)
        assert login_url.startswith(running.base_url)
        token_response = await session.post(
            f"{login_url}/oauth/token",
            data={"grant_type": "client_credentials"},
            headers=basic("client-a", "secret-a"),
        )
        token = (await token_response.json())["access_token"]
        org = await session.get(f"{api_url}/api/v2/organizations/me", headers=bearer(token))
        assert (await org.json())["name"] == "Acme Ireland"

    with pytest.raises(RuntimeError):
        _ = sim.base_url


def test_fault_with_zero_count_is_refused(sim: GenesysSimulator) -> None:
    with pytest.raises(ValueError, match="count"):
        sim.inject_api_fault(count=0)


def test_command_line_rejects_a_malformed_client(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--client", "only-an-id"])

    assert exited.value.code == 2
    assert "ID:SECRET:DOMAIN" in capsys.readouterr().err
