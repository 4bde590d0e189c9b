"""The partitioned ledgers (migration 0026): the move keeps every row and every idempotency
guarantee, and duplicates that straddle a partition boundary still count once.

A track's usage event lands in the partition of its moment, which a replay does not share: the
key that makes it count once lives in the unpartitioned `usage_event_keys`. A Stripe event lands
in the partition of Stripe's own `created`, which every copy shares.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from billing_service.db import stripe_events
from billing_service.db import usage as usage_db
from billing_service.db.migrations import apply_migrations, discover_migrations
from billing_service.db.pool import create_pool
from billing_service.errors import IdempotencyKeyReused
from billing_service.resources import migrations_dir
from billing_service.services import usage
from billing_service.services.usage import TrackRequest
from tests.routes.test_usage import catalog_with
from tests.routes.test_webhooks import post_event
from tests.stripe_fakes import stripe_event

GRACE = timedelta(days=7)
PARTITIONING = 26  # the migration that partitions the ledgers


def _track(key: str, amount: int = 1, customer: str = "user_1") -> TrackRequest:
    return TrackRequest(
        customer_key=customer,
        feature_key="ai_calls",
        amount=amount,
        cost=None,
        idempotency_key=key,
        metadata={"n": amount},
    )


@pytest.fixture
async def migrated(empty_database: str) -> AsyncIterator[asyncpg.Pool]:
    """A database of its own with every migration (its partitions may be rearranged)."""
    conn = await asyncpg.connect(empty_database)
    try:
        await apply_migrations(conn, discover_migrations(migrations_dir()))
    finally:
        await conn.close()
    pool = await create_pool(empty_database, min_size=1, max_size=60)
    try:
        yield pool
    finally:
        await pool.close()


# The rows of the old tables, every column, to compare before and after the move.
_USAGE_ROWS = """
SELECT id, customer_id, feature_id, idempotency_key, request_hash, amount, cost, metadata,
       recorded, period_start, response::text, created_at, updated_at
FROM usage_events ORDER BY id
"""
_STRIPE_ROWS = """
SELECT id, stripe_event_id, type, livemode, api_version, stripe_created_at, object_id, payload,
       status, attempts, next_attempt_at, last_error, processed_at, created_at, updated_at
