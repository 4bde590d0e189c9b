"""SQL for `meter_events`: the outbox of billable units bound for Stripe's meters.

Rows are written by usage_track (migration 0020) in the track's own statement. A delivery round
leases due rows by moving `next_attempt_at` past the lease, so a worker that dies mid-batch only
delays its rows: they come due again, and Stripe's `identifier` keeps a resend from counting.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from billing_service.db.pages import NEWEST_FIRST, After
from billing_service.db.pool import Executor

STATUSES = ("pending", "sent", "rejected")


@dataclass(frozen=True, slots=True)
class DueMeterEvent:
    id: uuid.UUID
    event_name: str
    identifier: str
    value: int
    occurred_at: datetime
    replays: int
    attempts: int
    stripe_customer_id: str | None


@dataclass(frozen=True, slots=True)
class MeterEvent:
    id: uuid.UUID
    customer: str
    feature: str
    event_name: str
    identifier: str
    value: int
    occurred_at: datetime
    status: str
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    sent_at: datetime | None
    created_at: datetime


async def lease_due(conn: Executor, *, limit: int, lease_seconds: float) -> list[DueMeterEvent]:
    """Take up to `limit` due events for `lease_seconds`, oldest first, skipping rows another
    replica is leasing at this moment."""
    rows = await conn.fetch(
        """
        WITH due AS (
            SELECT id FROM meter_events
            WHERE status = 'pending' AND next_attempt_at <= now()
            ORDER BY next_attempt_at, id
            LIMIT $1
            FOR UPDATE SKIP LOCKED
        )
        UPDATE meter_events m
        SET next_attempt_at = now() + make_interval(secs => $2), attempts = m.attempts + 1
        FROM due, customers c
        WHERE m.id = due.id AND c.id = m.customer_id
        RETURNING m.id, m.event_name, m.identifier, m.value, m.occurred_at, m.replays,
                  m.attempts, c.stripe_customer_id
        """,
        limit,
        lease_seconds,
    )
    return [DueMeterEvent(**dict(row.items())) for row in rows]


async def mark_sent(conn: Executor, event_ids: list[uuid.UUID]) -> None:
    await conn.execute(
        "UPDATE meter_events SET status = 'sent', sent_at = now(), last_error = NULL "
        "WHERE id = ANY($1::uuid[]) AND status = 'pending'",
        event_ids,
    )


async def retry_later(conn: Executor, event_id: uuid.UUID, *, error: str, delay: float) -> None:
    await conn.execute(
        "UPDATE meter_events SET next_attempt_at = now() + make_interval(secs => $3), "
        "last_error = $2 WHERE id = $1 AND status = 'pending'",
        event_id,
        error,
        delay,
    )


async def reject(conn: Executor, event_id: uuid.UUID, *, error: str) -> None:
    await conn.execute(
        "UPDATE meter_events SET status = 'rejected', last_error = $2 "
        "WHERE id = $1 AND status = 'pending'",
        event_id,
        error,
    )


async def replay(conn: Executor, event_id: uuid.UUID) -> bool:
    """Send a rejected event again, under a new idempotency key (Stripe keeps the old answer)."""
    result: str = await conn.execute(
        "UPDATE meter_events SET status = 'pending', attempts = 0, replays = replays + 1, "
        "next_attempt_at = now() WHERE id = $1 AND status = 'rejected'",
        event_id,
    )
    return result.endswith(" 1")


_PAGE = """
    SELECT m.id, c.external_id AS customer, f.key AS feature, m.event_name, m.identifier,
           m.value, m.occurred_at, m.status, m.attempts, m.next_attempt_at, m.last_error,
           m.sent_at, m.created_at
    FROM meter_events m
    JOIN customers c ON c.id = m.customer_id
    JOIN features f ON f.id = m.feature_id
    WHERE (m.created_at, m.id) < ($1, $2) AND ($4::text IS NULL OR m.status = $4)
    ORDER BY m.created_at DESC, m.id DESC
    LIMIT $3
"""


async def select_meter_events(
    conn: Executor, *, status: str | None, after: After | None, limit: int
) -> list[MeterEvent]:
    """Up to `limit` events, newest first, after `after` (the first page when None)."""
    start = after or NEWEST_FIRST
    rows = await conn.fetch(_PAGE, start.created_at, start.id, limit, status)
    return [MeterEvent(**dict(row.items())) for row in rows]


async def backlog(conn: Executor) -> int:
    """Pending events: units recorded and not yet confirmed by Stripe."""
    count: int = await conn.fetchval("SELECT count(*) FROM meter_events WHERE status = 'pending'")
    return count
