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
import re
from collections.abc import AsyncIterator
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from billing_service.db import stripe_events as stripe_events_db
from billing_service.db import usage as usage_db
from billing_service.db.pool import Connection, create_pool
from tests.plan_catalog import CUSTOMER, GRACE, QUERIES, bound, fixtures
from tests.query_plans import Discard, Mode, plan_of, scans
from tests.volume import MONTHLY_FEATURE, Volume, reset_partitions, seed

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
# A month partition or the default partition of a ledger (migration 0026) is that ledger.
_PARTITION = re.compile(r"(?P<table>[a-z_]+)_(y\d{4}m\d{2}|default)")


def table_of(relation: str | None) -> str | None:
    """The table a scanned relation belongs to: itself, or the ledger it is a partition of."""
    match = _PARTITION.fullmatch(relation or "")
    return match["table"] if match else relation


WholeRead = tuple[str, str, str | None, str]  # mode, statement name, relation, query


async def _holding_rows(pool: asyncpg.Pool, reads: list[WholeRead]) -> list[WholeRead]:
    """The whole reads left once those of empty partitions are set aside: a ledger's months
    ahead (and its default partition) are empty, as in production, so reading one whole reads
    no page, and the planner rightly prefers that to an index."""
    empty = {
        row["relname"]
        for row in await pool.fetch(
            "SELECT relname FROM pg_class WHERE relispartition AND relpages = 0 "
            "AND relname = ANY($1::text[])",
            [read[2] for read in reads],
        )
    }
    return [read for read in reads if read[2] not in empty]


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
        async with pool.acquire() as conn:
            await reset_partitions(conn)


async def test_no_statement_reads_a_big_table_whole(seeded_pool: asyncpg.Pool) -> None:
    """Not one sequential scan of a big table in the plan of any hot, list or prune statement,
    with its arguments known or as a generic plan."""
    found = await fixtures(seeded_pool)
    whole_reads: list[WholeRead] = []
    planned = 0
    modes: tuple[Mode, ...] = ("custom", "generic")
    for mode in modes:
        for name, run in QUERIES:
            for statement, plan in await plan_of(seeded_pool, bound(run, found), mode):
                planned += 1
                whole_reads += [
                    (mode, name, scan.relation, " ".join(statement.query.split())[:80])
                    for scan in scans(plan)
                    if scan.node == "Seq Scan" and table_of(scan.relation) in BIG_TABLES
                ]
    assert await _holding_rows(seeded_pool, whole_reads) == []
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
    """The (customer, feature, time) index no query used is gone, and so is the prune's
    `created_at` index now that the prune drops whole months (migration 0026): a replay's
    lookup and the primary key are left, and the default partition's own index by age."""
    indexes = {
        row["indexname"]
        for row in await pool.fetch(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'usage_events'"
        )
    }
    assert indexes == {
        "usage_events_pkey",
        "usage_events_customer_id_idempotency_key_key",
    }
    default = await pool.fetch(
        "SELECT indexname FROM pg_indexes WHERE tablename = 'usage_events_default'"
    )
    assert "usage_events_default_created" in {row["indexname"] for row in default}


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
        if scan.node == "Seq Scan" and table_of(scan.relation) in BIG_TABLES
    ]
    assert whole_reads == []


def _partitions_of(table: str, plan: dict[str, Any]) -> set[str]:
    """The partitions of `table` that a plan reads or writes."""
    return {
        scan.relation
        for scan in scans(plan)
        if scan.relation and scan.relation != table and table_of(scan.relation) == table
    }


async def _locked_partitions(conn: Connection) -> set[str]:
    """The ledger partitions this connection's transaction holds a lock on."""
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
        "WHERE l.pid = pg_backend_pid() AND c.relispartition AND c.relkind = 'r'"
    )
    return {row["relname"] for row in rows}


def _this_month(table: str) -> str:
    now = datetime.now(UTC)
    return f"{table}_y{now.year}m{now.month:02}"


