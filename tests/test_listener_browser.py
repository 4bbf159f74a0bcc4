"""A real headless Chromium on the same machine as the proxy: web pages never get a token.

Two attacks, with Debian's chromium driven by Playwright (see tests/test_admin_browser.py):

- DNS rebinding: the browser resolves `attacker.example` to 127.0.0.1 (a host-resolver rule
  plays the attacker's DNS), and the attacker's page, served as
  `http://attacker.example:<proxy port>/`, fetches `/auth/token` same-origin.
- A page on another origin tries `fetch()` (CORS and no-cors) and a `text/plain` form post to
  the proxy at 127.0.0.1, with `tenant.default` set so no tenant header is needed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ProxyHarness
from tests.test_admin_browser import CHROMIUM_ARGS, chromium

pytestmark = pytest.mark.browser

ATTACKER_PAGE = "<!doctype html><title>attacker</title><p>hello</p>"


async def _page(harness: ProxyHarness, tmp_path: Path, playwright: Any, url: str) -> Any:
    context = await playwright.chromium.launch_persistent_context(
        str(tmp_path / "chromium-profile"),
        executable_path=str(chromium()),
        args=[
            *CHROMIUM_ARGS,
            "--host-resolver-rules=MAP attacker.example 127.0.0.1",
            # Chromium's own guard against public pages calling local addresses (a permission
            # prompt, headless: refused) is off: the proxy must hold without it, as in older
            # browsers or once a user clicks "allow".
            "--disable-features=LocalNetworkAccessChecks,BlockInsecurePrivateNetworkRequests,"
            "PrivateNetworkAccessSendPreflights,PrivateNetworkAccessRespectPreflightResults",
        ],
        headless=True,
    )
    context.set_default_timeout(20_000)
    page = await context.new_page()
    # The attacker's server, for this one URL: everything else the page asks goes to the network.
    await page.route(url, lambda route: route.fulfill(body=ATTACKER_PAGE, content_type="text/html"))
    await page.goto(url)
    return context, page


async def test_web_pages_in_a_local_browser_never_obtain_or_spend_a_token(
    harness: ProxyHarness, tmp_path: Path
) -> None:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.fail("the browser test needs Playwright: pip install -e '.[test]'", pytrace=False)
    acme = harness.add_tenant("acme")
    await harness.start({"tenant": {"default": acme.id}})
    port = harness.client.port
    proxy = f"http://127.0.0.1:{port}"

    async with async_playwright() as playwright:
        # 1. DNS rebinding: same-origin for the browser, but the Host names the attacker.
        context, page = await _page(
            harness, tmp_path, playwright, f"http://attacker.example:{port}/"
        )
        try:
            status, text = await page.evaluate(
                """async (tenant) => {
                    const r = await fetch('/auth/token', {headers: {'X-Tenant-ID': tenant}});
                    return [r.status, await r.text()];
                }""",
                acme.id,
            )
            assert status == 403
            assert json.loads(text)["error"] == "bad_host"
            assert "access_token" not in text
        finally:
            await context.close()

        # 2. Another origin (localhost on another port), fetching and posting to 127.0.0.1.
        context, page = await _page(harness, tmp_path, playwright, "http://localhost:9/page")
        try:
            outcome = await page.evaluate(
                """async (proxy) => {
                    const results = {};
                    try {
                        const r = await fetch(proxy + '/auth/token');
                        results.cors = [r.status, await r.text()];
                    } catch (e) { results.cors = 'blocked'; }
                    try {
                        const r = await fetch(proxy + '/auth/token',
                                              {headers: {'X-Tenant-ID': 'x'}});
                        results.preflighted = [r.status, await r.text()];
                    } catch (e) { results.preflighted = 'blocked'; }
                    const r = await fetch(proxy + '/api/v2/sim/echo',
                        {method: 'POST', mode: 'no-cors', body: 'x=1',
                         headers: {'Content-Type': 'text/plain'}});
                    results.no_cors = r.type;
                    return results;
                }""",
                proxy,
            )
            # The CORS fetches fail in the page (the proxy sends no CORS headers) and the
            # no-cors one is opaque: the page learns nothing, and nothing reached Genesys.
            assert outcome == {"cors": "blocked", "preflighted": "blocked", "no_cors": "opaque"}

            await page.set_content(
                f'<form method="POST" enctype="text/plain" action="{proxy}/api/v2/sim/echo">'
                "<input name='{\"a\":\"' value='b\"}'><button>go</button></form>"
            )
            async with page.expect_navigation():
                await page.click("button")
            body = await page.inner_text("body")
            assert json.loads(body)["error"] == "cross_site"
        finally:
            await context.close()

    assert harness.sim.token_requests() == 0
    assert harness.sim.api_requests() == 0
