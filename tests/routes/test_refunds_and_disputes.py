"""Money that Stripe gives back: a fully refunded credit pack, or one lost to a dispute, takes its
unspent credits back (never below what was spent, the rest recorded); a partial refund takes
nothing; every dispute is announced to apps and the owner."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import httpx
import pytest

from billing_service.config import Settings
from billing_service.services.api_keys import Scope
from billing_service.services.email import render, template_values
from billing_service.stripe_gateway import StripeGateway
from tests.conftest import issue_key
from tests.routes.test_checkout import bearer, checkout_body, seeded
from tests.routes.test_usage import track
from tests.routes.test_webhooks import drain, paid_credit_pack_checkout, post_event
from tests.stripe_fakes import FakeStripe, stripe_event


@pytest.fixture
async def usage_key(pool: asyncpg.Pool) -> str:
    return await issue_key(pool, Scope.USAGE)


async def bought_credit_pack(
    client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    key: str,
    *,
    process: bool = True,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """user_1 pays for 1,000 AI credits (10.00 USD); returns Stripe's charge and the
    checkout.session.completed event (posted and processed unless `process` is False)."""
    await seeded(client, pool, gateway, key, "user_1")
    paid = await paid_credit_pack_checkout(client, fake_stripe, key, "user_1")
    session = paid["data"]["object"]
    charge = fake_stripe.add_charge(
        session["payment_intent"], customer=session["customer"], amount=1000
    )
    if process:
        await post_event(client, paid)
        await drain(pool, gateway)
    return charge, paid


async def credits_left(client: httpx.AsyncClient, usage_key: str) -> int:
    """Unspent purchased AI credits, as the customer's entitlements show them."""
    response = await client.get("/v1/customers/user_1/entitlements", headers=bearer(usage_key))
    [ai_calls] = [f for f in response.json()["features"] if f["feature"] == "ai_calls"]
    credits: int = ai_calls["credits"]
    return credits


async def order_status(pool: asyncpg.Pool) -> str:
    status: str = await pool.fetchval("SELECT status FROM orders")
    return status


async def clawbacks(pool: asyncpg.Pool) -> list[tuple[str, int, int, int]]:
    rows = await pool.fetch(
        "SELECT reason, granted, clawed_back, unrecovered FROM credit_clawbacks"
    )
    return [(r["reason"], r["granted"], r["clawed_back"], r["unrecovered"]) for r in rows]


async def test_a_full_refund_takes_back_the_unspent_credits(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
    usage_key: str,
) -> None:
    """400 of 1,000 credits spent, then a full refund: the 600 left go, the 400 spent are
    recorded as unrecovered, the balance stays at zero (never below), and a redelivery or a
    second refund event takes nothing more."""
    charge, _paid = await bought_credit_pack(stripe_client, pool, gateway, fake_stripe, billing_key)
    assert (await track(stripe_client, usage_key, amount=405)).json()["allowed"]  # 5 + 400
    assert await credits_left(stripe_client, usage_key) == 600

    fake_stripe.refund_charge(charge["id"])
    refunded = stripe_event("charge.refunded", charge)
    for event in (refunded, refunded, stripe_event("charge.refunded", charge)):
        await post_event(stripe_client, event)
        await drain(pool, gateway)

    assert await order_status(pool) == "refunded"
    assert await credits_left(stripe_client, usage_key) == 0
    assert await clawbacks(pool) == [("refund", 1000, 600, 400)]
    balance = await pool.fetchrow("SELECT granted, spent FROM credit_balances")
    assert balance is not None
    assert (balance["granted"], balance["spent"]) == (400, 400)
    assert not (await track(stripe_client, usage_key, amount=1)).json()["allowed"]


async def test_a_partial_refund_keeps_the_credits_until_the_refunds_add_up(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
    usage_key: str,
) -> None:
    """3.00 of 10.00 refunded: the order stays paid with all its credits; refunding the other
    7.00 makes the charge fully refunded, and the credits go then."""
    charge, _paid = await bought_credit_pack(stripe_client, pool, gateway, fake_stripe, billing_key)

    fake_stripe.refund_charge(charge["id"], amount=300)
    await post_event(stripe_client, stripe_event("charge.refunded", charge))
    await drain(pool, gateway)
    assert (await order_status(pool), await credits_left(stripe_client, usage_key)) == (
        "paid",
        1000,
    )

    fake_stripe.refund_charge(charge["id"], amount=700)
    await post_event(stripe_client, stripe_event("charge.refunded", charge))
    await drain(pool, gateway)
    assert (await order_status(pool), await credits_left(stripe_client, usage_key)) == (
        "refunded",
        0,
    )
    assert await clawbacks(pool) == [("refund", 1000, 1000, 0)]


