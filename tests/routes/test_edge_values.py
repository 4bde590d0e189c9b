"""Values at the edge of what the service can represent: never a 500, and never a counter or a
ledger that one odd value breaks for everyone after it."""

from __future__ import annotations

import io
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from billing_service.stripe_gateway import StripeGateway
from tests.conftest import WEBHOOK_SECRETS
from tests.routes.test_checkout import bearer
from tests.routes.test_usage import catalog_with, track
from tests.routes.test_webhooks import WEBHOOK, drain, post_event
from tests.stripe_fakes import stripe_event
from tests.support import stripe_signature_header

MAX_COST = "999999999999999999.999999999999"


def _field_of(response: httpx.Response) -> str:
    assert response.status_code == 422, response.text
    assert response.json()["type"] == "urn:billing-service:problem:validation-failed"
    [error] = response.json()["errors"]
    field: str = error["field"]
    return field


@pytest.mark.parametrize(
    ("name", "value"),
    [("from", "0001-01-01T00:00:00+01:00"), ("to", "9999-12-31T23:59:59-01:00")],
)
async def test_a_timestamp_outside_the_utc_calendar_is_a_422(
    client: httpx.AsyncClient, billing_key: str, name: str, value: str
) -> None:
    """A query timestamp that lands in year 0 or 10000 once made UTC names its parameter; ranges
    at either edge of the calendar are answered at every granularity (buckets never run past
    it)."""
    response = await client.get(
        "/v1/customers/user_1/usage", headers=bearer(billing_key), params={name: value}
    )
    assert _field_of(response) == name
    for granularity in ("hour", "day", "week", "month", "period"):
        for edges in (
            {"from": "0001-01-01T00:00:00Z", "to": "0001-01-02T00:30:00Z"},
            {"from": "9999-12-31T00:00:00Z", "to": "9999-12-31T23:59:59Z"},
        ):
            within = await client.get(
                "/v1/customers/user_1/usage",
                headers=bearer(billing_key),
                params=edges | {"granularity": granularity},
            )
            assert within.status_code == 200, within.text


@pytest.mark.parametrize("value", ["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00"])
async def test_an_api_key_expiry_outside_the_utc_calendar_is_a_422(
    client: httpx.AsyncClient, admin_key: str, value: str
) -> None:
    """`expires_at` is checked the same way as every other timestamp the service accepts."""
    response = await client.post(
        "/v1/api-keys",
        headers=bearer(admin_key),
        json={"name": "edge", "scopes": ["usage"], "expires_at": value},
    )
    assert _field_of(response) == "expires_at"


async def test_a_cost_beyond_the_per_call_bound_is_refused_and_breaks_nothing(
    client: httpx.AsyncClient, pool: asyncpg.Pool, billing_key: str
) -> None:
    """Two calls of cost 10^18 - 1 are each a 422 (the second was a 500, then every costed
    call after it); calls within the bound keep being recorded."""
    await catalog_with(pool, limit=None, reset="month")
    for n in range(2):
        huge = await track(client, billing_key, idempotency_key=f"huge-{n}",
                           cost="999999999999999999")  # fmt: skip
        assert _field_of(huge) == "cost"
    for cost in ("1000000000000", 1000000000000, "0", "0.000000000001"):
        fine = await track(client, billing_key, cost=cost)
        assert fine.status_code == 200, fine.text
    assert _field_of(await track(client, billing_key, cost="1000000000000.000000000001")) == "cost"
    assert await pool.fetchval("SELECT cost FROM usage_counters") == Decimal(
        "2000000000000.000000000001"
    )


@pytest.mark.parametrize("cost", ["-1", -1, -0.5, "-0.000000000001"])
async def test_a_negative_cost_is_refused(
    client: httpx.AsyncClient, pool: asyncpg.Pool, billing_key: str, cost: object
) -> None:
    """Costs only add up: a negative one is a 422 and nothing is recorded."""
    await catalog_with(pool, limit=None, reset="month")
    assert _field_of(await track(client, billing_key, cost=cost)) == "cost"
    assert await pool.fetchval("SELECT count(*) FROM usage_events") == 0


