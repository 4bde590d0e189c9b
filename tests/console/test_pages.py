"""Each console page renders from seeded data: the overview's revenue figures match the report's
hand-computed fixture, customers are searched and paged, a customer's page shows their whole
billing picture, events, catalog and deliveries list what is stored; bad input is a 4xx page."""

from __future__ import annotations

import re

import asyncpg
import pytest

from billing_service.config import Settings
from billing_service.db import catalog_drift
from billing_service.services.api_keys import Scope
from tests.conftest import issue_key
from tests.console.support import (
    CLIENT_SECRET,
    CUSTOMER,
    CUSTOMER_EMAIL,
    FAILED_EVENT,
    STRIPE_CUSTOMER,
    TRACKED,
    console_client,
    seed,
    signed_in,
)
from tests.routes import test_reports


def figure(html: str, name: str) -> str:
    found = re.search(rf'data-figure="{re.escape(name)}">([^<]*)<', html)
    assert found is not None, f"no figure {name}"
    return found[1]


def customer_links(html: str) -> list[str]:
    return re.findall(r'href="/console/customers/([^"]+)"', html)


async def test_the_overview_shows_the_hand_computed_revenue_figures(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    """The revenue report's fixture (monthly and yearly prices, a trial, a past-due and two
    canceled subscriptions, two currencies) shows as MRR, ARR, counts and one-time revenue
    worked out by hand, with the weekly charts drawn as inline SVG."""
    await test_reports.seed(pool)
    key = await issue_key(pool, Scope.ADMIN)
    async with console_client(settings, clock=lambda: test_reports.NOW) as client:
        await signed_in(client, key)
        page = await client.get("/console")
    assert page.status_code == 200, page.text
    html = page.text
    # usd: 2000 x 12 + 24000 x 2 = 72000 a year, 6000 a month; eur: 39600 and 3300.
    assert figure(html, "mrr-usd") == "60.00 USD"
    assert figure(html, "arr-usd") == "720.00 USD"
    assert figure(html, "mrr-eur") == "33.00 EUR"
    assert figure(html, "arr-eur") == "396.00 EUR"
    assert "57.00 USD" in html
    assert "12.00 EUR" in html
    counts = {s: figure(html, s) for s in ("active", "trialing", "past_due", "canceled")}
    assert counts == {"active": "3", "trialing": "1", "past_due": "1", "canceled": "2"}
    assert figure(html, "failed-events") == "0"
    assert html.count('<svg class="chart"') == 3  # new/churned, net EUR, net USD
    assert "W05: new 2" in html  # two subscriptions started in 2027-W05
    assert "W07: net EUR -3.00 EUR" in html  # 12.00 one-time - 15.00 churned MRR


async def test_an_empty_service_has_a_working_empty_overview(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    """No subscription, order or event: the overview still renders, with zeros and empty
    charts."""
    key = await issue_key(pool, Scope.ADMIN)
    async with console_client(settings) as client:
        await signed_in(client, key)
        page = await client.get("/console")
    assert page.status_code == 200, page.text
    assert figure(page.text, "mrr") == "none yet"
    assert figure(page.text, "active") == "0"
    assert figure(page.text, "backlog") == "0"
    assert "no data yet" not in page.text  # 12 empty weeks are still 12 labelled weeks
    assert page.text.count('<svg class="chart"') == 1


async def test_customers_are_searched_by_id_or_email_prefix_and_paged(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    """Search by the start of the external id or (ignoring case) of the email; a page holds 50
    customers and links to the next one."""
    async with console_client(settings) as client:
        seeded = await seed(client, pool)
        await pool.executemany(
            "INSERT INTO customers (external_id, email) VALUES ($1, $2)",
            [(f"bulk_{n:03}", f"bulk{n}@example.com") for n in range(60)],
        )
        await signed_in(client, seeded.admin_key)
        by_id = await client.get("/console/customers", params={"q": "ada_"})
        by_email = await client.get("/console/customers", params={"q": "ADA@CONSOLE"})
        none = await client.get("/console/customers", params={"q": "nobody"})
        first = await client.get("/console/customers")
        cursor = re.search(r'href="/console/customers\?q=&amp;cursor=([^"]+)"', first.text)
        assert cursor is not None
        second = await client.get("/console/customers", params={"cursor": cursor[1]})
    assert f">{CUSTOMER}</a>" in by_id.text
    assert "bulk_" not in by_id.text
    assert "Pro" in by_id.text
    assert ">active<" in by_id.text
    assert f">{CUSTOMER}</a>" in by_email.text
    assert "No customer matches “nobody”." in none.text
    assert len(customer_links(first.text)) == 50
    assert len(customer_links(second.text)) == 11  # 61 customers in all
    assert not set(customer_links(first.text)) & set(customer_links(second.text))


async def test_a_customer_page_shows_their_whole_billing_picture(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    """Plan and subscription with Stripe dashboard links (test mode), entitlements with
    used/limit bars and credits, a usage chart, the order, the credit grant, the notification
    and the Stripe event about them."""
    async with console_client(settings) as client:
        seeded = await seed(client, pool)
        await signed_in(client, seeded.admin_key)
        page = await client.get(f"/console/customers/{CUSTOMER}")
    assert page.status_code == 200, page.text
    html = page.text
    assert 'data-plan="pro"' in html
    assert ">Pro<" in html
    assert 'id="subscription-status">active<' in html
    assert f"https://dashboard.stripe.com/test/customers/{STRIPE_CUSTOMER}" in html
    assert "https://dashboard.stripe.com/test/subscriptions/sub_console_ada" in html
    assert CUSTOMER_EMAIL in html
    assert f'max="500" high="100" value="{TRACKED}"' in html  # Pro: 500 a month, warn at 100
    assert f"{TRACKED} of 500" in html
    ai_calls = re.search(r'<tr data-feature="ai_calls">(.*?)</tr>', html, re.S)
    assert ai_calls is not None
    assert "<td>50</td>" in ai_calls[1]
    assert "ai_calls: units used per month" in html
    assert f"used {TRACKED}</title>" in html
    assert "10.00 USD" in html  # the order
    assert "welcome gift" in html
    assert "subscription.updated" in html
    assert "0 delivered, 0 pending, 1 failed" in html
    assert f'href="/console/events/{FAILED_EVENT}"' in html


async def test_the_events_page_filters_and_an_event_shows_its_payload_masked(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    """The ledger lists the failed event, a status filter leaves it out, and its page shows
    the payload with the client secret masked wherever it occurs."""
    async with console_client(settings) as client:
        seeded = await seed(client, pool)
        await signed_in(client, seeded.admin_key)
        listed = await client.get("/console/events")
        failed = await client.get("/console/events", params={"status": "failed"})
        processed = await client.get("/console/events", params={"status": "processed"})
        by_type = await client.get("/console/events", params={"type": "invoice.paid"})
        detail = await client.get(f"/console/events/{FAILED_EVENT}")
    assert FAILED_EVENT in listed.text
    assert FAILED_EVENT in failed.text
    assert "handler raised: boom" in failed.text
    assert FAILED_EVENT not in processed.text
    assert FAILED_EVENT not in by_type.text
    assert detail.status_code == 200
    assert CLIENT_SECRET not in detail.text
    assert '"client_secret": "[REDACTED]"' in detail.text
    assert "paid with [REDACTED]" in detail.text
    assert STRIPE_CUSTOMER in detail.text  # the rest of the payload is shown


async def test_the_catalog_page_shows_plans_prices_limits_and_drift(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    """Plans with prices and limits as stored; drift recorded from Stripe and work still
    waiting for Stripe are listed."""
    async with console_client(settings) as client:
        seeded = await seed(client, pool)
        await catalog_drift.insert_drift(
            pool, stripe_object_id="price_drifted", object_type="price",
            event_type="price.updated", description="price pro_monthly: amount changed in Stripe",
        )  # fmt: skip
        await signed_in(client, seeded.admin_key)
        page = await client.get("/console/catalog")
    html = page.text
    assert page.status_code == 200
    for plan in ("free", "pro", "credits"):
        assert f'data-plan="{plan}"' in html
    assert "19.00 USD" in html
    assert "190.00 USD" in html
    assert "500 (warn at 100)" in html
    assert "price pro_monthly: amount changed in Stripe" in html
    assert "Waiting to be sent to Stripe" in html  # no Stripe key: nothing synced yet


async def test_the_deliveries_page_lists_endpoints_and_their_deliveries(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    """The endpoint, its delivery log with the failure, and a redeliver button per delivery."""
    async with console_client(settings) as client:
        seeded = await seed(client, pool)
        await signed_in(client, seeded.admin_key)
        page = await client.get("/console/deliveries")
        chosen = await client.get("/console/deliveries", params={"endpoint": seeded.endpoint_id})
    assert "https://hooks.console.example/billing" in page.text
    assert "HTTP 500" in page.text
    assert ">failed<" in page.text
    assert page.text.count("/redeliver") == 1
    assert chosen.text.count("/redeliver") == 1


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/console/customers?cursor=not-a-cursor", 422),
        ("/console/customers?q=%00", 400),
        ("/console/customers?q=%E2%80%8B%0A", 422),
        ("/console/events?status=lost", 422),
        ("/console/events?type=Not%20A%20Type", 422),
        ("/console/customers/nobody_here", 404),
        ("/console/customers/bad%20id", 404),
        ("/console/events/evt_unknown", 404),
        ("/console/events/not-an-event", 404),
        ("/console/deliveries?endpoint=zzz", 404),
        ("/console/static/secrets.txt", 404),
    ],
)
async def test_bad_input_is_a_4xx_page_never_a_500(
    settings: Settings, pool: asyncpg.Pool, path: str, status: int
) -> None:
    """Malformed cursors, filters and ids, and unknown objects, answer 4xx."""
    key = await issue_key(pool, Scope.ADMIN)
    async with console_client(settings) as client:
        await signed_in(client, key)
        response = await client.get(path)
    assert response.status_code == status, response.text


async def test_the_stylesheet_and_script_are_served_from_the_package(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    """No CDN: the CSS and the small script come from the service itself."""
    async with console_client(settings) as client:
        css = await client.get("/console/static/console.css")
        js = await client.get("/console/static/console.js")
        page = await client.get("/console/sign-in")
    assert css.status_code == 200
    assert css.headers["content-type"].startswith("text/css")
    assert "svg.chart" in css.text
    assert js.status_code == 200
    assert "replay-failed" in js.text
    assert "http" not in re.sub(r'xmlns="http://www.w3.org/2000/svg"', "", page.text).replace(
        "http-equiv", ""
    )
