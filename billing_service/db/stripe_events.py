"""SQL for the `stripe_events` table: the webhook ledger and its processing state.

The table is partitioned by month of `stripe_created_at` (migration 0026), which every copy of
an event shares: intake's dedup key and the statements on one event name it, so each reads or
writes one partition.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from billing_service.db.pages import NEWEST_FIRST, After
from billing_service.db.pool import Executor

_COLUMNS = (
    "id, stripe_event_id, type, livemode, stripe_created_at, object_id, payload, status, "
    "attempts, next_attempt_at, last_error, processed_at, created_at"
)


@dataclass(frozen=True, slots=True)
class StoredEvent:
    id: uuid.UUID
    stripe_event_id: str
    type: str
    livemode: bool
    stripe_created_at: datetime
    object_id: str | None
    payload: dict[str, Any]
    status: str
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    processed_at: datetime | None
    created_at: datetime


def _from_row(row: asyncpg.Record) -> StoredEvent:
    return StoredEvent(**dict(row.items()))


def storable(value: Any) -> Any:
    """`value` with every NUL character (in strings and in object keys, at any depth) replaced
    by U+FFFD: PostgreSQL's text and jsonb cannot hold NUL, and an event Stripe signed must be
    kept rather than refused. Handlers re-fetch the objects they act on from Stripe."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {storable(key): storable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [storable(item) for item in value]
    return value


async def insert_event(
    conn: Executor,
    *,
    stripe_event_id: str,
    type: str,
    livemode: bool,
    api_version: str | None,
    stripe_created_at: datetime,
    object_id: str | None,
    payload: dict[str, Any],
) -> bool:
    """Store the event once; False when it was already in the ledger (its id and Stripe's
    creation time, in the one partition of that time). Text PostgreSQL cannot hold is made
    storable first (see `storable`)."""
    inserted = await conn.fetchval(
        """
        INSERT INTO stripe_events
            (stripe_event_id, type, livemode, api_version, stripe_created_at, object_id, payload)
        VALUES ($1, $2, $3, $4, $5, $6, $7)
        ON CONFLICT (stripe_event_id, stripe_created_at) DO NOTHING
        RETURNING true
        """,
        storable(stripe_event_id),
        storable(type),
        livemode,
        storable(api_version),
        stripe_created_at,
        storable(object_id),
        storable(payload),
    )
    return bool(inserted)


async def claim_due_events(
    conn: Executor, *, limit: int, lease_seconds: float
) -> list[StoredEvent]:
    """Lease up to `limit` due events to this worker; others skip them until the lease ends."""
    rows = await conn.fetch(
        f"""
        UPDATE stripe_events SET
            attempts = attempts + 1,
            next_attempt_at = now() + make_interval(secs => $2)
        WHERE (id, stripe_created_at) IN (
            SELECT id, stripe_created_at FROM stripe_events
            WHERE status = 'pending' AND next_attempt_at <= now()
            ORDER BY next_attempt_at, created_at
            LIMIT $1
            FOR UPDATE SKIP LOCKED
        )
        RETURNING {_COLUMNS}
        """,  # noqa: S608 - constant column list
        limit,
        lease_seconds,
    )
    return sorted((_from_row(row) for row in rows), key=lambda e: e.stripe_created_at)


async def mark_processed(conn: Executor, event: StoredEvent) -> bool:
    """Claim the event's effect; False when another worker already applied it."""
    updated = await conn.fetchval(
        """
        UPDATE stripe_events SET status = 'processed', processed_at = now(), last_error = NULL
        WHERE id = $1 AND stripe_created_at = $2 AND status = 'pending'
        RETURNING true
        """,
        event.id,
        event.stripe_created_at,
    )
    return bool(updated)


async def record_failure(
    conn: Executor, event: StoredEvent, *, error: str, retry_in_seconds: float | None
) -> None:
    """Schedule a retry, or give up (status failed) when `retry_in_seconds` is None."""
    await conn.execute(
        """
        UPDATE stripe_events SET
            last_error = $2,
            status = CASE WHEN $3::float8 IS NULL THEN 'failed' ELSE status END,
            next_attempt_at = now() + make_interval(secs => coalesce($3::float8, 0))
        WHERE id = $1 AND stripe_created_at = $4 AND status = 'pending'
        """,
        event.id,
        error[:2000],
        retry_in_seconds,
        event.stripe_created_at,
    )


STATUSES = ("pending", "processed", "failed")
_ENTRY_COLUMNS = (
    "id, stripe_event_id, type, object_id, status, attempts, next_attempt_at, last_error, "
    "stripe_created_at, processed_at, created_at"
)


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """An event as the ledger lists it: its processing state, without the payload."""

    id: uuid.UUID
    stripe_event_id: str
    type: str
    object_id: str | None
    status: str
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    stripe_created_at: datetime
    processed_at: datetime | None
    created_at: datetime


# The Stripe customer an event is about, as migration 0024 indexes it (stripe_events_customer).
EVENT_CUSTOMER = (
    "coalesce(payload #>> '{data,object,customer}', "
    "CASE WHEN payload #>> '{data,object,object}' = 'customer' THEN object_id END)"
)

