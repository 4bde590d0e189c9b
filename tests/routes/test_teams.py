"""Teams and seats against the fake Stripe: seats bought in Checkout, members assigned to them,
seats added (prorated, invoiced at once) and removed (at the period end), member limits in
track and check, member tokens, and every refusal as a clear problem."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx

from billing_service.config import Settings
from billing_service.services.api_keys import Scope
from billing_service.stripe_gateway import StripeGateway
from tests.conftest import app_client, issue_key
from tests.routes.test_checkout import bearer, checkout_body, seeded
from tests.routes.tiers import mirrored
from tests.stripe_fakes import FakeStripe
from tests.test_openapi import assert_matches_schema

PROBLEM = "urn:billing-service:problem:"


async def bought(
    client: httpx.AsyncClient, pool: asyncpg.Pool, gateway: StripeGateway, fake: FakeStripe,
    key: str, seats: int, customer_id: str = "acme",
) -> dict[str, Any]:  # fmt: skip
    """The example catalog, and `customer_id` buying `seats` of the Team plan through Checkout;
    returns the Stripe subscription."""
    await seeded(client, pool, gateway, key, customer_id)
    created = await client.post(
        "/v1/checkout/sessions",
        headers=bearer(key),
        json=checkout_body(customer_id, "team_monthly") | {"quantity": seats},
    )
    assert created.status_code == 201, created.text
    [session_call] = fake.calls_to("POST", "/v1/checkout/sessions")
    assert session_call.form["line_items[0][quantity]"] == str(seats)
    session = fake.complete_checkout(created.json()["id"])
    done = await client.get(f"/v1/checkout/sessions/{session['id']}", headers=bearer(key))
    assert done.json()["customer"]["plan"]["key"] == "team"
    subscription: dict[str, Any] = fake.subscriptions[session["subscription"]]
    return subscription


async def put_member(client: httpx.AsyncClient, key: str, member: str) -> httpx.Response:
    return await client.put(f"/v1/customers/acme/members/{member}", headers=bearer(key))


async def set_seats(
    client: httpx.AsyncClient, key: str, quantity: object, idempotency_key: str | None = None
) -> httpx.Response:
    headers = bearer(key) | ({"Idempotency-Key": idempotency_key} if idempotency_key else {})
    return await client.post(
        "/v1/customers/acme/subscription/seats", headers=headers, json={"quantity": quantity}
    )


async def seats_of(client: httpx.AsyncClient, key: str) -> dict[str, Any]:
    """The customer's seats, as GET /v1/customers/{id} shows them (checked against the
    contract's schema)."""
    body = (await client.get("/v1/customers/acme", headers=bearer(key))).json()
    assert_matches_schema(body, "Customer")
    seats: dict[str, Any] = body["seats"]
    return seats


async def add_two_seats(
    client: httpx.AsyncClient, fake_stripe: FakeStripe, subscription: dict[str, Any], key: str
) -> None:
    """3 → 5 seats: one quantity change, prorated and invoiced at once; a retry with the same
    Idempotency-Key replays the answer without asking Stripe again."""
    billing_key = key
    calls_before = len(fake_stripe.calls)
    added = await set_seats(client, billing_key, 5, "add-two")
    assert added.status_code == 200, added.text
    assert added.json()["change"] == {"direction": "add", "effective": "now"}
    assert added.json()["seats"]["purchased"] == 5
    [update] = fake_stripe.calls_to("POST", f"/v1/subscriptions/{subscription['id']}")
    item_id = subscription["items"]["data"][0]["id"]
    assert update.form == {
        "items[0][id]": item_id,
        "items[0][quantity]": "5",
        "proration_behavior": "always_invoice",
        "payment_behavior": "error_if_incomplete",
    }
    invoice = fake_stripe.invoices[fake_stripe.subscriptions[subscription["id"]]["latest_invoice"]]
    assert invoice["billing_reason"] == "subscription_update"
    assert invoice["status"] == "paid"
    assert 0 < invoice["amount_due"] <= 2 * 2500  # two seats for what is left of the period
    replay = await set_seats(client, billing_key, 5, "add-two")
    assert replay.json() == added.json()
    assert len(fake_stripe.calls) == calls_before + 1  # the replay asked Stripe nothing


