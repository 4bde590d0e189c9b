"""The console in a real browser: Playwright drives Debian's Chromium against a live
`billing-service serve` with seeded customers, subscriptions, usage and a failed event.

With `BILLING_CONSOLE_SCREENSHOTS=1` (`make console-screenshots`) the test also writes the
screenshots docs/console.md shows: the overview and a customer's page.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from tests.clients.test_browser import system_chromium
from tests.console.support import CUSTOMER, FAILED_EVENT, Seeded, seed
from tests.live_service import LiveService, live_service

IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
SCREENSHOTS = os.environ.get("BILLING_CONSOLE_SCREENSHOTS") == "1"


@pytest.fixture(scope="module")
async def service(database_url: str) -> AsyncIterator[LiveService]:
    """The service with the console on and its worker running, so a replayed event is
    processed as in production."""
    async with live_service(
        database_url, BILLING_CONSOLE_ENABLED="true", BILLING_WORKER_ENABLED="true"
    ) as live:
        yield live


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=system_chromium())
        yield browser
        await browser.close()


async def more_revenue(pool: asyncpg.Pool) -> None:
    """Some subscribers who started and left over the last weeks, so the charts have bars."""
    now = datetime.now(UTC)
    async with pool.acquire() as conn, conn.transaction():
        for n in range(14):
            started = now - timedelta(days=6 * n + 2)
            ended = started + timedelta(days=20) if n % 4 == 3 else None
            await conn.execute(
                """
                WITH c AS (INSERT INTO customers (external_id, email) VALUES ($1, $2)
                           RETURNING id)
                INSERT INTO subscriptions (customer_id, stripe_subscription_id, status,
                    stripe_price_id, price_id, quantity, stripe_created_at, canceled_at, ended_at)
                SELECT c.id, 'sub_shot_' || $1, $3, 'price_' || p.lookup_key, p.id, 1, $4, $5, $5
                FROM c, prices p WHERE p.lookup_key = $6
                """,
                f"team_{n:02}", f"team{n}@example.com",
                "canceled" if ended else ("past_due" if n == 5 else "active"),
                started, ended, "pro_yearly" if n % 3 == 0 else "pro_monthly",
            )  # fmt: skip


async def earlier_usage(pool: asyncpg.Pool) -> None:
    """The seeded customer's `ai_calls` counters of the six months before this one."""
    await pool.execute(
        """
        INSERT INTO usage_counters (customer_id, feature_id, period_start, period_end, used)
        SELECT c.id, f.id, m.start, m.start + interval '1 month', 120 + 37 * m.n % 90
        FROM customers c, features f,
             LATERAL (SELECT n, date_trunc('month', now(), 'UTC') - n * interval '1 month'
                      FROM generate_series(1, 6) n) AS m (n, start)
        WHERE c.external_id = $1 AND f.key = 'ai_calls'
        """,
        CUSTOMER,
    )


async def seeded(service: LiveService, pool: asyncpg.Pool) -> Seeded:
    async with httpx.AsyncClient(base_url=service.base) as http:
        data = await seed(http, pool)
    await more_revenue(pool)
    await earlier_usage(pool)
    return data


async def sign_in(page: Page, base: str, key: str) -> None:
    await page.goto(f"{base}/console/sign-in")
    await page.fill("#key", key)
    await page.click("#sign-in button")


async def test_an_operator_finds_a_customer_and_replays_a_failed_event(
    service: LiveService, pool: asyncpg.Pool, browser: Browser
) -> None:
    """Without a cookie the console shows the sign-in page; a usage key cannot sign in; the
    admin key can. The operator searches a customer, opens their page (usage chart and
    entitlement bars), replays the failed event and sees it processed, a forged CSRF token is
    refused, and signing out ends the session."""
    data = await seeded(service, pool)
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())

    await page.goto(f"{service.base}/console/customers")
    await expect(page).to_have_url(f"{service.base}/console/sign-in")
    await expect(page.locator("h1")).to_have_text("Sign in")

    await sign_in(page, service.base, data.usage_key)
    await expect(page.locator(".error")).to_have_text("Only an admin key can sign in.")

    await sign_in(page, service.base, data.admin_key)
    await expect(page).to_have_url(f"{service.base}/console")
    await expect(page.locator('[data-figure="active"]')).to_have_text("11")
    assert await page.locator("svg.chart").count() == 2
    if SCREENSHOTS:
        await page.screenshot(path=IMAGES / "console-overview.png", full_page=True)

    await page.click("nav >> text=Customers")
    await page.fill("#q", "ada")
    await page.click("form.search button")
    await page.click(f"#customers >> text={CUSTOMER}")
    await expect(page.locator("h1")).to_have_text(CUSTOMER)
    await expect(page.locator('#usage svg[aria-label^="ai_calls"]')).to_have_count(1)
    bar = page.locator('tr[data-feature="ai_calls"] meter.usage')
    await expect(bar).to_have_attribute("value", "7")
    await expect(bar).to_have_attribute("max", "500")
    if SCREENSHOTS:
        await page.screenshot(path=IMAGES / "console-customer.png", full_page=True)

    await page.click(f"text={FAILED_EVENT}")
    await expect(page.locator("#event-status")).to_have_text("failed")
    await page.click("#replay")
    for _ in range(50):  # the worker is woken by the replay
        if await page.locator("#event-status").text_content() == "processed":
            break
        await page.wait_for_timeout(200)
        await page.reload()
    await expect(page.locator("#event-status")).to_have_text("processed")

    await page.goto(f"{service.base}/console/events")
    await page.locator('form[action="/console/events/replay-failed"] input[name="csrf"]').evaluate(
        "input => { input.value = 'forged-token-forged-token-forged' }"
    )
    await page.click("text=Replay all failed")
    await expect(page.locator("h1")).to_have_text("Form refused")

    await page.click("text=Sign out")
    await expect(page).to_have_url(f"{service.base}/console/sign-in")
    await page.goto(f"{service.base}/console")
    await expect(page).to_have_url(f"{service.base}/console/sign-in")
    await context.close()


async def test_the_session_cookie_is_httponly_strict_and_expires(
    service: LiveService, pool: asyncpg.Pool, browser: Browser
) -> None:
    """As the browser holds it: not readable by scripts, sent only same-site, with an expiry."""
    data = await seeded(service, pool)
    context = await browser.new_context()
    page = await context.new_page()
    await sign_in(page, service.base, data.admin_key)
    await expect(page).to_have_url(f"{service.base}/console")
    [cookie] = [c for c in await context.cookies() if c["name"] == "billing_console"]
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert cookie["secure"] is True
    assert cookie["expires"] > datetime.now(UTC).timestamp() + 3600
    assert await page.evaluate("document.cookie") == ""
    await context.close()


async def test_pages_fit_a_phone_screen(
    service: LiveService, pool: asyncpg.Pool, browser: Browser
) -> None:
    """At a phone's width (390 px) no page scrolls sideways: wide tables scroll in their own
    box, charts scale down."""
    data = await seeded(service, pool)
    context = await browser.new_context(viewport={"width": 390, "height": 844})
    page = await context.new_page()
    await sign_in(page, service.base, data.admin_key)
    await expect(page).to_have_url(f"{service.base}/console")
    for path in ("/console", "/console/customers", f"/console/customers/{CUSTOMER}",
                 "/console/events", "/console/catalog", "/console/deliveries"):  # fmt: skip
        await page.goto(f"{service.base}{path}")
        overflow = await page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, (path, overflow)
    await context.close()