FROM stripe_events ORDER BY id
"""


async def _old_ledger_rows(conn: asyncpg.Connection) -> None:
    """Usage events every 40 days back over four years and Stripe events every 45 days (a
    third of them failed), and one event Stripe dated at the end of the calendar."""
    await conn.execute(
        """
        INSERT INTO usage_events (customer_id, feature_id, idempotency_key, request_hash,
                                  amount, recorded, response, created_at, updated_at)
        SELECT e.customer_id, e.feature_id, 'old-' || n, '\\x01', 1, true, '{"n": 1}',
               now() - make_interval(days => n * 40), now() - make_interval(days => n * 40)
        FROM generate_series(1, 40) AS n, (SELECT * FROM usage_events LIMIT 1) AS e
        """
    )
    await conn.execute(
        """
        INSERT INTO stripe_events (stripe_event_id, type, livemode, stripe_created_at,
                                   object_id, payload, status, processed_at, created_at)
        SELECT 'evt_old_' || n, 'customer.updated', false,
               now() - make_interval(days => n * 45), 'cus_' || n,
               jsonb_build_object('id', 'evt_old_' || n),
               CASE WHEN n % 3 = 0 THEN 'failed' ELSE 'processed' END,
               now() - make_interval(days => n * 45), now() - make_interval(days => n * 45)
        FROM generate_series(1, 30) AS n
        UNION ALL
        SELECT 'evt_future', 'invoice.created', false, '9999-12-31T23:59:59Z', 'in_1',
               '{"id": "evt_future"}', 'pending', NULL, now()
        """
    )


async def test_the_migration_keeps_every_row_and_a_replayed_track_counts_once(
    empty_database: str,
) -> None:
    """On a database holding the unpartitioned ledgers with data (tracks made by the old
    usage_track, events of many months, some older than three years or far ahead), migration
    0026 keeps every row column for column, gives each usage event its key, sorts the rows into
    month partitions (the rest into the default one); afterwards a replayed track answers the
    stored response and counts nothing, a key reused for another request is refused, and a
    Stripe event already in the ledger is recognised as a duplicate."""
    migrations = discover_migrations(migrations_dir())
    conn = await asyncpg.connect(empty_database)
    try:
        await apply_migrations(conn, [m for m in migrations if m.version < PARTITIONING])
        pool = await create_pool(empty_database, min_size=1, max_size=4)
        try:
            await catalog_with(pool, limit=100, reset="month")
            now = datetime.now(UTC)
            first = [await usage.track(pool, _track(f"k{n}", 2), now=now, grace=GRACE)
                     for n in range(5)]  # fmt: skip
        finally:
            await pool.close()
        await _old_ledger_rows(conn)
        usage_before = await conn.fetch(_USAGE_ROWS)
        stripe_before = await conn.fetch(_STRIPE_ROWS)
        assert (len(usage_before), len(stripe_before)) == (45, 31)

        await apply_migrations(conn, migrations)

        assert await conn.fetch(_USAGE_ROWS) == usage_before
        assert await conn.fetch(_STRIPE_ROWS) == stripe_before
        keys = await conn.fetch(
            "SELECT customer_id, idempotency_key, created_at FROM usage_event_keys ORDER BY 1, 2"
        )
        assert sorted(tuple(k) for k in keys) == sorted(
            (r["customer_id"], r["idempotency_key"], r["created_at"]) for r in usage_before
        )
        places = await conn.fetch(
            "SELECT tableoid::regclass::text AS part, created_at FROM usage_events"
        )
        for place in places:
            month = place["created_at"].astimezone(UTC)
            if month > datetime.now(UTC) - timedelta(days=3 * 365):
                assert place["part"] == f"usage_events_y{month.year}m{month.month:02}"
            else:
                assert place["part"] == "usage_events_default"
        assert await conn.fetchval(
            "SELECT tableoid::regclass::text FROM stripe_events "
            "WHERE stripe_event_id = 'evt_future'"
        ) == "stripe_events_default"  # fmt: skip
    finally:
        await conn.close()

    await _replays_count_once(empty_database, first, now)


async def _replays_count_once(url: str, first: list[dict[str, Any]], now: datetime) -> None:
    """After the move: the five tracks replayed answer as before and count nothing, a reused
    key is refused, a new key counts, and a Stripe event of the old ledger is a duplicate."""
    pool = await create_pool(url, min_size=1, max_size=4)
    try:
        used = await pool.fetchval("SELECT sum(used) FROM usage_counters")
        again = [await usage.track(pool, _track(f"k{n}", 2), now=now, grace=GRACE)
                 for n in range(5)]  # fmt: skip
        assert again == first
        assert await pool.fetchval("SELECT sum(used) FROM usage_counters") == used == 10
        assert await pool.fetchval("SELECT count(*) FROM usage_events") == 45
        with pytest.raises(IdempotencyKeyReused):
            await usage.track(pool, _track("k0", 3), now=now, grace=GRACE)
        fresh = await usage.track(pool, _track("k-new", 2), now=now, grace=GRACE)
        assert fresh["used"] == 12
        async with pool.acquire() as conn:
            old = await conn.fetchrow(
                "SELECT stripe_created_at FROM stripe_events WHERE stripe_event_id = 'evt_old_1'"
            )
            assert old is not None
            duplicate = await stripe_events.insert_event(
                conn, stripe_event_id="evt_old_1", type="customer.updated", livemode=False,
                api_version=None, stripe_created_at=old["stripe_created_at"],
                object_id="cus_1", payload={"id": "evt_old_1"},
            )  # fmt: skip
            assert duplicate is False
    finally:
        await pool.close()


async def _split_this_month(pool: asyncpg.Pool, boundary: datetime) -> tuple[str, str]:
    """Replace this month's usage partition by two that meet at `boundary`: a partition
    boundary as a month's end is one, placed between two calls this test makes."""
    start = boundary.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + timedelta(days=32)).replace(day=1)
    name = f"usage_events_y{start.year}m{start.month:02}"
    await pool.execute(f"DROP TABLE {name}")
    for part, low, high in (("before", start, boundary), ("after", boundary, end)):
        await pool.execute(
            f"CREATE TABLE usage_events_{part} PARTITION OF usage_events "
            f"FOR VALUES FROM ('{low.isoformat()}') TO ('{high.isoformat()}')"
        )
    return "usage_events_before", "usage_events_after"


async def _waiting(pool: asyncpg.Pool, count: int) -> None:
    """Until `count` backends wait for a lock (the calls are really in flight together)."""
    for _ in range(500):
        waiting = await pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )
        if waiting >= count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{count} calls never waited together")


