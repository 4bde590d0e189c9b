"""The meter event outbox: Stripe's refusals are kept and listed, replays deliver once, and an
outage only delays delivery."""

from __future__ import annotations

import asyncpg
import httpx

from billing_service.services.meter_events import MeterEventDelivery
from billing_service.stripe_gateway import StripeGateway
from tests.routes.test_checkout import bearer
from tests.services.test_catalog import apply, example
from tests.stripe_fakes import FakeStripe, stripe_error


async def _outbox_row(pool: asyncpg.Pool, customer: str, stripe_id: str) -> str:
    """A customer known to Stripe with 3 billed units in the outbox, as track writes them."""
    customer_id = await pool.fetchval(
        "INSERT INTO customers (external_id, stripe_customer_id) VALUES ($1, $2) RETURNING id",
        customer,
        stripe_id,
    )
    feature_id = await pool.fetchval("SELECT id FROM features WHERE key = 'ai_calls'")
    row_id = await pool.fetchval(
        "INSERT INTO meter_events (customer_id, feature_id, event_name, identifier, value, "
        "occurred_at) VALUES ($1, $2, 'ai_calls', $3, 3, now()) RETURNING id",
        customer_id,
        feature_id,
        f"usage_{customer}",
    )
    return str(row_id)


async def test_a_refused_event_is_listed_with_its_reason_and_a_replay_delivers_it_once(
    client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    admin_key: str,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
) -> None:
    """Stripe refuses an event (no meter for its name yet): it is kept as `rejected` with the
    reason, listed for admins, and once the meter exists a replay delivers it; a second
    replay finds nothing to do."""
    await apply(pool, None, example())  # the catalog, not yet in Stripe: no meter
    row_id = await _outbox_row(pool, "user_1", "cus_1")
    delivery = MeterEventDelivery(pool, gateway)

    assert await delivery.deliver_due() == 1
    listed = await client.get("/v1/meter-events?status=rejected", headers=bearer(admin_key))
    assert listed.status_code == 200
    [event] = listed.json()["data"]
    assert event["id"] == row_id
    assert event["customer_id"] == "user_1"
    assert event["value"] == 3
    assert event["status"] == "rejected"
    assert event["last_error"] == (
        "Stripe refused the request: No active meter was found for event_name."
    )
    assert fake_stripe.meter_events == []

    await apply(pool, gateway, example())  # the sync creates the meter
    replay = await client.post(f"/v1/meter-events/{row_id}/replay", headers=bearer(admin_key))
    assert replay.status_code == 202
    assert await delivery.deliver_due() == 1
    assert fake_stripe.metered_units("ai_calls", "cus_1") == 3
    again = await client.post(f"/v1/meter-events/{row_id}/replay", headers=bearer(admin_key))
    assert again.status_code == 404
    assert again.headers["content-type"] == "application/problem+json"
    sent = await client.get("/v1/meter-events?status=sent", headers=bearer(admin_key))
    assert [e["id"] for e in sent.json()["data"]] == [row_id]


async def test_events_recorded_while_stripe_is_down_are_delivered_when_it_returns(
    pool: asyncpg.Pool, gateway: StripeGateway, fake_stripe: FakeStripe
) -> None:
    """A Stripe outage keeps the event pending with a growing backoff; when Stripe answers
    again it is delivered, once."""
    await apply(pool, gateway, example())
    await _outbox_row(pool, "user_1", "cus_1")
    delivery = MeterEventDelivery(pool, gateway)
    fake_stripe.failures["/v1/billing/meter_events"] = stripe_error(503, "api_error")

    assert await delivery.deliver_due() == 1
    row = await pool.fetchrow(
        "SELECT status, attempts, next_attempt_at > now() + interval '1 second' AS later "
        "FROM meter_events"
    )
    assert row is not None
    assert (row["status"], row["attempts"], row["later"]) == ("pending", 1, True)
    assert await delivery.deliver_due() == 0  # not due until the backoff passes

    fake_stripe.failures.clear()
    await pool.execute("UPDATE meter_events SET next_attempt_at = now()")  # time passes
    assert await delivery.deliver_due() == 1
    assert await pool.fetchval("SELECT status FROM meter_events") == "sent"
    assert fake_stripe.metered_units("ai_calls", "cus_1") == 3
    assert len(fake_stripe.meter_events) == 1


async def test_unknown_status_and_foreign_ids_are_refused_plainly(
    client: httpx.AsyncClient, admin_key: str
) -> None:
    """A status outside pending/sent/rejected is a 422 naming `status`; a replay of an id that
    is not a rejected event (or not an id at all) is a 404."""
    listed = await client.get("/v1/meter-events?status=lost", headers=bearer(admin_key))
    assert listed.status_code == 422
    assert [e["field"] for e in listed.json()["errors"]] == ["status"]
    for event_id in ("not-a-uuid", "00000000-0000-0000-0000-000000000000"):
        replay = await client.post(f"/v1/meter-events/{event_id}/replay", headers=bearer(admin_key))
        assert replay.status_code == 404