async def test_buy_three_seats_assign_members_add_two_then_remove_one_at_period_end(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """3 seats bought in Checkout hold 3 members and refuse a 4th (409 with how many are
    assigned); adding 2 seats sends Stripe a quantity change invoiced at once, after which 2
    more members fit; removing 1 seat waits for the period end through a schedule, is refused
    below the seats in use, and the seat count drops when the period ends."""
    client = stripe_client
    subscription = await bought(client, pool, gateway, fake_stripe, billing_key, 3)
    assert await seats_of(client, billing_key) == {
        "purchased": 3, "in_use": 0, "available": 3, "scheduled": None, "max_seats": 50,
    }  # fmt: skip
    entitlements = await client.get("/v1/customers/acme/entitlements", headers=bearer(billing_key))
    ai_calls = next(f for f in entitlements.json()["features"] if f["feature"] == "ai_calls")
    assert ai_calls["limit"] == 1200  # 400 per seat

    for member in ("ann", "bob", "cy"):
        assert (await put_member(client, billing_key, member)).status_code == 201
    assert (await put_member(client, billing_key, "ann")).status_code == 200  # holds one already
    fourth = await put_member(client, billing_key, "dee")
    assert fourth.status_code == 409
    assert fourth.json()["type"] == PROBLEM + "seats-taken"
    assert (fourth.json()["seats"], fourth.json()["assigned"]) == (3, 3)
    full = await pool.fetch("SELECT o.type, e.template FROM outbox_events o "
                            "LEFT JOIN email_deliveries e ON e.event_id = o.id "
                            "WHERE o.type = 'team.seats_full'")  # fmt: skip
    assert [(r["type"], r["template"]) for r in full] == [("team.seats_full", "owner_seats_full")]

    await add_two_seats(client, fake_stripe, subscription, billing_key)

    for member in ("dee", "eve"):
        assert (await put_member(client, billing_key, member)).status_code == 201
    assert (await put_member(client, billing_key, "fay")).status_code == 409

    in_use = await set_seats(client, billing_key, 4)
    assert in_use.status_code == 409
    assert in_use.json()["type"] == PROBLEM + "seats-in-use"
    assert in_use.json()["assigned"] == 5
    freed = await client.delete("/v1/customers/acme/members/eve", headers=bearer(billing_key))
    assert freed.status_code == 204
    removed = await set_seats(client, billing_key, 4)
    assert removed.status_code == 200, removed.text
    assert removed.json()["change"] == {"direction": "remove", "effective": "period_end"}
    assert removed.json()["seats"] == {
        "purchased": 5, "in_use": 4, "available": 0, "scheduled": 4, "max_seats": 50,
    }  # fmt: skip
    [schedule] = fake_stripe.schedules.values()
    assert [p["quantity"] for p in schedule["phases"][1]["items"]] == [4]
    assert fake_stripe.subscriptions[subscription["id"]]["items"]["data"][0]["quantity"] == 5
    # The seat on its way out is not given to anyone meanwhile.
    assert (await put_member(client, billing_key, "eve")).status_code == 409

    fake_stripe.advance_schedule(schedule["id"])
    await mirrored(client, pool, gateway, fake_stripe.subscriptions[subscription["id"]])
    assert await seats_of(client, billing_key) == {
        "purchased": 4, "in_use": 4, "available": 0, "scheduled": None, "max_seats": 50,
    }  # fmt: skip
    changes = await pool.fetch(
        "SELECT payload FROM outbox_events WHERE type = 'subscription.seats_changed' "
        "ORDER BY created_at"
    )
    assert [(c["payload"]["previous_seats"], c["payload"]["seats"], c["payload"]["effective"])
            for c in changes] == [(3, 5, "now"), (5, 5, "period_end"), (5, 4, "now")]  # fmt: skip
    members = await client.get("/v1/customers/acme/members", headers=bearer(billing_key))
    assert [m["member_id"] for m in members.json()["data"]] == ["ann", "bob", "cy", "dee"]


async def test_a_declined_card_leaves_seats_and_members_unchanged(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """Stripe refuses the proration invoice's charge (card declined): 402, the subscription
    keeps its seats in Stripe and here, and the next attempt after the card is fixed goes
    through under a new idempotency key."""
    subscription = await bought(stripe_client, pool, gateway, fake_stripe, billing_key, 2)
    assert (await put_member(stripe_client, billing_key, "ann")).status_code == 201
    fake_stripe.decline_card(subscription["customer"])
    declined = await set_seats(stripe_client, billing_key, 4)
    assert declined.status_code == 402
    assert declined.json()["type"] == PROBLEM + "payment-failed"
    assert fake_stripe.subscriptions[subscription["id"]]["items"]["data"][0]["quantity"] == 2
    assert await seats_of(stripe_client, billing_key) == {
        "purchased": 2, "in_use": 1, "available": 1, "scheduled": None, "max_seats": 50,
    }  # fmt: skip
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM outbox_events WHERE type = 'subscription.seats_changed'"
        )
        == 0
    )

    fake_stripe.decline_card(subscription["customer"], declined=False)
    again = await set_seats(stripe_client, billing_key, 4)
    assert again.status_code == 200, again.text
    first, second = fake_stripe.calls_to("POST", f"/v1/subscriptions/{subscription['id']}")
    assert first.idempotency_key != second.idempotency_key
    assert (await seats_of(stripe_client, billing_key))["purchased"] == 4