async def test_concurrent_duplicate_tracks_across_a_partition_boundary_count_once(
    migrated: asyncpg.Pool,
) -> None:
    """Forty calls with one idempotency key, twenty started before a partition boundary and
    twenty after it (their usage events would land in different partitions), all held at the
    customer's row until they run together: exactly one is recorded, the other 39 replay its
    answer byte for byte, one usage event and one key exist, and the counter moved once."""
    pool = migrated
    await catalog_with(pool, limit=100, reset="month")
    await pool.execute("INSERT INTO customers (external_id) VALUES ('user_1')")
    boundary = datetime.now(UTC) + timedelta(seconds=1.5)
    if boundary.day != (boundary + timedelta(seconds=3)).day:  # pragma: no cover - midnight
        pytest.skip("the split must fall inside this month")
    before, after = await _split_this_month(pool, boundary)
    holder = await pool.acquire()
    tx = holder.transaction()
    await tx.start()
    await holder.execute("SELECT 1 FROM customers WHERE external_id = 'user_1' FOR UPDATE")
    calls: list[asyncio.Task[dict[str, Any]]] = []

    def call() -> asyncio.Task[dict[str, Any]]:
        return asyncio.create_task(
            usage.track(pool, _track("same"), now=datetime.now(UTC), grace=GRACE)
        )

    try:
        calls += [call() for _ in range(20)]
        await _waiting(pool, 20)
        await asyncio.sleep(max(0.0, (boundary - datetime.now(UTC)).total_seconds()) + 0.2)
        calls += [call() for _ in range(20)]
        await _waiting(pool, 40)
    finally:
        await tx.rollback()
        await pool.release(holder)
    answers = await asyncio.gather(*calls)

    assert all(answer == answers[0] for answer in answers)
    assert (answers[0]["used"], answers[0]["recorded"]) == (1, True)
    assert await pool.fetchval("SELECT sum(used) FROM usage_counters") == 1
    assert await pool.fetchval("SELECT count(*) FROM usage_event_keys") == 1
    rows = await pool.fetch("SELECT tableoid::regclass::text AS part FROM usage_events")
    assert len(rows) == 1
    assert rows[0]["part"] in {before, after}


async def test_a_twin_waits_across_the_boundary_and_takes_over_when_the_first_rolls_back(
    migrated: asyncpg.Pool,
) -> None:
    """A track before the boundary holds its key uncommitted; its twin after the boundary
    waits on that key. When the first commits, the twin replays it (its event stays in the
    partition before); when a first one rolls back, the twin records its own, after it."""
    pool = migrated
    await catalog_with(pool, limit=100, reset="month")
    boundary = datetime.now(UTC) + timedelta(seconds=1.5)
    if boundary.day != (boundary + timedelta(seconds=3)).day:  # pragma: no cover - midnight
        pytest.skip("the split must fall inside this month")
    before, after = await _split_this_month(pool, boundary)
    outcomes = []
    for key, finish in (("commits", "COMMIT"), ("rolls-back", "ROLLBACK")):
        first = await pool.acquire()
        try:
            await first.execute("BEGIN")
            request = _track(key)
            answered = await usage_db.track(
                first, customer_key=request.customer_key, feature_key=request.feature_key,
                amount=1, cost=None, idempotency_key=key, request_hash=request.fingerprint(),
                metadata=request.metadata, now=datetime.now(UTC), grace=GRACE,
            )  # fmt: skip
            assert answered.outcome == "answered"
            await asyncio.sleep(max(0.0, (boundary - datetime.now(UTC)).total_seconds()) + 0.1)
            twin = asyncio.create_task(
                usage.track(pool, _track(key), now=datetime.now(UTC), grace=GRACE)
            )
            await _waiting(pool, 1)
            await first.execute(finish)
        finally:
            await pool.release(first)
        answer = await twin
        part = await pool.fetchval(
            "SELECT tableoid::regclass::text FROM usage_events WHERE idempotency_key = $1", key
        )
        outcomes.append((answer["used"], part))
    assert outcomes == [(1, before), (2, after)]


async def test_concurrent_copies_of_stripe_events_at_a_month_boundary_are_stored_once(
    stripe_client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """Two events Stripe created a second apart across the turn of a month, each posted 15 times
    at once: each is stored once, in the partition of its own month, and every copy after the
    first is acknowledged as a duplicate."""
    now = datetime.now(UTC)
    turn = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0) + timedelta(days=32)
    turn = turn.replace(day=1)
    events = [
        stripe_event("customer.created", {"id": f"cus_{n}", "object": "customer"},
                     created=int(turn.timestamp()) - 1 + n)
        for n in range(2)
    ]  # fmt: skip
    responses = await asyncio.gather(
        *(post_event(stripe_client, event) for event in events for _ in range(15))
    )
    assert {r.status_code for r in responses} == {200}
    assert sum(not r.json()["duplicate"] for r in responses) == 2
    rows = await pool.fetch(
        "SELECT stripe_event_id, tableoid::regclass::text AS part FROM stripe_events"
    )
    before = turn - timedelta(days=1)
    assert sorted((row["stripe_event_id"], row["part"]) for row in rows) == sorted([
        (events[0]["id"], f"stripe_events_y{before.year}m{before.month:02}"),
        (events[1]["id"], f"stripe_events_y{turn.year}m{turn.month:02}"),
    ])  # fmt: skip
