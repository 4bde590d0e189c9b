"""List routes: a bounded page at a time (`limit`, default 100, at most 1000) and a cursor that
walks the whole list once, however many items are added during the walk."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest

from billing_service.routes._pagination import encode_cursor
from billing_service.services.api_keys import Scope
from tests.conftest import issue_key
from tests.routes.test_checkout import bearer
from tests.services.test_catalog import apply, example

BASE = datetime(2027, 1, 1, tzinfo=UTC)
Insert = Callable[[asyncpg.Pool, datetime], Awaitable[str]]


@dataclass(frozen=True)
class Listed:
    """A list route, the scope that reads it, and how to add one item to it directly."""

    path: str
    scope: Scope
    insert: Insert
    id_field: str = "id"


async def _event(pool: asyncpg.Pool, at: datetime) -> str:
    event_id = f"evt_{uuid.uuid4().hex}"
    await pool.execute(
        "INSERT INTO stripe_events (stripe_event_id, type, livemode, stripe_created_at, payload, "
        "status, created_at) VALUES ($1, 'customer.updated', false, $2, '{}', 'processed', $2)",
        event_id,
        at,
    )
    return event_id


async def _order(pool: asyncpg.Pool, at: datetime) -> str:
    order_id = await pool.fetchval(
        """
        WITH c AS (
            INSERT INTO customers (external_id) VALUES ('buyer')
            ON CONFLICT (external_id) DO UPDATE SET external_id = EXCLUDED.external_id
            RETURNING id
        )
        INSERT INTO orders (customer_id, stripe_checkout_session_id, status, currency,
                            amount_total, created_at)
        SELECT c.id, $1, 'paid', 'usd', 1000, $2 FROM c RETURNING id
        """,
        f"cs_{uuid.uuid4().hex}",
        at,
    )
    return str(order_id)


ENDPOINT_ID = uuid.UUID("00000000-0000-4000-8000-000000000001")


async def _endpoint(pool: asyncpg.Pool, at: datetime, endpoint_id: uuid.UUID | None = None) -> str:
    created = await pool.fetchval(
        "INSERT INTO webhook_endpoints (id, url, event_types, secret, created_at) "
        "VALUES ($1, 'https://hooks.example.com/in', ARRAY['usage.limit_reached'], 'whsec_x', $2) "
        "ON CONFLICT (id) DO UPDATE SET url = EXCLUDED.url RETURNING id",
        endpoint_id or uuid.uuid4(),
        at,
    )
    return str(created)


async def _delivery(pool: asyncpg.Pool, at: datetime) -> str:
    await _endpoint(pool, BASE - timedelta(days=1), ENDPOINT_ID)
    delivery_id = await pool.fetchval(
        """
        WITH event AS (
            INSERT INTO outbox_events (type, payload, created_at)
            VALUES ('usage.limit_reached', '{}', $2) RETURNING id
        )
        INSERT INTO webhook_deliveries (event_id, endpoint_id, status, created_at)
        SELECT event.id, $1, 'delivered', $2 FROM event RETURNING id
        """,
        ENDPOINT_ID,
        at,
    )
    return str(delivery_id)


async def _api_key(pool: asyncpg.Pool, at: datetime) -> str:
    key_id = await pool.fetchval(
        "INSERT INTO api_keys (name, prefix, key_hash, scopes, created_at) "
        "VALUES ('listed', 'bsk_x', $1, ARRAY['usage'], $2) RETURNING id",
        os.urandom(32),
        at,
    )
    return str(key_id)


async def _coupon(pool: asyncpg.Pool, at: datetime) -> str:
    key: str = await pool.fetchval(
        "INSERT INTO coupons (key, percent_off, duration, created_at) "
        "VALUES ($1, 10, 'once', $2) RETURNING key",
        f"c_{uuid.uuid4().hex}",
        at,
    )
    return key


async def _promotion_code(pool: asyncpg.Pool, at: datetime) -> str:
    code: str = await pool.fetchval(
        """
        WITH coupon AS (
            INSERT INTO coupons (key, percent_off, duration) VALUES ($1, 10, 'once') RETURNING id
        )
        INSERT INTO promotion_codes (code, coupon_id, created_at)
        SELECT $2, coupon.id, $3 FROM coupon RETURNING code
        """,
        f"c_{uuid.uuid4().hex}",
        f"CODE-{uuid.uuid4().hex}",
        at,
    )
    return code


async def _adjustment(pool: asyncpg.Pool, at: datetime) -> str:
    audit_id = await pool.fetchval(
        """
        WITH c AS (
            INSERT INTO customers (external_id) VALUES ('adjusted')
            ON CONFLICT (external_id) DO UPDATE SET external_id = EXCLUDED.external_id
            RETURNING id
        ), f AS (
            INSERT INTO features (key, name, kind) VALUES ('seats', 'Seats', 'metered')
            ON CONFLICT (key) DO UPDATE SET key = EXCLUDED.key
            RETURNING id
        )
        INSERT INTO grant_audit (customer_id, feature_id, action, reason, actor_name, created_at)
        SELECT c.id, f.id, 'credits.granted', 'goodwill', 'ops', $1 FROM c, f RETURNING id
        """,
        at,
    )
    return str(audit_id)


LISTS = {
    "coupons": Listed("/v1/coupons", Scope.ADMIN, _coupon),
    "promotion-codes": Listed("/v1/promotion-codes", Scope.ADMIN, _promotion_code, "code"),
    "adjustments": Listed("/v1/customers/adjusted/adjustments", Scope.ADMIN, _adjustment),
    "events": Listed("/v1/events", Scope.ADMIN, _event),
    "orders": Listed("/v1/customers/buyer/orders", Scope.BILLING, _order),
    "deliveries": Listed(f"/v1/webhook-endpoints/{ENDPOINT_ID}/deliveries", Scope.ADMIN, _delivery),
    "api-keys": Listed("/v1/api-keys", Scope.ADMIN, _api_key),
    "webhook-endpoints": Listed("/v1/webhook-endpoints", Scope.ADMIN, _endpoint),
}


async def walk(client: httpx.AsyncClient, listed: Listed, key: str, limit: int) -> list[str]:
    """Every id the list gives, page after page, until it says there is no more."""
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, str | int] = {"limit": limit} | ({"cursor": cursor} if cursor else {})
        response = await client.get(listed.path, headers=bearer(key), params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["data"]) <= limit
        seen += [item[listed.id_field] for item in page["data"]]
        if not page["has_more"]:
            assert page["next_cursor"] is None
            return seen
        cursor = page["next_cursor"]
        await asyncio.sleep(0.01)  # let the concurrent inserts land between pages


@pytest.mark.parametrize("name", sorted(LISTS))
async def test_walking_a_list_visits_each_item_once_while_items_are_added(
    client: httpx.AsyncClient, pool: asyncpg.Pool, name: str
) -> None:
    """60 items (ten sharing one timestamp), walked 7 at a time while 40 more are inserted
    concurrently, some newest and some among the old ones: every one of the 60 comes back
    exactly once, and no item is ever given twice."""
    listed = LISTS[name]
    key = await issue_key(pool, listed.scope)
    existing = [
        await listed.insert(pool, BASE + timedelta(seconds=min(n, 20) if 20 <= n < 30 else n))
        for n in range(60)
    ]

    async def add_more() -> None:
        for n in range(40):
            late = BASE + timedelta(seconds=n % 60, microseconds=n)
            tie = BASE + timedelta(seconds=20)
            newest = datetime.now(UTC)
            await listed.insert(pool, (late, tie, newest)[n % 3])
            await asyncio.sleep(0.002)

    seen, _ = await asyncio.gather(walk(client, listed, key, limit=7), add_more())
    assert len(seen) == len(set(seen)), "an item came back twice"
    assert sorted(set(existing) - set(seen)) == []


@pytest.mark.parametrize("name", sorted(LISTS))
async def test_a_page_holds_100_items_by_default_and_limit_and_cursor_are_checked(
    client: httpx.AsyncClient, pool: asyncpg.Pool, name: str
) -> None:
    """Without `limit` a page holds 100 items and says more follow; a limit outside 1 to 1000 or a
    cursor the list never gave is a 422 naming the parameter."""
    listed = LISTS[name]
    key = await issue_key(pool, listed.scope)
    for n in range(105):
        await listed.insert(pool, BASE + timedelta(seconds=n))
    first = await client.get(listed.path, headers=bearer(key))
    assert first.status_code == 200, first.text
    assert (len(first.json()["data"]), first.json()["has_more"]) == (100, True)
    everything = await client.get(listed.path, headers=bearer(key), params={"limit": 1000})
    assert everything.json()["has_more"] is False
    for bad in ("0", "1001", "ten", "-1", "1.5", "9" * 5000):
        refused = await client.get(listed.path, headers=bearer(key), params={"limit": bad})
        assert refused.status_code == 422, bad
        assert refused.json()["errors"][0]["field"] == "limit"
    year_zero = encode_cursor("0001-01-01T00:00:00+01:00", str(uuid.UUID(int=0)))
    naive = encode_cursor("2027-01-01T00:00:00", str(uuid.UUID(int=0)))
    shapes = (encode_cursor(), encode_cursor("x", "y"), encode_cursor(1, 2), "W10=")
    for bad in ("nonsense", "!" * 600, year_zero, naive, *shapes):
        refused = await client.get(listed.path, headers=bearer(key), params={"cursor": bad})
        assert refused.status_code == 422, bad
        assert refused.json()["errors"][0]["field"] == "cursor"


async def test_plans_page_through_the_catalog_in_display_order(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """The catalog's four live plans, one per page, in display order, then no more."""
    await apply(pool, None, example())
    key = await issue_key(pool, Scope.USAGE)
    keys, cursor = [], None
    while True:
        params = {"limit": "1"} | ({"cursor": cursor} if cursor else {})
        page = (await client.get("/v1/plans", headers=bearer(key), params=params)).json()
        keys += [plan["key"] for plan in page["data"]]
        if not page["has_more"]:
            break
        cursor = page["next_cursor"]
    assert keys == ["free", "pro", "credits", "team"]
    bad = await client.get(
        "/v1/plans", headers=bearer(key), params={"cursor": encode_cursor("x", 1)}
    )
    assert bad.json()["errors"] == [
        {"field": "cursor", "message": "must be a next_cursor this list returned"}
    ]


async def test_public_plans_page_through_the_pricing_list_in_display_order(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """The public list pages like the others: one plan a page, in display order, then no more;
    a cursor it never gave is a 422."""
    await apply(pool, None, example())
    keys, cursor = [], None
    while True:
        params = {"limit": "1"} | ({"cursor": cursor} if cursor else {})
        response = await client.get("/v1/public/plans", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["data"]) <= 1
        keys += [plan["key"] for plan in page["data"]]
        if not page["has_more"]:
            break
        cursor = page["next_cursor"]
    assert keys == ["free", "pro", "credits", "team"]
    bad = await client.get("/v1/public/plans", params={"cursor": encode_cursor("x", 1)})
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["field"] == "cursor"
