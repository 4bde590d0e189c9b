"""The statements whose plans docs/query-plans.md shows and tests/db/test_query_plans.py checks:
the hot path, the usage history, every list route and the prune job, each run through the real
code against a database filled by tests/volume.py.

`python -m tests.plan_catalog DATABASE_URL [NAME]` prints the rows of docs/query-plans.md (those
whose name contains NAME): each statement analysed five times (EXPLAIN ANALYZE, BUFFERS), with
the fastest time.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from billing_service.db import api_keys as api_keys_db
from billing_service.db import orders as orders_db
from billing_service.db import outbox
from billing_service.db import stripe_events as stripe_events_db
from billing_service.db import usage as usage_db
from billing_service.db.pages import After
from billing_service.db.pool import create_pool
from billing_service.history_window import history_window
from billing_service.services import catalog, maintenance, usage
from billing_service.services.api_keys import hash_key
from billing_service.services.usage import TrackRequest
from tests.query_plans import Discard, plan_of, summary
from tests.volume import HEAVY_CUSTOMER, HOURLY_FEATURE, MONTHLY_FEATURE

CUSTOMER = "cust_42"
PAGE = 101  # a route's default page of 100, read with one more row to know whether more follow
GRACE = timedelta(days=7)


@dataclass(frozen=True, slots=True)
class Fixtures:
    """Ids and positions the statements need, looked up before anything is captured."""

    heavy_customer_id: uuid.UUID
    endpoint_id: uuid.UUID
    events_midway: After
    deliveries_midway: After
    orders_midway: After
    pending_event: stripe_events_db.StoredEvent


async def fixtures(pool: asyncpg.Pool) -> Fixtures:
    heavy = await pool.fetchval("SELECT id FROM customers WHERE external_id = $1", HEAVY_CUSTOMER)
    endpoint = await pool.fetchrow(
        "SELECT e.id FROM webhook_endpoints e ORDER BY "
        "(SELECT count(*) FROM webhook_deliveries d WHERE d.endpoint_id = e.id) DESC LIMIT 1"
    )
    assert endpoint is not None

    async def midway(query: str, *args: object) -> After:
        row = await pool.fetchrow(query, *args)
        assert row is not None
        return After(row["created_at"], row["id"])

    return Fixtures(
        heavy_customer_id=heavy,
        endpoint_id=endpoint["id"],
        events_midway=await midway(
            "SELECT created_at, id FROM stripe_events ORDER BY created_at, id "
            "OFFSET (SELECT count(*) / 2 FROM stripe_events) LIMIT 1"
        ),
        deliveries_midway=await midway(
            "SELECT created_at, id FROM webhook_deliveries WHERE endpoint_id = $1 "
            "ORDER BY created_at, id OFFSET (SELECT count(*) / 2 FROM webhook_deliveries "
            "WHERE endpoint_id = $1) LIMIT 1",
            endpoint["id"],
        ),
        orders_midway=await midway(
            "SELECT created_at, id FROM orders WHERE customer_id = $1 ORDER BY created_at, id "
            "OFFSET (SELECT count(*) / 2 FROM orders WHERE customer_id = $1) LIMIT 1",
            heavy,
        ),
        pending_event=await _pending_event(pool),
    )


async def _pending_event(pool: asyncpg.Pool) -> stripe_events_db.StoredEvent:
    """A pending event, as the worker holds it once claimed (the claim rolled back)."""
    claimed: list[stripe_events_db.StoredEvent] = []
    with suppress(Discard):
        async with pool.acquire() as conn, conn.transaction():
            claimed += await stripe_events_db.claim_due_events(conn, limit=1, lease_seconds=0)
            raise Discard
    return claimed[0]


Run = Callable[[asyncpg.Pool, Fixtures], Awaitable[object]]


def bound(run: Run, found: Fixtures) -> Callable[[asyncpg.Pool], Awaitable[object]]:
    """`run` with its fixtures, as `plan_of` calls it."""
    return lambda pool: run(pool, found)


def _history(granularity: str, feature: str | None, days: int) -> Run:
    async def run(pool: asyncpg.Pool, _: Fixtures) -> object:
        now = datetime.now(UTC)
        window = history_window(granularity, since=now - timedelta(days=days), until=now, now=now)
        return await usage.usage_history(pool, HEAVY_CUSTOMER, feature_key=feature, window=window)

    return run


async def _track(pool: asyncpg.Pool, _: Fixtures) -> object:
    request = TrackRequest(
        customer_key=CUSTOMER,
        feature_key=HOURLY_FEATURE,
        amount=1,
        cost=None,
        idempotency_key=f"plan-{uuid.uuid4()}",
        metadata={},
    )
    return await usage.track(pool, request, now=datetime.now(UTC), grace=GRACE)


async def _intake(pool: asyncpg.Pool, _: Fixtures) -> object:
    return await stripe_events_db.insert_event(
        pool,
        stripe_event_id=f"plan-{uuid.uuid4()}",
        type="customer.subscription.updated",
        livemode=False,
        api_version=None,
        stripe_created_at=datetime.now(UTC),
        object_id="sub_1",
        payload={"id": "evt_plan", "object": "event"},
    )


async def _mark_processed(pool: asyncpg.Pool, found: Fixtures) -> object:
    async with pool.acquire() as conn, conn.transaction():
        await stripe_events_db.mark_processed(conn, found.pending_event)
        raise Discard


def _prune(table: str) -> Run:
    async def run(pool: asyncpg.Pool, _: Fixtures) -> object:
        # Planned and analysed like every statement here, in a transaction rolled back.
        async with pool.acquire() as conn, conn.transaction():
            statement = maintenance._PRUNE[table]
            args = (maintenance.BATCH_SIZE, 90) if "$2" in statement else (maintenance.BATCH_SIZE,)
            await conn.execute(statement, *args)
            raise Discard

    return run


# (what the statement is for, the real code that sends it)
QUERIES: list[tuple[str, Run]] = [
    ("check: entitlement context, one feature",
     lambda pool, _: usage_db.select_context(
         pool, CUSTOMER, MONTHLY_FEATURE, now=datetime.now(UTC), grace=GRACE)),
    ("entitlements: context, every feature",
     lambda pool, _: usage_db.select_context(
         pool, CUSTOMER, None, now=datetime.now(UTC), grace=GRACE)),
    ("track", _track),
    ("auth: API key lookup",
     lambda pool, _: api_keys_db.select_usable_key_touching_last_used(pool, hash_key("key7"))),
    ("webhook intake: store the event", _intake),
    ("worker: mark an event processed", _mark_processed),
    ("worker: lease due events",
     lambda pool, _: stripe_events_db.claim_due_events(pool, limit=10, lease_seconds=0)),
    ("history: a year of an hourly feature, by month (default)",
     _history("month", HOURLY_FEATURE, 366)),
    ("history: 366 days by day", _history("day", HOURLY_FEATURE, 366)),
    ("history: 31 days by hour", _history("hour", HOURLY_FEATURE, 31)),
    ("history: 31 days by period", _history("period", HOURLY_FEATURE, 31)),
    ("history: every feature, by month", _history("month", None, 366)),
    ("GET /v1/events, first page",
     lambda pool, _: stripe_events_db.select_events(pool, status=None, after=None, limit=PAGE)),
    ("GET /v1/events, a page halfway down",
     lambda pool, f: stripe_events_db.select_events(
         pool, status=None, after=f.events_midway, limit=PAGE)),
    ("GET /v1/events?status=failed",
     lambda pool, _: stripe_events_db.select_events(
         pool, status="failed", after=None, limit=PAGE)),
    ("GET …/deliveries, first page",
     lambda pool, f: outbox.select_deliveries(pool, f.endpoint_id, after=None, limit=PAGE)),
    ("GET …/deliveries, a page halfway down",
     lambda pool, f: outbox.select_deliveries(
         pool, f.endpoint_id, after=f.deliveries_midway, limit=PAGE)),
    ("GET …/orders, first page (1,000 orders)",
     lambda pool, f: orders_db.select_orders(
         pool, f.heavy_customer_id, after=None, limit=PAGE)),
    ("GET …/orders, a page halfway down",
     lambda pool, f: orders_db.select_orders(
         pool, f.heavy_customer_id, after=f.orders_midway, limit=PAGE)),
    ("GET /v1/api-keys", lambda pool, _: api_keys_db.select_api_keys(pool, after=None, limit=PAGE)),
    ("GET /v1/webhook-endpoints",
     lambda pool, _: outbox.select_endpoints(pool, after=None, limit=PAGE)),
    ("GET /v1/plans (the catalog, read whole)", lambda pool, _: catalog.plan_views(pool)),
    ("console: a customer's notifications",
     lambda pool, _: outbox.select_customer_notifications(pool, CUSTOMER, limit=20)),
    ("console: failed events, counted up to 10,000",
     lambda pool, _: stripe_events_db.count_with_status(pool, "failed", cap=10_000)),
    ("console: outbox backlog, counted up to 10,000",
     lambda pool, _: outbox.backlog(pool, cap=10_000)),
    ("console: one event with its payload",
     lambda pool, _: stripe_events_db.select_event(pool, "evt_plan")),
    *((f"prune {table}", _prune(table)) for table in maintenance._PRUNE),
]  # fmt: skip


async def _main(url: str, only: str) -> None:
    pool = await create_pool(url, min_size=1, max_size=1)
    try:
        found = await fixtures(pool)
        for name, run in QUERIES:
            if only not in name:
                continue
            runs = [await plan_of(pool, bound(run, found), "analyze") for _ in range(5)]
            for n, (statement, _plan) in enumerate(runs[0]):
                plan = min(
                    (r[n][1] for r in runs if r[n][0].query == statement.query),
                    key=lambda plan: plan["Execution Time"],
                )
                first_words = " ".join(statement.query.split())[:50]
                print(f"| {name} | {summary(plan)} | <!-- {first_words} -->")
    finally:
        await pool.close()


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1], " ".join(sys.argv[2:])))