async def test_a_period_cost_at_its_bound_saturates_instead_of_failing_every_call(
    client: httpx.AsyncClient, pool: asyncpg.Pool, billing_key: str
) -> None:
    """A counter whose cost reached the column's bound keeps counting units; the cost stays
    at the bound (through the allowance path and the credits path alike)."""
    await catalog_with(pool, limit=3, reset="month")
    assert (await track(client, billing_key, cost="1")).status_code == 200
    await pool.execute("UPDATE usage_counters SET cost = $1::numeric - 1", MAX_COST)
    await pool.execute(
        "INSERT INTO credit_balances (customer_id, feature_id, granted) "
        "SELECT c.id, f.id, 10 FROM customers c, features f WHERE f.key = 'ai_calls'"
    )
    for amount in (1, 1, 3):  # the last one spends credits, under row locks
        response = await track(client, billing_key, amount=amount, cost="1000000000000")
        assert response.status_code == 200, response.text
        assert (response.json()["allowed"], response.json()["recorded"]) == (True, True)
    row = await pool.fetchrow("SELECT used, cost FROM usage_counters")
    assert row is not None
    assert (row["used"], row["cost"]) == (6, Decimal(MAX_COST))
    entitlements = await client.get(
        "/v1/customers/user_1/entitlements", headers=bearer(billing_key)
    )
    [ai_calls] = [f for f in entitlements.json()["features"] if f["feature"] == "ai_calls"]
    assert ai_calls["cost"] == MAX_COST


async def test_a_unit_counter_at_its_bound_saturates_instead_of_failing(
    client: httpx.AsyncClient, pool: asyncpg.Pool, billing_key: str
) -> None:
    """An unlimited counter near the bigint bound keeps answering; it stops at the bound."""
    await catalog_with(pool, limit=None, reset="month")
    assert (await track(client, billing_key)).status_code == 200
    await pool.execute("UPDATE usage_counters SET used = $1", 2**63 - 10)
    for _ in range(2):
        response = await track(client, billing_key, amount=1_000_000_000)
        assert response.status_code == 200, response.text
        assert response.json()["used"] == 2**63 - 1
    refund = await track(client, billing_key, amount=-9)
    assert refund.json()["used"] == 2**63 - 10


async def _stored(pool: asyncpg.Pool, event_id: str) -> asyncpg.Record:
    row = await pool.fetchrow(
        "SELECT stripe_event_id, type, payload, stripe_created_at, status FROM stripe_events "
        "WHERE stripe_event_id = $1",
        event_id,
    )
    assert row is not None
    return row


def _with_nuls(event: dict[str, Any]) -> dict[str, Any]:
    """An event with NUL characters in a nested string, in nested keys and in a list."""
    event["data"]["object"]["name"] = "Ada\x00Lovelace"
    event["data"]["object"]["metadata"] = {"team\x00": "core\x00", "tags": ["a\x00b", {"k\x00": 1}]}
    return event


async def test_signed_events_holding_nul_characters_are_stored_and_processed(
    stripe_client: httpx.AsyncClient, pool: asyncpg.Pool, gateway: StripeGateway
) -> None:
    """NUL anywhere in a signed event (strings, keys, the type) is kept as U+FFFD, never a 500;
    a redelivery is a duplicate, and the worker processes the stored event."""
    event = _with_nuls(stripe_event("customer.created", {"id": "cus_nul", "object": "customer"}))
    event["type"] = "customer.created\x00"
    first = await post_event(stripe_client, event)
    again = await post_event(stripe_client, event)
    assert first.status_code == 200, first.text
    assert (first.json(), again.json()) == (
        {"received": True, "duplicate": False},
        {"received": True, "duplicate": True},
    )
    row = await _stored(pool, event["id"])
    assert row["type"] == "customer.created\ufffd"
    stored = row["payload"]["data"]["object"]
    assert stored["name"] == "Ada\ufffdLovelace"
    assert stored["metadata"] == {"team\ufffd": "core\ufffd", "tags": ["a\ufffdb", {"k\ufffd": 1}]}
    assert await drain(pool, gateway) == 1
    assert (await _stored(pool, event["id"]))["status"] == "processed"


