"""A customer's invoices and the preview of their next one, read from the fake Stripe."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import asyncpg
import httpx

from billing_service.config import Settings
from billing_service.routes._pagination import encode_cursor
from billing_service.services import customers
from billing_service.services.api_keys import Scope
from billing_service.stripe_gateway import StripeGateway
from tests.conftest import app_client, issue_key
from tests.routes.test_checkout import bearer, seeded
from tests.routes.test_customers import subscribed
from tests.routes.test_webhooks import drain, post_event
from tests.stripe_fakes import FakeStripe, stripe_error, stripe_event
from tests.test_openapi import assert_matches_schema

PROBLEM = "urn:billing-service:problem:"


async def customer_with_invoices(
    client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    key: str,
    count: int,
) -> tuple[str, list[str]]:
    """user_1 subscribed to Pro, with `count` invoices a month apart; their ids, newest first."""
    await seeded(client, pool, gateway, key, "user_1")
    await subscribed(client, fake_stripe, key, "pro_monthly")
    (stripe_customer,) = fake_stripe.customers
    now = int(time.time())
    made = [
        fake_stripe.add_issued_invoice(stripe_customer, created=now - n * 30 * 86_400, total=1900)
        for n in range(count)
    ]
    return stripe_customer, [invoice["id"] for invoice in made]


async def age_cache(pool: asyncpg.Pool, seconds: int) -> None:
    await pool.execute(
        "UPDATE invoice_pages SET fetched_at = fetched_at - make_interval(secs => $1)", seconds
    )


async def test_invoices_are_listed_newest_first_a_page_at_a_time(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """Each invoice shows its number, status, total, period, Stripe's page and PDF; pages
    follow Stripe's list through `starting_after`, without repeating or skipping one."""
    stripe_customer, ids = await customer_with_invoices(
        stripe_client, pool, gateway, fake_stripe, billing_key, 3
    )
    url = "/v1/customers/user_1/invoices"
    first = await stripe_client.get(f"{url}?limit=2", headers=bearer(billing_key))
    assert first.status_code == 200, first.text
    body = first.json()
    assert [invoice["id"] for invoice in body["data"]] == ids[:2]
    newest = fake_stripe.invoices[ids[0]]
    assert body["data"][0] == {
        "id": ids[0],
        "number": newest["number"],
        "status": "paid",
        "total": 1900,
        "currency": "usd",
        "period": {"start": _iso(newest["period_start"]), "end": _iso(newest["period_end"])},
        "hosted_invoice_url": f"https://invoice.stripe.com/i/acct_fake/test_{ids[0]}",
        "invoice_pdf": f"https://pay.stripe.com/invoice/acct_fake/test_{ids[0]}/pdf",
        "created": _iso(newest["created"]),
    }
    assert body["has_more"] is True
    for invoice in body["data"]:
        assert_matches_schema(invoice, "Invoice")
    second = await stripe_client.get(
        f"{url}?limit=2&cursor={body['next_cursor']}", headers=bearer(billing_key)
    )
    assert [invoice["id"] for invoice in second.json()["data"]] == ids[2:]
    assert second.json()["has_more"] is False
    assert second.json()["next_cursor"] is None
    sent = [call.form for call in fake_stripe.calls_to("GET", "/v1/invoices")]
    assert sent == [
        {"customer": stripe_customer, "limit": "2"},
        {"customer": stripe_customer, "limit": "2", "starting_after": ids[1]},
    ]


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