async def test_bad_seat_and_member_requests_are_clear_problems(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """A quantity of 0, one above the plan's max_seats, members on a customer without a
    per-seat plan, a bad member id and an unknown member: 4xx problems, never a 500, and
    Stripe is not asked."""
    await bought(stripe_client, pool, gateway, fake_stripe, billing_key, 2)
    calls_before = len(fake_stripe.calls)
    for quantity, status in ((0, 422), (51, 422), ("two", 422), (None, 422)):
        response = await set_seats(stripe_client, billing_key, quantity)
        assert response.status_code == status, response.text
        assert response.json()["errors"][0]["field"] == "quantity"
    over = await stripe_client.post(
        "/v1/checkout/sessions",
        headers=bearer(billing_key),
        json=checkout_body("acme", "team_monthly") | {"quantity": 51},
    )
    assert over.status_code == 422
    assert len(fake_stripe.calls) == calls_before

    bad_id = await stripe_client.put(
        "/v1/customers/acme/members/a%20b", headers=bearer(billing_key)
    )
    assert bad_id.status_code == 422
    missing = await stripe_client.delete(
        "/v1/customers/acme/members/nobody", headers=bearer(billing_key)
    )
    assert missing.status_code == 404

    await stripe_client.put(
        "/v1/customers/solo", headers=bearer(billing_key), json={"email": "solo@example.com"}
    )
    no_seats = await stripe_client.put(
        "/v1/customers/solo/members/ann", headers=bearer(billing_key)
    )
    assert no_seats.status_code == 409
    assert no_seats.json()["type"] == PROBLEM + "no-seats"
    no_subscription = await stripe_client.post(
        "/v1/customers/solo/subscription/seats", headers=bearer(billing_key), json={"quantity": 2}
    )
    assert no_subscription.status_code == 409
    assert no_subscription.json()["type"] == PROBLEM + "no-active-subscription"
    unknown = await stripe_client.put(
        "/v1/customers/ghost/members/ann", headers=bearer(billing_key)
    )
    assert unknown.status_code == 404


async def test_members_are_counted_against_their_own_limit_and_the_teams(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """Track and check with a member enforce the member's limit (500) and the team's (400 per
    seat); a member without a seat is a 404; a member's usage shows in their entitlements and
    a member's limit reached is announced once."""
    await bought(stripe_client, pool, gateway, fake_stripe, billing_key, 2)  # team limit 800
    for member in ("ann", "bob"):
        await put_member(stripe_client, billing_key, member)
    usage_key = await issue_key(pool, Scope.USAGE)

    async def track(member: str, amount: int, key: str) -> httpx.Response:
        body = {"customer_id": "acme", "feature": "ai_calls", "amount": amount,
                "idempotency_key": key, "member": member}  # fmt: skip
        return await stripe_client.post("/v1/usage/track", headers=bearer(usage_key), json=body)

    first = await track("ann", 500, "a1")
    assert first.status_code == 200, first.text
    assert first.json()["allowed"] is True
    assert first.json()["member"] == {"id": "ann", "used": 500, "limit": 500, "remaining": 0}
    assert_matches_schema(first.json(), "TrackedUsage")
    over_member = await track("ann", 1, "a2")
    assert over_member.json()["allowed"] is False
    assert over_member.json()["reason"] == "member_limit_reached"
    assert over_member.json()["used"] == 500  # the team's counter
    assert (await track("ann", 1, "a2")).json() == over_member.json()  # replayed
    assert (await track("bob", 300, "b1")).json()["allowed"] is True
    over_team = await track("bob", 1, "b2")
    assert (over_team.json()["allowed"], over_team.json()["reason"]) == (False, "limit_reached")
    assert over_team.json()["member"]["used"] == 300  # put back: the team refused
    refund = await track("ann", -100, "a3")
    assert refund.json()["member"]["used"] == 400
    assert (await track("bob", 50, "b3")).json()["allowed"] is True

    check = await stripe_client.post(
        "/v1/usage/check", headers=bearer(usage_key),
        json={"customer_id": "acme", "feature": "ai_calls", "amount": 60, "member": "bob"},
    )  # fmt: skip
    assert (check.json()["allowed"], check.json()["reason"]) == (False, "limit_reached")
    assert check.json()["member"] == {"id": "bob", "used": 350, "limit": 500, "remaining": 150}
    stranger = await track("zed", 1, "z1")
    assert stranger.status_code == 404
    assert stranger.json()["type"] == PROBLEM + "not-found"

    ann = await stripe_client.get(
        "/v1/customers/acme/members/ann/entitlements", headers=bearer(usage_key)
    )
    assert ann.status_code == 200, ann.text
    assert_matches_schema(ann.json(), "MemberEntitlements")
    ai_calls = next(f for f in ann.json()["features"] if f["feature"] == "ai_calls")
    assert (ai_calls["used"], ai_calls["limit"]) == (750, 800)  # the team's
    assert ai_calls["member"] == {"used": 400, "limit": 500, "remaining": 100}
    reached = await pool.fetch(
        "SELECT payload FROM outbox_events WHERE type = 'member.limit_reached'"
    )
    assert [(r["payload"]["member_id"], r["payload"]["used"]) for r in reached] == [("ann", 500)]
    counted = await pool.fetchval(
        "SELECT sum(amount) FROM usage_events WHERE recorded AND member_id = 'ann'"
    )
    assert counted == await pool.fetchval(
        "SELECT sum(used) FROM member_usage_counters WHERE member_id = 'ann'"
    )


async def test_a_members_token_reaches_only_that_members_entitlements(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """A token issued for a member reads that member's entitlements and nothing else: not the
    team's, not another member's; a token for a member without a seat is refused."""
    await bought(stripe_client, pool, gateway, fake_stripe, billing_key, 2)
    for member in ("ann", "bob"):
        await put_member(stripe_client, billing_key, member)
    usage_key = await issue_key(pool, Scope.USAGE)
    issued = await stripe_client.post(
        "/v1/customers/acme/tokens", headers=bearer(usage_key), json={"member": "ann"}
    )
    assert issued.status_code == 201, issued.text
    assert issued.json()["member_id"] == "ann"
    token = issued.json()["token"]

    own = await stripe_client.get("/v1/customers/acme/members/ann/entitlements",
                                  headers=bearer(token))  # fmt: skip
    assert own.status_code == 200
    assert own.json()["member_id"] == "ann"
    for path in ("/v1/customers/acme/members/bob/entitlements", "/v1/customers/acme/entitlements",
                 "/v1/customers/acme/members"):  # fmt: skip
        refused = await stripe_client.get(path, headers=bearer(token))
        assert refused.status_code == 403, path
    nobody = await stripe_client.post(
        "/v1/customers/acme/tokens", headers=bearer(usage_key), json={"member": "zed"}
    )
    assert nobody.status_code == 404


async def test_a_pending_removal_is_dropped_by_asking_for_the_current_seats(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """5 → 4 seats waits for the period end; asking for 5 again releases the schedule, and the
    seat on its way out may be taken again."""
    await bought(stripe_client, pool, gateway, fake_stripe, billing_key, 5)
    assert (await set_seats(stripe_client, billing_key, 4)).status_code == 200
    [schedule] = fake_stripe.schedules.values()
    kept = await set_seats(stripe_client, billing_key, 5)
    assert kept.status_code == 200, kept.text
    assert kept.json()["change"] == {"direction": "none", "effective": "now"}
    assert schedule["status"] == "released"
    assert kept.json()["seats"]["scheduled"] is None
    assert kept.json()["subscription"]["scheduled_quantity"] is None
    for member in ("a", "b", "c", "d", "e"):
        assert (await put_member(stripe_client, billing_key, member)).status_code == 201


async def test_with_seat_reduction_now_removed_seats_go_at_once_with_a_credit(
    stripe_settings: Settings,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """`BILLING_SEAT_REDUCTION_AT=now`: the quantity drops now with create_prorations, and no
    invoice is charged."""
    settings = stripe_settings.model_copy(update={"seat_reduction_at": "now"})
    async with app_client(settings) as client:
        subscription = await bought(client, pool, gateway, fake_stripe, billing_key, 3)
        removed = await set_seats(client, billing_key, 2)
        assert removed.status_code == 200, removed.text
        assert removed.json()["change"] == {"direction": "remove", "effective": "now"}
        assert removed.json()["seats"]["purchased"] == 2
    [update] = fake_stripe.calls_to("POST", f"/v1/subscriptions/{subscription['id']}")
    assert update.form["proration_behavior"] == "create_prorations"
    assert "payment_behavior" not in update.form
    assert fake_stripe.subscriptions[subscription["id"]]["latest_invoice"] is None