async def test_a_signed_event_id_holding_a_nul_is_stored_under_a_storable_id(
    stripe_client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """Even the event id may carry a NUL; the event is kept (and deduplicated) all the same."""
    event = stripe_event("customer.created", {"id": "cus_1", "object": "customer"})
    event["id"] = "evt_nul\x00id"
    assert (await post_event(stripe_client, event)).json()["duplicate"] is False
    assert (await post_event(stripe_client, event)).json()["duplicate"] is True
    assert (await _stored(pool, "evt_nul\ufffdid"))["status"] == "pending"


@pytest.mark.parametrize("created", [10**18, -(10**18), 2**64 - 1])
async def test_a_signed_event_with_an_impossible_created_time_is_stored(
    captured_logs: io.StringIO,
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    created: int,
) -> None:
    """`created` beyond any calendar is kept in the payload, stored as the nearest end of the
    calendar (so a copy posted later is still its duplicate), logged, and processed like any
    other event."""
    event = stripe_event("invoice.created", {"id": "in_1", "object": "invoice"}, created=created)
    response = await post_event(stripe_client, event)
    assert response.status_code == 200, response.text
    row = await _stored(pool, event["id"])
    assert row["payload"]["created"] == created
    assert row["stripe_created_at"].year == (1 if created < 0 else 9999)
    assert "webhook.created_out_of_range" in captured_logs.getvalue()
    assert (await post_event(stripe_client, event)).json()["duplicate"] is True
    assert await pool.fetchval("SELECT count(*) FROM stripe_events") == 1
    assert await drain(pool, gateway) == 1


async def test_a_signed_event_with_odd_optional_fields_is_stored(
    stripe_client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """An `api_version` that is not text, or an object id that is a number, is no 500."""
    event = stripe_event("invoice.created", {"id": 12345, "object": "invoice"}, api_version=7)
    response = await post_event(stripe_client, event)
    assert response.status_code == 200, response.text
    assert (
        await pool.fetchval(
            "SELECT object_id FROM stripe_events WHERE stripe_event_id = $1", event["id"]
        )
        == "12345"
    )


async def test_a_signed_body_that_is_no_event_is_a_logged_400(
    captured_logs: io.StringIO, stripe_client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """An id no Stripe event has (longer than any index entry), or a body that is not JSON,
    is a 400 with a log line saying why; Stripe never sends these, so nothing real is lost."""
    long_id = stripe_event("customer.created", {"id": "cus_1"}, id="evt_" + "x" * 3000)
    bodies = [orjson.dumps(long_id), b'{"id": "evt_1", "created": 1e400}', b'"\\ud800"']
    for body in bodies:
        header = stripe_signature_header(body, WEBHOOK_SECRETS[0])
        response = await stripe_client.post(
            WEBHOOK, content=body,
            headers={"Stripe-Signature": header, "Content-Type": "application/json"},
        )  # fmt: skip
        assert response.status_code == 400, response.text
        assert response.json()["type"] == "urn:billing-service:problem:invalid-webhook"
    rejected = [
        orjson.loads(line)
        for line in captured_logs.getvalue().splitlines()
        if '"webhook.rejected"' in line
    ]
    assert [line["reason"] for line in rejected] == [
        "The webhook is not a Stripe event.",
        "The webhook body is not JSON.",
        "The webhook body is not JSON.",
    ]
    assert await pool.fetchval("SELECT count(*) FROM stripe_events") == 0
