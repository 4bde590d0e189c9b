"""The prune job and the ledgers' month partitions: months made ahead, months past the
retention dropped whole, and every row today's rules keep still kept."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from billing_service.db import partitions
from billing_service.services import maintenance
from tests.volume import reset_partitions

RETENTION = 90


@pytest.fixture
async def ledgers(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Pool]:
    """The session database with the partitions a migration leaves, put back after the test."""
    async with pool.acquire() as conn:
        await reset_partitions(conn)
    yield pool
    async with pool.acquire() as conn:
        await reset_partitions(conn)


def _month_start(moment: datetime) -> datetime:
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


async def _usage_events(pool: asyncpg.Pool, ages_in_days: list[float]) -> list[str]:
    """One usage event with its key per age, as usage_track writes them; their keys."""
    customer = await pool.fetchval(
        "INSERT INTO customers (external_id) VALUES ($1) RETURNING id", f"c-{uuid.uuid4()}"
    )
    feature = await pool.fetchval(
        "INSERT INTO features (key, name, kind) VALUES ($1, 'AI', 'metered') RETURNING id",
        f"f{uuid.uuid4().hex[:8]}",
    )
    keys = [f"age-{age}" for age in ages_in_days]
    await pool.execute(
        """
        WITH made AS (
            INSERT INTO usage_event_keys (customer_id, idempotency_key, created_at)
            SELECT $1, k, now() - a * interval '1 day'
            FROM unnest($3::text[], $4::float8[]) AS t (k, a)
            RETURNING customer_id, idempotency_key, created_at
        )
        INSERT INTO usage_events (customer_id, feature_id, idempotency_key, request_hash, amount,
                                  created_at)
        SELECT customer_id, $2, idempotency_key, '\\x00', 1, created_at FROM made
        """,
        customer,
        feature,
        keys,
        ages_in_days,
    )
    return keys


async def test_the_job_makes_the_months_ahead_and_takes_their_rows_from_the_default(
    ledgers: asyncpg.Pool,
) -> None:
    """With the last month ahead missing, a usage event of that month waits in the default
    partition; the prune job makes the month for both ledgers and moves the event into it."""
    pool = ledgers
    ahead = _month_start(_month_start(datetime.now(UTC)) + timedelta(days=3 * 31 + 5))
    name = f"y{ahead.year}m{ahead.month:02}"
    await pool.execute(f"DROP TABLE usage_events_{name}, stripe_events_{name}")
    in_that_month = ahead + timedelta(days=2) - datetime.now(UTC)
    [key] = await _usage_events(pool, [-in_that_month / timedelta(days=1)])
    place = "SELECT tableoid::regclass::text FROM usage_events WHERE idempotency_key = $1"
    assert await pool.fetchval(place, key) == "usage_events_default"

    report = await maintenance.prune(pool, retention_days=RETENTION)

    assert report.errors == []
    assert report.partitions["partitions_made"] == 2
    assert await pool.fetchval(place, key) == f"usage_events_{name}"
    assert await pool.fetchval("SELECT count(*) FROM usage_events_default") == 0
    months = [m.name for m in await partitions.month_partitions(pool, "stripe_events")]
    assert months[-1] == f"stripe_events_{name}"


async def test_usage_months_past_the_retention_go_whole_with_their_keys(
    ledgers: asyncpg.Pool,
) -> None:
    """Usage events over 200 days in month partitions: each month that ended before the
    retention's moment goes with its events' idempotency keys; every event younger than the
    retention stays with its key, and no event stays more than a month past its retention."""
    pool = ledgers
    await pool.execute(
        "SELECT ensure_month_partitions('usage_events', now() - interval '200 days', now())"
    )
    ages = [1.0, 30.0, 89.0, 91.0, 95.0, 110.0, 125.0, 150.0, 170.0, 199.0]
    keys = dict(zip(await _usage_events(pool, ages), ages, strict=True))
    cutoff = datetime.now(UTC) - timedelta(days=RETENTION)
    partitioned = await pool.fetch(
        "SELECT idempotency_key, created_at FROM usage_events "
        "WHERE tableoid <> 'usage_events_default'::regclass"
    )
    assert len(partitioned) == len(ages)
    month_end = {
        row["idempotency_key"]: _month_start(_month_start(row["created_at"]) + timedelta(days=32))
        for row in partitioned
    }

    report = await maintenance.prune(pool, retention_days=RETENTION)

    assert report.errors == []
    left = {row["idempotency_key"] for row in await pool.fetch("SELECT * FROM usage_events")}
    remembered = {r["idempotency_key"] for r in await pool.fetch("SELECT * FROM usage_event_keys")}
    assert left == remembered == {key for key in keys if month_end[key] > cutoff}
    assert {key for key, age in keys.items() if age < RETENTION} <= left
    assert all(age < RETENTION + 31 for key, age in keys.items() if key in left)
    gone = len(keys) - len(left)
    assert gone >= 3  # 150, 170 and 199 days are months past any cutoff
    assert report.deleted["usage_events"] == report.deleted["usage_event_keys"] == gone
    assert report.partitions["partitions_dropped"] >= 2


async def test_a_stripe_month_goes_but_the_events_that_must_stay_move_to_the_default(
    ledgers: asyncpg.Pool,
) -> None:
    """A month of Stripe events long past the retention: the processed ones go with it; one
    that failed, one still pending and one received (or processed) within the retention are
    moved to the default partition, where the row pruning keeps them, as it always did."""
    pool = ledgers
    old = datetime.now(UTC) - timedelta(days=150)
    await pool.execute("SELECT ensure_month_partitions('stripe_events', $1, $1)", old)
    await pool.execute(
        """
        INSERT INTO stripe_events (stripe_event_id, type, livemode, stripe_created_at, payload,
                                   status, processed_at, created_at)
        VALUES
            ('evt_done', 't', false, $1, '{}', 'processed', $1, $1),
            ('evt_done_too', 't', false, $1, '{}', 'processed', $1, $1),
            ('evt_failed', 't', false, $1, '{}', 'failed', NULL, $1),
            ('evt_pending', 't', false, $1, '{}', 'pending', NULL, $1),
            ('evt_late', 't', false, $1, '{}', 'processed', now(), now() - interval '2 days')
        """,
        old,
    )
    kept_by_rule = {
        row["stripe_event_id"]
        for row in await pool.fetch(
            "SELECT stripe_event_id FROM stripe_events WHERE (status = 'processed' "
            "AND created_at < now() - interval '90 days' "
            "AND processed_at < now() - interval '90 days') IS NOT TRUE"
        )
    }
    assert kept_by_rule == {"evt_failed", "evt_pending", "evt_late"}

    report = await maintenance.prune(pool, retention_days=RETENTION)

    assert report.errors == []
    rows = await pool.fetch(
        "SELECT stripe_event_id, tableoid::regclass::text AS part FROM stripe_events"
    )
    assert {row["stripe_event_id"] for row in rows} == kept_by_rule
    assert {row["part"] for row in rows} == {"stripe_events_default"}
    assert report.deleted["stripe_events"] == 2
    assert report.partitions["stripe_events_moved"] == 3
    name = f"stripe_events_y{old.year}m{old.month:02}"
    assert name not in [m.name for m in await partitions.month_partitions(pool, "stripe_events")]

    again = await maintenance.prune(pool, retention_days=RETENTION)
    assert (again.deleted["stripe_events"], again.partitions["stripe_events_moved"]) == (0, 0)
    assert await pool.fetchval("SELECT count(*) FROM stripe_events") == 3