# Newest first, resuming after (created_at, id): one backward range scan of
# stripe_events_status (status, created_at) per status. Without a status filter the three
# scans are merged, each stopping after one page, so no page reads more than 3 * (limit + 1) rows.
_PAGE_OF_STATUS = f"""
    SELECT {_ENTRY_COLUMNS} FROM stripe_events
    WHERE status = {{status}} AND (created_at, id) < ($1, $2)
    ORDER BY created_at DESC, id DESC LIMIT $3
"""  # noqa: S608 - constant column list
_PAGE_BY_STATUS = _PAGE_OF_STATUS.format(status="$4")
_PAGE_ALL = (
    "SELECT * FROM ("  # noqa: S608 - constant fragments only
    + " UNION ALL ".join(f"({_PAGE_OF_STATUS.format(status=repr(s))})" for s in STATUSES)
    + ") AS page ORDER BY created_at DESC, id DESC LIMIT $3"
)
# With a type or a customer: one backward range scan of stripe_events_type (type, created_at)
# or stripe_events_customer (customer, created_at); the other filters are checked on its rows.
_FILTERS = {
    "status": "status = ${n}",
    "type": "type = ${n}",
    "customer": EVENT_CUSTOMER + " = ${n}",
}


def _filtered_page(names: tuple[str, ...]) -> str:
    where = " AND ".join(
        _FILTERS[name].replace("{n}", str(n)) for n, name in enumerate(names, start=4)
    )
    return f"""
        SELECT {_ENTRY_COLUMNS} FROM stripe_events
        WHERE {where} AND (created_at, id) < ($1, $2)
        ORDER BY created_at DESC, id DESC LIMIT $3
    """  # noqa: S608 - constant fragments only


async def select_events(
    conn: Executor,
    *,
    status: str | None,
    after: After | None,
    limit: int,
    type: str | None = None,
    stripe_customer_id: str | None = None,
) -> list[LedgerEntry]:
    """Up to `limit` events, newest first, after `after` (the first page when None), of the
    given status, type and Stripe customer (any when None)."""
    start = after or NEWEST_FIRST
    if type is None and stripe_customer_id is None:
        if status is None:
            rows = await conn.fetch(_PAGE_ALL, start.created_at, start.id, limit)
        else:
            rows = await conn.fetch(_PAGE_BY_STATUS, start.created_at, start.id, limit, status)
    else:
        given = {"customer": stripe_customer_id, "type": type, "status": status}
        names = tuple(name for name, value in given.items() if value is not None)
        rows = await conn.fetch(
            _filtered_page(names), start.created_at, start.id, limit, *(given[n] for n in names)
        )
    return [LedgerEntry(**dict(row.items())) for row in rows]


async def requeue(conn: Executor, *, stripe_event_id: str | None) -> int:
    """Make events pending again: one by id, or every failed one when the id is None."""
    result: str = await conn.execute(
        """
        UPDATE stripe_events
        SET status = 'pending', attempts = 0, next_attempt_at = now(), last_error = NULL,
            processed_at = NULL
        WHERE ($1::text IS NOT NULL AND stripe_event_id = $1)
           OR ($1::text IS NULL AND status = 'failed')
        """,
        stripe_event_id,
    )
    return int(result.rsplit(maxsplit=1)[-1])


async def ledger_stats(conn: Executor) -> tuple[int, float | None]:
    """Pending events and the age in seconds of the oldest one."""
    row = await conn.fetchrow(
        """
        SELECT count(*) AS pending,
               extract(epoch FROM now() - min(created_at))::float8 AS oldest_age
        FROM stripe_events WHERE status = 'pending'
        """
    )
    assert row is not None
    return int(row["pending"]), row["oldest_age"]


async def requeue_failed(conn: Executor, stripe_event_id: str) -> int:
    """Give a dead-lettered event another round (Stripe says it is still undelivered)."""
    result: str = await conn.execute(
        "UPDATE stripe_events SET status = 'pending', attempts = 0, next_attempt_at = now() "
        "WHERE stripe_event_id = $1 AND status = 'failed'",
        stripe_event_id,
    )
    return int(result.rsplit(maxsplit=1)[-1])


async def select_event(conn: Executor, stripe_event_id: str) -> StoredEvent | None:
    """One event with its payload, by Stripe's id (the ledger's unique key)."""
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM stripe_events WHERE stripe_event_id = $1",  # noqa: S608
        stripe_event_id,
    )
    return None if row is None else _from_row(row)


# One statement per status, the status written in: a generic plan for `status = $1` would
# expect a third of the ledger and read it whole.
_COUNT_WITH_STATUS = {
    status: "SELECT count(*) FROM (SELECT 1 FROM stripe_events "  # noqa: S608 - constants only
    f"WHERE status = '{status}' LIMIT $1) AS s"
    for status in STATUSES
}


async def count_with_status(conn: Executor, status: str, *, cap: int) -> int:
    """How many events have `status` (one of STATUSES), counted up to `cap`: a range scan of
    stripe_events_status that stops there, however large the ledger grows."""
    count = await conn.fetchval(_COUNT_WITH_STATUS[status], cap)
    return int(count)
