"""The admin page in a real headless Chromium (Debian's `chromium`), driven by Playwright.

`.ci/run` installs the browser; Playwright is only the driver (its own browser downloads are
never used). The screenshot lands in `test-artifacts/admin-page.png`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from proxy.ops.admin import create_admin_app
from tests.conftest import ProxyHarness

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
# What headless Chromium needs in this sandbox, and nothing that phones home.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ADMIN_TOKEN = "fake-admin-token-browser-test-31c6"


def chromium() -> Path:
    """The system Chromium, or a failure that says how to get it (never a silent skip)."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"the browser test needs Debian's chromium at {CHROMIUM}: run .ci/run, which "
            "installs it, or `apt-get install chromium`",
            pytrace=False,
        )
    return CHROMIUM


async def test_admin_page_in_headless_chromium(
    harness: ProxyHarness, aiohttp_client: Any, tmp_path: Path
) -> None:
    executable = chromium()
    try:
        from playwright.async_api import async_playwright, expect
    except ImportError:
        pytest.fail("the browser test needs Playwright: pip install -e '.[test]'", pytrace=False)

    token_file = tmp_path / "admin-token"
    token_file.write_text(ADMIN_TOKEN, encoding="utf-8")
    good = harness.add_tenant("good")
    bad = harness.add_tenant("bad", region="eu-west-1", vault_secret="fake-wrong-secret-2024")
    await harness.start({"admin": {"token_file": str(token_file)}})
    for tenant in (good, bad, good):
        await harness.client.get("/api/v2/users", headers={"X-Tenant-ID": tenant.id})
    # The page's own reload timer would race the clicks: off for this test.
    admin = await aiohttp_client(create_admin_app(harness.app, page_refresh=0))
    url = str(admin.make_url("/admin"))
    ARTIFACTS.mkdir(exist_ok=True)
    profile = tmp_path / "chromium-profile"

    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(executable),
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1400, "height": 700},
        )
        try:
            context.set_default_timeout(20_000)
            page = await context.new_page()

            # Without the admin token: refused, and nothing about the tenants shown.
            response = await page.goto(url)
            assert response is not None
            assert response.status == 401
            await expect(page.get_by_text("Admin token required")).to_be_visible()
            assert await page.locator("tr[data-tenant]").count() == 0

            await page.fill("input[name=token]", ADMIN_TOKEN)
            async with page.expect_navigation():
                await page.click("button[type=submit]")
            good_row = page.locator(f'tr[data-tenant="{good.id}"]')
            bad_row = page.locator(f'tr[data-tenant="{bad.id}"]')
            await expect(good_row.locator(".state")).to_have_text("valid")
            await expect(bad_row.locator(".state")).to_have_text("failing")
            await expect(bad_row).to_contain_text("genesys_auth_failed")
            await expect(good_row).to_contain_text("****" + good.client_secret[-4:])

            issued = harness.sim.tokens_issued(good.client_id)
            async with page.expect_navigation():
                await good_row.get_by_role("button", name="Refresh").click()
            await expect(page.get_by_role("status")).to_contain_text("Fetched a new token")
            assert harness.sim.tokens_issued(good.client_id) == issued + 1
            shot = ARTIFACTS / "admin-page.png"
            await page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 1000

            async with page.expect_navigation():
                await bad_row.get_by_role("button", name="Evict").click()
            await expect(page.get_by_role("status")).to_contain_text("Evicted")
            await expect(bad_row).to_have_count(0)
            await expect(good_row).to_have_count(1)
            assert harness.tokens.state(bad.id) is None

            await page.screenshot(path=str(ARTIFACTS / "admin-page-after-evict.png"))
            html = await page.content()
            assert good.client_secret not in html
        finally:
            await context.close()