async def test_a_limit_above_stripes_page_size_gets_stripes_largest_page(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """Stripe lists at most 100 a call: `limit=1000` asks for 100, and the page says so."""
    await customer_with_invoices(stripe_client, pool, gateway, fake_stripe, billing_key, 1)
    response = await stripe_client.get(
        "/v1/customers/user_1/invoices?limit=1000", headers=bearer(billing_key)
    )
    assert response.status_code == 200
    assert len(response.json()["data"]) == 1
    assert fake_stripe.calls_to("GET", "/v1/invoices")[0].form["limit"] == "100"


async def test_customers_without_a_stripe_customer_have_no_invoices(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """A customer who never checked out has an empty list (Stripe is not asked); an unknown
    customer is a 404 for both routes."""
    await seeded(stripe_client, pool, gateway, billing_key, "user_1")
    listed = await stripe_client.get("/v1/customers/user_1/invoices", headers=bearer(billing_key))
    assert listed.json() == {"data": [], "has_more": False, "next_cursor": None}
    assert fake_stripe.calls_to("GET", "/v1/invoices") == []
    for path in ("invoices", "upcoming-invoice"):
        missing = await stripe_client.get(
            f"/v1/customers/ghost/{path}", headers=bearer(billing_key)
        )
        assert missing.status_code == 404
        assert missing.json()["type"] == f"{PROBLEM}not-found"


async def test_a_fresh_page_is_answered_from_the_cache_and_a_stale_one_asks_stripe(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """Within BILLING_INVOICE_CACHE_SECONDS (60) the page read from Stripe is answered again,
    with its `Age`; after that Stripe is asked again and sees a new invoice."""
    stripe_customer, _ids = await customer_with_invoices(
        stripe_client, pool, gateway, fake_stripe, billing_key, 1
    )
    url = "/v1/customers/user_1/invoices"
    fetched = await stripe_client.get(url, headers=bearer(billing_key))
    assert "age" not in fetched.headers
    again = await stripe_client.get(url, headers=bearer(billing_key))
    assert again.json() == fetched.json()
    assert int(again.headers["age"]) >= 0
    assert len(fake_stripe.calls_to("GET", "/v1/invoices")) == 1
    newer = fake_stripe.add_issued_invoice(stripe_customer, created=int(time.time()) + 5, total=1)
    await age_cache(pool, 61)
    refreshed = await stripe_client.get(url, headers=bearer(billing_key))
    assert refreshed.json()["data"][0]["id"] == newer["id"]
    assert "age" not in refreshed.headers
    assert len(fake_stripe.calls_to("GET", "/v1/invoices")) == 2


async def test_during_a_stripe_outage_a_cached_page_answers_and_an_uncached_one_is_503(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """A page read in the last day answers, with its age, while Stripe fails; a page never
    read is a 503 `stripe-unavailable` problem with Retry-After."""
    await customer_with_invoices(stripe_client, pool, gateway, fake_stripe, billing_key, 2)
    url = "/v1/customers/user_1/invoices"
    fetched = await stripe_client.get(url, headers=bearer(billing_key))
    await age_cache(pool, 3600)
    fake_stripe.failures["/v1/invoices"] = stripe_error(503, "api_error")
    stale = await stripe_client.get(url, headers=bearer(billing_key))
    assert stale.status_code == 200
    assert stale.json() == fetched.json()
    assert int(stale.headers["age"]) >= 3600
    never_read = await stripe_client.get(f"{url}?limit=1", headers=bearer(billing_key))
    assert never_read.status_code == 503
    assert never_read.headers["content-type"] == "application/problem+json"
    assert never_read.json()["type"] == f"{PROBLEM}stripe-unavailable"
    assert int(never_read.headers["retry-after"]) > 0
    await age_cache(pool, 86_400)
    too_old = await stripe_client.get(url, headers=bearer(billing_key))
    assert too_old.status_code == 503


async def test_replicas_share_the_cache_and_concurrent_reads_keep_one_page(
    stripe_settings: Settings,
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """Two app instances read the same page at once, many times: every read succeeds and one
    row holds the page; while Stripe is down, either answers from what the other fetched."""
    await customer_with_invoices(stripe_client, pool, gateway, fake_stripe, billing_key, 2)
    url = "/v1/customers/user_1/invoices"
    async with app_client(stripe_settings) as other:
        reads = await asyncio.gather(
            *(c.get(url, headers=bearer(billing_key)) for c in [stripe_client, other] * 5)
        )
        assert {r.status_code for r in reads} == {200}
        assert await pool.fetchval("SELECT count(*) FROM invoice_pages") == 1
        fake_stripe.failures["/v1/invoices"] = httpx.ConnectError("Stripe is down")
        await age_cache(pool, 600)
        for replica in (other, stripe_client):
            answer = await replica.get(url, headers=bearer(billing_key))
            assert answer.status_code == 200
            assert answer.json() == reads[0].json()


async def test_only_stripe_hosted_links_are_passed_on(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """An invoice link that is not a Stripe-hosted page (a tampered or unexpected URL) is
    shown as null, never passed on to apps and their customers."""
    _customer, ids = await customer_with_invoices(
        stripe_client, pool, gateway, fake_stripe, billing_key, 1
    )
    fake_stripe.invoices[ids[0]].update(
        hosted_invoice_url="https://invoice.stripe.com.evil.example/i/x",
        invoice_pdf="http://pay.stripe.com/invoice/x/pdf",
    )
    listed = await stripe_client.get("/v1/customers/user_1/invoices", headers=bearer(billing_key))
    (invoice,) = listed.json()["data"]
    assert invoice["hosted_invoice_url"] is None
    assert invoice["invoice_pdf"] is None


async def test_a_cursor_this_list_did_not_return_is_422(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """A malformed cursor, one of another list, and one naming no invoice Stripe has are each a
    422 naming `cursor`; none is a 500 or a 502."""
    await customer_with_invoices(stripe_client, pool, gateway, fake_stripe, billing_key, 1)
    for cursor in (
        "%%%",
        encode_cursor("2026-01-01T00:00:00+00:00", "x"),
        encode_cursor("in_nope"),
    ):
        response = await stripe_client.get(
            f"/v1/customers/user_1/invoices?cursor={cursor}", headers=bearer(billing_key)
        )
        assert response.status_code == 422, (cursor, response.text)
        assert [e["field"] for e in response.json()["errors"]] == ["cursor"]


async def test_invoice_routes_need_the_billing_scope(
    stripe_client: httpx.AsyncClient, pool: asyncpg.Pool, billing_key: str
) -> None:
    """A usage-only key may not read invoices: 403, like the other customer billing reads."""
    usage_key = await issue_key(pool, Scope.USAGE)
    await stripe_client.put(
        "/v1/customers/user_1", headers=bearer(billing_key), json={"email": "a@example.com"}
    )
    for path in ("invoices", "upcoming-invoice"):
        response = await stripe_client.get(
            f"/v1/customers/user_1/{path}", headers=bearer(usage_key)
        )
        assert response.status_code == 403


async def test_upcoming_invoice_previews_plan_and_metered_usage_with_tax(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """The preview Stripe makes for the plan's subscription: the plan line (by lookup key, billed
    ahead) and the metered line (usage so far, in arrears), with subtotal, tax and total."""
    await seeded(stripe_client, pool, gateway, billing_key, "user_1")
    await subscribed(stripe_client, fake_stripe, billing_key, "pro_monthly")
    (stripe_customer,) = fake_stripe.customers
    (subscription,) = fake_stripe.subscriptions.values()
    # Checkout asked Stripe for Pro's metered price (2 cents a unit), so the subscription has it.
    metered_price = await pool.fetchval(
        "SELECT mp.stripe_price_id FROM metered_prices mp JOIN plans p ON p.id = mp.plan_id "
        "WHERE p.key = 'pro' AND mp.recurring_interval = 'month' AND mp.active"
    )
    metered_item = next(
        i for i in subscription["items"]["data"] if i["price"]["id"] == metered_price
    )
    customer = await customers.get_customer(pool, "user_1")
    await customers.sync_subscriptions_from_stripe(pool, gateway, customer)
    fake_stripe.meter_events.append(  # what the meter summed this period: 150 AI calls
        {
            "identifier": "usage_invoice_test",
            "event_name": "ai_calls",
            "payload": {"stripe_customer_id": stripe_customer, "value": "150"},
            "timestamp": metered_item["current_period_start"] + 60,
        }
    )
    fake_stripe.preview_tax_percent = 10
    response = await stripe_client.get(
        "/v1/customers/user_1/upcoming-invoice", headers=bearer(billing_key)
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert_matches_schema(body, "UpcomingInvoice")
    plan_line, usage_line = body["lines"]
    plan_price = fake_stripe.prices[subscription["items"]["data"][0]["price"]["id"]]
    assert plan_line["price"] == "pro_monthly"
    assert plan_line["metered"] is False
    assert plan_line["quantity"] == 1
    assert plan_line["amount"] == plan_price["unit_amount"]
    assert usage_line["price"] == "pro:ai_calls:overage:month"
    assert usage_line["metered"] is True
    assert usage_line["quantity"] == 150
    assert usage_line["amount"] == 300
    period = metered_item["current_period_start"], metered_item["current_period_end"]
    assert usage_line["period"] == {"start": _iso(period[0]), "end": _iso(period[1])}
    subtotal = plan_price["unit_amount"] + 300
    assert body["subtotal"] == subtotal
    assert body["tax"] == subtotal // 10
    assert body["total"] == subtotal + subtotal // 10
    assert body["currency"] == "usd"
    assert body["stripe_subscription_id"] == subscription["id"]
    assert body["more_lines"] is False
    (sent,) = fake_stripe.calls_to("POST", "/v1/invoices/create_preview")
    assert sent.form == {"customer": stripe_customer, "subscription": subscription["id"]}


async def test_no_upcoming_invoice_without_a_subscription_that_renews(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """404 problems: a customer who never subscribed (Stripe is not asked), and one whose
    subscription ends with its period (Stripe says no invoice will come)."""
    await seeded(stripe_client, pool, gateway, billing_key, "user_1")
    url = "/v1/customers/user_1/upcoming-invoice"
    never = await stripe_client.get(url, headers=bearer(billing_key))
    assert never.status_code == 404
    assert fake_stripe.calls_to("POST", "/v1/invoices/create_preview") == []
    await subscribed(stripe_client, fake_stripe, billing_key, "pro_monthly")
    cancel = await stripe_client.post(
        "/v1/customers/user_1/subscription/cancel",
        headers=bearer(billing_key),
        json={"at_period_end": True},
    )
    assert cancel.status_code == 200
    ending = await stripe_client.get(url, headers=bearer(billing_key))
    assert ending.status_code == 404
    assert ending.json()["type"] == f"{PROBLEM}not-found"
    assert "ends with its current period" in ending.json()["detail"]


async def test_upcoming_invoice_during_a_stripe_outage_is_503(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """Previews are not cached (they move with usage): Stripe failing is a 503 problem."""
    await seeded(stripe_client, pool, gateway, billing_key, "user_1")
    await subscribed(stripe_client, fake_stripe, billing_key, "pro_monthly")
    fake_stripe.failures["/v1/invoices/create_preview"] = stripe_error(500, "api_error")
    response = await stripe_client.get(
        "/v1/customers/user_1/upcoming-invoice", headers=bearer(billing_key)
    )
    assert response.status_code == 503
    assert response.json()["type"] == f"{PROBLEM}stripe-unavailable"


async def test_invoice_events_drop_the_cached_pages_at_once(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """A signed invoice.finalized (no other effect) or invoice.paid (which also syncs the
    subscription) makes the next read ask Stripe, well within the cache's 60 seconds."""
    stripe_customer, _ids = await customer_with_invoices(
        stripe_client, pool, gateway, fake_stripe, billing_key, 1
    )
    url = "/v1/customers/user_1/invoices"
    await stripe_client.get(url, headers=bearer(billing_key))
    for n, event_type in enumerate(["invoice.finalized", "invoice.paid"], start=1):
        issued = fake_stripe.add_issued_invoice(
            stripe_customer, created=int(time.time()) + n, total=n, status="open"
        )
        posted = await post_event(stripe_client, stripe_event(event_type, issued))
        assert posted.status_code == 200
        assert await drain(pool, gateway) == 1
        assert await pool.fetchval("SELECT count(*) FROM invoice_pages") == 0
        listed = await stripe_client.get(url, headers=bearer(billing_key))
        assert listed.json()["data"][0]["id"] == issued["id"]
        assert "age" not in listed.headers
        assert len(fake_stripe.calls_to("GET", "/v1/invoices")) == n + 1
