"""Query plans: every hot, list and prune statement reads the big tables through an index.

The statements are the service's own, captured as its real code runs them (tests/query_plans.py)
on a seeded data set large enough that PostgreSQL prefers an index wherever one fits (2,000
customers, 50,000 usage events, ~50,000 counters, 20,000 Stripe events). Each is planned twice:
as a prepared statement's first executions are (the arguments known) and as its cached generic
plan is (what asyncpg's statement cache runs after five executions), so neither can fall back to
reading a whole table. The two small tables that operators fill by hand (API keys, webhook
endpoints) are read whole by choice while they fit in a page; with sequential scans switched off,
their lists must still find an index, which proves the index exists and is usable.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from billing_service.db import usage as usage_db
from billing_service.db.pool import create_pool
from tests.plan_catalog import CUSTOMER, GRACE, QUERIES, bound, fixtures
from tests.query_plans import Mode, plan_of, scans
from tests.volume import MONTHLY_FEATURE, Volume, seed

BIG_TABLES = {
    "customers",
    "usage_events",
    "usage_counters",
    "stripe_events",
    "outbox_events",
    "webhook_deliveries",
    "email_deliveries",
    "orders",
    "idempotent_requests",
}
SMALL_LISTS = {"GET /v1/api-keys": "api_keys_created", "GET /v1/webhook-endpoints": (
    "webhook_endpoints_created"
)}  # fmt: skip
TEST_VOLUME = Volume(
    customers=2_000,
    usage_events=50_000,
    heavy_hours=2_000,
    stripe_events=20_000,
    outbox_events=5_000,
    orders=3_000,
    heavy_orders=300,
    idempotent_requests=5_000,
    api_keys=20,
)


@pytest.fixture
async def seeded_pool(database_url: str, pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Pool]:
    """The session database filled with TEST_VOLUME (emptied again by the next test), through a
    pool of one connection so that every statement is captured."""
    async with pool.acquire() as conn:
        await seed(conn, TEST_VOLUME)
    single = await create_pool(database_url, min_size=1, max_size=1)
    try:
        yield single
    finally:
        await single.close()


async def test_no_statement_reads_a_big_table_whole(seeded_pool: asyncpg.Pool) -> None:
    """Not one sequential scan of a big table in the plan of any hot, list or prune statement,
    with its arguments known or as a generic plan."""
    found = await fixtures(seeded_pool)
    whole_reads = []
    planned = 0
    modes: tuple[Mode, ...] = ("custom", "generic")
    for mode in modes:
        for name, run in QUERIES:
            for statement, plan in await plan_of(seeded_pool, bound(run, found), mode):
                planned += 1
                whole_reads += [
                    (mode, name, scan.relation, " ".join(statement.query.split())[:80])
                    for scan in scans(plan)
                    if scan.node == "Seq Scan" and scan.relation in BIG_TABLES
                ]
    assert whole_reads == []
    assert planned >= 2 * len(QUERIES)


async def test_small_lists_have_an_index_to_page_through(seeded_pool: asyncpg.Pool) -> None:
    """With sequential scans off, the API key and endpoint lists page through their index."""
    found = await fixtures(seeded_pool)
    async with seeded_pool.acquire() as conn:
        await conn.execute("SET enable_seqscan = off")
    try:
        for name, index in SMALL_LISTS.items():
            [(_, plan)] = await plan_of(seeded_pool, bound(dict(QUERIES)[name], found), "custom")
            assert [scan.index for scan in scans(plan)] == [index]
    finally:
        async with seeded_pool.acquire() as conn:
            await conn.execute("RESET enable_seqscan")


async def test_usage_events_keep_only_the_indexes_something_reads(pool: asyncpg.Pool) -> None:
    """The (customer, feature, time) index no query used is gone; the prune's index is there."""
    indexes = {
        row["indexname"]
        for row in await pool.fetch(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'usage_events'"
        )
    }
    assert indexes == {
        "usage_events_pkey",
        "usage_events_customer_id_idempotency_key_key",
        "usage_events_created",
    }


async def test_the_track_function_reads_every_big_table_through_an_index(
    seeded_pool: asyncpg.Pool,
) -> None:
    """EXPLAIN of a track shows only the call of usage_track: the statements inside it are
    logged by auto_explain instead, over enough calls that PL/pgSQL caches their generic plans
    (a first track, replays, refusals, spending past the allowance), and none reads a big
    table whole."""
    messages: list[str] = []

    def listen(_conn: object, message: asyncpg.PostgresLogMessage) -> None:
        messages.append(message.message)

    async with seeded_pool.acquire() as conn:
        conn.add_log_listener(listen)
        await conn.execute(
            "LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0;"
            "SET auto_explain.log_nested_statements = on; SET auto_explain.log_format = json;"
            "SET client_min_messages = log"
        )
        try:
            for n in range(12):
                for customer, amount in ((CUSTOMER, 1), ("cust_new", 10**13), (CUSTOMER, -1)):
                    tracked = await usage_db.track(
                        conn,
                        customer_key=customer,
                        feature_key=MONTHLY_FEATURE,
                        amount=amount,
                        cost=None,
                        idempotency_key=f"plan-{n % 6}-{amount}",
                        request_hash=b"h",
                        metadata={},
                        now=datetime.now(UTC),
                        grace=GRACE,
                    )
                    assert tracked.outcome in {"answered", "replayed"}, tracked
        finally:
            await conn.execute("RESET client_min_messages; RESET auto_explain.log_min_duration")
            conn.remove_log_listener(listen)
    plans = [json.loads(m.split("plan:", 1)[1]) for m in messages if "plan:" in m]
    nested = [p for p in plans if "usage_track" not in p["Query Text"]]
    touched = {scan.relation for plan in nested for scan in scans(plan)}
    assert {"usage_counters", "usage_events", "customers"} <= touched, touched
    whole_reads = [
        (scan.relation, " ".join(plan["Query Text"].split())[:80])
        for plan in nested
        for scan in scans(plan)
        if scan.node == "Seq Scan" and scan.relation in BIG_TABLES
    ]
    assert whole_reads == []