async def test_a_refund_processed_before_its_order_waits_for_the_order(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
    usage_key: str,
) -> None:
    """charge.refunded handled before checkout.session.completed (a dead-lettered checkout
    replayed late) is retried until the order exists, then takes the credits back."""
    charge, paid = await bought_credit_pack(
        stripe_client, pool, gateway, fake_stripe, billing_key, process=False
    )
    fake_stripe.refund_charge(charge["id"])
    refund = stripe_event("charge.refunded", charge)
    await post_event(stripe_client, refund)
    await drain(pool, gateway)
    row = await pool.fetchrow("SELECT status, last_error FROM stripe_events")
    assert row is not None
    assert row["status"] == "pending"
    assert "OrderNotRecordedYet" in row["last_error"]

    await post_event(stripe_client, paid)
    await drain(pool, gateway)
    assert await credits_left(stripe_client, usage_key) == 1000
    await pool.execute("UPDATE stripe_events SET next_attempt_at = now()")  # the backoff passes
    await drain(pool, gateway)

    assert await order_status(pool) == "refunded"
    assert await credits_left(stripe_client, usage_key) == 0


async def test_a_refund_of_a_payment_that_is_not_an_order_changes_nothing(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """A refunded subscription invoice, or another integration's payment, is acknowledged
    without effect (and is not retried)."""
    await seeded(stripe_client, pool, gateway, billing_key, "user_1")
    charge = fake_stripe.add_charge("pi_not_ours", refunded=True)
    await post_event(stripe_client, stripe_event("charge.refunded", charge))
    await drain(pool, gateway)
    assert await pool.fetchval("SELECT status FROM stripe_events") == "processed"
    assert await pool.fetchval("SELECT count(*) FROM credit_clawbacks") == 0


async def test_a_dispute_is_announced_and_a_lost_one_takes_the_credits_back(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
    usage_key: str,
    admin_key: str,
    stripe_settings: Settings,
) -> None:
    """Opened: apps hear dispute.updated, the owner gets an email with the evidence deadline,
    credits stay. Under review: apps hear of it. Lost: the order is charged back, unspent
    credits go (the spent ones recorded), apps and the owner hear the outcome."""
    registered = await stripe_client.post(
        "/v1/webhook-endpoints",
        headers=bearer(admin_key),
        json={"url": "https://app.example.com/hooks", "event_types": ["dispute.updated"]},
    )
    assert registered.status_code == 201, registered.text
    charge, _paid = await bought_credit_pack(stripe_client, pool, gateway, fake_stripe, billing_key)
    await track(stripe_client, usage_key, amount=105)  # 5 + 100 credits
    dispute = fake_stripe.add_dispute(charge["id"])

    for status in ("needs_response", "under_review", "lost"):
        dispute["status"] = status
        event_type = "charge.dispute.closed" if status == "lost" else "charge.dispute.updated"
        forged = dispute | {"status": "won", "amount": 1}  # the payload is never believed
        await post_event(stripe_client, stripe_event(event_type, forged))
        await drain(pool, gateway)
        if status == "needs_response":
            assert await credits_left(stripe_client, usage_key) == 900
            assert await order_status(pool) == "paid"

    announced = await pool.fetch(
        "SELECT o.payload, array_agg(e.template ORDER BY e.template) FILTER "
        "(WHERE e.template IS NOT NULL) AS emails, count(d.id) AS deliveries "
        "FROM outbox_events o LEFT JOIN email_deliveries e ON e.event_id = o.id "
        "LEFT JOIN webhook_deliveries d ON d.event_id = o.id "
        "WHERE o.type = 'dispute.updated' GROUP BY o.id ORDER BY o.created_at"
    )
    assert [(a["payload"]["status"], a["emails"], a["deliveries"]) for a in announced] == [
        ("needs_response", ["owner_dispute_opened"], 1),
        ("under_review", None, 1),
        ("lost", ["owner_dispute_closed"], 1),
    ]
    opened, _review, lost = (a["payload"] for a in announced)
    assert opened["customer_id"] == "user_1"
    assert (opened["amount"], opened["currency"], opened["reason"]) == (1000, "usd", "fraudulent")
    assert opened["evidence_due_by"] is not None
    assert lost["credits_clawed_back"] == [
        {"feature": "ai_calls", "granted": 1000, "clawed_back": 900, "unrecovered": 100}
    ]
    assert await order_status(pool) == "charged_back"
    assert await credits_left(stripe_client, usage_key) == 0
    assert await clawbacks(pool) == [("dispute", 1000, 900, 100)]
    orders = await stripe_client.get("/v1/customers/user_1/orders", headers=bearer(billing_key))
    assert orders.json()["data"][0]["status"] == "charged_back"
    owner_emails = await pool.fetch(
        "SELECT to_address FROM email_deliveries WHERE template LIKE 'owner_dispute_%'"
    )
    assert [row["to_address"] for row in owner_emails] == [None, None]  # the owner's address

    opened_email = render("owner_dispute_opened", template_values(opened, stripe_settings))
    assert opened_email.subject == "Dispute opened: 10.00 USD from user_1"
    assert opened["evidence_due_by"] in opened_email.text
    closed_email = render("owner_dispute_closed", template_values(lost, stripe_settings))
    assert closed_email.subject == "Dispute lost: 10.00 USD from user_1"
    assert "900 of 1000 ai_calls taken back, 100 already spent" in closed_email.text


async def test_a_won_dispute_keeps_the_credits(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
    usage_key: str,
) -> None:
    """A dispute decided for the seller leaves the order paid and every credit in place; the
    outcome is still announced."""
    charge, _paid = await bought_credit_pack(stripe_client, pool, gateway, fake_stripe, billing_key)
    dispute = fake_stripe.add_dispute(charge["id"], status="won")
    await post_event(stripe_client, stripe_event("charge.dispute.closed", dispute))
    await drain(pool, gateway)

    assert await order_status(pool) == "paid"
    assert await credits_left(stripe_client, usage_key) == 1000
    assert await pool.fetchval("SELECT count(*) FROM credit_clawbacks") == 0
    statuses = await pool.fetch(
        "SELECT payload->>'status' AS status FROM outbox_events WHERE type = 'dispute.updated'"
    )
    assert [row["status"] for row in statuses] == ["won"]


async def test_a_refund_racing_many_spends_never_takes_more_than_is_left(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
    usage_key: str,
) -> None:
    """100 concurrent tracks of 10 credits race the refund's clawback: the balance never goes
    negative, what was taken back plus what was spent before it is the whole pack, and no
    credit is spent after it."""
    charge, _paid = await bought_credit_pack(stripe_client, pool, gateway, fake_stripe, billing_key)
    await track(stripe_client, usage_key, amount=5)  # the plan's allowance is used up
    fake_stripe.refund_charge(charge["id"])
    await post_event(stripe_client, stripe_event("charge.refunded", charge))

    tracks = [track(stripe_client, usage_key, amount=10) for _ in range(100)]
    _drained, responses = await asyncio.gather(drain(pool, gateway), asyncio.gather(*tracks))

    assert {r.status_code for r in responses} == {200}
    allowed = sum(10 for r in responses if r.json()["allowed"])
    [(reason, granted, clawed_back, unrecovered)] = await clawbacks(pool)
    assert (reason, granted) == ("refund", 1000)
    assert clawed_back + unrecovered == 1000
    balance = await pool.fetchrow("SELECT granted, spent FROM credit_balances")
    assert balance is not None
    assert balance["spent"] == allowed <= 1000
    assert balance["granted"] == 1000 - clawed_back
    assert balance["granted"] >= balance["spent"]
    assert unrecovered <= balance["spent"]
    assert await credits_left(stripe_client, usage_key) == balance["granted"] - balance["spent"]


async def test_a_dispute_of_a_subscription_payment_is_announced_without_an_order(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """A disputed invoice payment of one of our customers reaches apps and the owner too (with
    no order); a dispute of someone else's payment reaches nobody."""
    await seeded(stripe_client, pool, gateway, billing_key, "user_1")
    await stripe_client.post(
        "/v1/checkout/sessions", headers=bearer(billing_key), json=checkout_body()
    )
    ours = await pool.fetchval("SELECT stripe_customer_id FROM customers")
    for customer in (ours, "cus_someone_else"):
        charge = fake_stripe.add_charge(f"pi_invoice_{customer}", customer=customer)
        dispute = fake_stripe.add_dispute(charge["id"], status="warning_needs_response")
        await post_event(stripe_client, stripe_event("charge.dispute.created", dispute))
    await drain(pool, gateway)

    [announced] = await pool.fetch(
        "SELECT payload FROM outbox_events WHERE type = 'dispute.updated'"
    )
    assert announced["payload"]["customer_id"] == "user_1"
    assert announced["payload"]["order_id"] is None
    assert announced["payload"]["credits_clawed_back"] == []
    templates = await pool.fetch("SELECT template FROM email_deliveries")
    assert [row["template"] for row in templates] == ["owner_dispute_opened"]
    assert await pool.fetchval("SELECT count(*) FROM stripe_events WHERE status = 'processed'") == 2