async def test_intake_a_new_track_and_a_replay_touch_one_partition(
    seeded_pool: asyncpg.Pool,
) -> None:
    """Within one transaction, webhook intake (a new event and its duplicate), a new track and
    its replays (enough for PL/pgSQL to settle on its cached plans) lock one partition of each
    ledger, this month's, though both hold four months of rows: nothing reads the others."""
    async with seeded_pool.acquire() as conn:
        for n in range(8):  # the replay path's statements, planned and cached
            await _tracked(conn, f"plan-warm-{n}")
            await _tracked(conn, f"plan-warm-{n}")
        months = await conn.fetchval(
            "SELECT count(DISTINCT tableoid) FROM usage_events "
            "WHERE tableoid <> 'usage_events_default'::regclass"
        )
        assert months >= 4
        with suppress(Discard):
            async with conn.transaction():
                for _ in range(2):
                    await stripe_events_db.insert_event(
                        conn, stripe_event_id="evt_plan_once", type="invoice.paid",
                        livemode=False, api_version=None, stripe_created_at=datetime.now(UTC),
                        object_id="in_1", payload={"id": "evt_plan_once"},
                    )  # fmt: skip
                outcomes = [(await _tracked(conn, "plan-once")).outcome for _ in range(8)]
                locked = await _locked_partitions(conn)
                raise Discard  # the writes are rolled back
    assert outcomes == ["answered"] + ["replayed"] * 7
    assert locked == {_this_month("stripe_events"), _this_month("usage_events")}


async def _tracked(conn: Connection, key: str) -> usage_db.Tracked:
    return await usage_db.track(
        conn, customer_key=CUSTOMER, feature_key=MONTHLY_FEATURE, amount=1, cost=None,
        idempotency_key=key, request_hash=b"h", metadata={}, now=datetime.now(UTC), grace=GRACE,
    )  # fmt: skip


async def test_the_worker_and_a_replay_read_one_partition_in_their_plans(
    seeded_pool: asyncpg.Pool,
) -> None:
    """Marking an event processed or failed names its partition (its id and Stripe's moment),
    so its plan reads that one partition, arguments known or generic (pruned when it starts);
    a track replay's lookup of its usage event, as auto_explain logs it inside usage_track,
    reads one partition too."""
    [event] = await stripe_events_db.claim_due_events(seeded_pool, limit=1, lease_seconds=0)
    month = event.stripe_created_at.astimezone(UTC)
    expected = {f"stripe_events_y{month.year}m{month.month:02}"}

    async def worker(pool: asyncpg.Pool) -> None:
        async with pool.acquire() as conn, conn.transaction():
            await stripe_events_db.mark_processed(conn, event)
            await stripe_events_db.record_failure(conn, event, error="e", retry_in_seconds=1)
            raise Discard

    modes: tuple[Mode, ...] = ("custom", "generic")
    for mode in modes:
        planned = await plan_of(seeded_pool, worker, mode)
        assert len(planned) == 2
        for _statement, plan in planned:
            assert _partitions_of("stripe_events", plan) == expected, (mode, plan)

    messages: list[str] = []

    def listen(_conn: object, message: asyncpg.PostgresLogMessage) -> None:
        messages.append(message.message)

    async with seeded_pool.acquire() as conn:
        await _tracked(conn, "plan-replayed")
        conn.add_log_listener(listen)
        await conn.execute(
            "LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0;"
            "SET auto_explain.log_nested_statements = on; SET auto_explain.log_format = json;"
            "SET client_min_messages = log"
        )
        try:
            for _ in range(8):
                assert (await _tracked(conn, "plan-replayed")).outcome == "replayed"
        finally:
            await conn.execute("RESET client_min_messages; RESET auto_explain.log_min_duration")
            conn.remove_log_listener(listen)
    plans = [json.loads(m.split("plan:", 1)[1]) for m in messages if "plan:" in m]
    lookups = [p for p in plans if "FROM usage_events ue" in p["Query Text"]]
    assert len(lookups) == 8
    assert all(_partitions_of("usage_events", p) == {_this_month("usage_events")} for p in lookups)
