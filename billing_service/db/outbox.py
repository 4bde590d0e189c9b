"""SQL for the outbox: domain events, the endpoints that receive them, and their deliveries."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from billing_service.db.pages import NEWEST_FIRST, OLDEST_FIRST, After
from billing_service.db.pool import Connection, Executor


async def emit(
    conn: Executor,
    event_type: str,
    payload: dict[str, Any],
    *,
    dedupe_key: str | None = None,
    emails: Sequence[tuple[str, str | None]] = (),
) -> uuid.UUID | None:
    """Write an event, a pending delivery for every enabled endpoint that wants it, and the
    `emails` it causes (template, recipient; None is the owner).

    Call it inside the transaction of the change it reports: all commit, or none. With a
    `dedupe_key`, only the first emission counts; later ones return None.
    """
    event_id: uuid.UUID | None = await conn.fetchval(
        """
        WITH event AS (
            INSERT INTO outbox_events (type, payload, dedupe_key) VALUES ($1, $2, $3)
            ON CONFLICT (dedupe_key) DO NOTHING
            RETURNING id
        ), fanned_out AS (
            INSERT INTO webhook_deliveries (event_id, endpoint_id)
            SELECT event.id, e.id FROM event, webhook_endpoints e
            WHERE e.enabled AND $1 = ANY(e.event_types)
        )
        SELECT id FROM event
        """,
        event_type,
        payload,
        dedupe_key,
    )
    if event_id is not None and emails:
        await conn.executemany(
            "INSERT INTO email_deliveries (event_id, template, to_address) VALUES ($1, $2, $3)",
            [(event_id, template, to_address) for template, to_address in emails],
        )
    return event_id


@dataclass(frozen=True, slots=True)
class Endpoint:
    id: uuid.UUID
    url: str
    event_types: list[str]
    enabled: bool
    consecutive_failures: int
    disabled_at: datetime | None
    created_at: datetime


_ENDPOINT = "id, url, event_types, enabled, consecutive_failures, disabled_at, created_at"


async def insert_endpoint(
    conn: Executor, *, url: str, event_types: list[str], secret: str
) -> Endpoint:
    row = await conn.fetchrow(
        f"INSERT INTO webhook_endpoints (url, event_types, secret) VALUES ($1, $2, $3) "  # noqa: S608
        f"RETURNING {_ENDPOINT}",
        url,
        event_types,
        secret,
    )
    assert row is not None
    return Endpoint(**dict(row.items()))


async def select_endpoints(
    conn: Executor, *, after: After | None, limit: int | None
) -> list[Endpoint]:
    """Endpoints oldest first, after `after` (from the start when None); all when no limit."""
    start = after or OLDEST_FIRST
    rows = await conn.fetch(
        f"SELECT {_ENDPOINT} FROM webhook_endpoints WHERE (created_at, id) > ($1, $2) "  # noqa: S608
        "ORDER BY created_at, id LIMIT $3",
        start.created_at,
        start.id,
        limit,
    )
    return [Endpoint(**dict(row.items())) for row in rows]


async def select_endpoint(conn: Executor, endpoint_id: uuid.UUID) -> Endpoint | None:
    row = await conn.fetchrow(
        f"SELECT {_ENDPOINT} FROM webhook_endpoints WHERE id = $1",  # noqa: S608
        endpoint_id,
    )
    return None if row is None else Endpoint(**dict(row.items()))


async def set_endpoint_enabled(conn: Executor, endpoint_id: uuid.UUID, enabled: bool) -> bool:
    updated = await conn.fetchval(
        """
        UPDATE webhook_endpoints SET enabled = $2, consecutive_failures = 0,
            disabled_at = CASE WHEN $2 THEN NULL ELSE now() END
        WHERE id = $1 RETURNING true
        """,
        endpoint_id,
        enabled,
    )
    return bool(updated)


@dataclass(frozen=True, slots=True)
class Delivery:
    id: uuid.UUID
    event_id: uuid.UUID
    event_type: str
    payload: dict[str, Any]
    event_created_at: datetime
    endpoint_id: uuid.UUID
    url: str
    secret: str
    attempts: int


async def claim_due_deliveries(
    conn: Executor, *, limit: int, lease_seconds: float
) -> list[Delivery]:
    """Lease due deliveries to this worker; others skip them until the lease ends."""
    rows = await conn.fetch(
        """
        WITH claimed AS (
            UPDATE webhook_deliveries SET
                attempts = attempts + 1,
                next_attempt_at = now() + make_interval(secs => $2)
            WHERE id IN (
                SELECT d.id FROM webhook_deliveries d
                JOIN webhook_endpoints e ON e.id = d.endpoint_id AND e.enabled
                WHERE d.status = 'pending' AND d.next_attempt_at <= now()
                ORDER BY d.next_attempt_at
                LIMIT $1
                FOR UPDATE OF d SKIP LOCKED
            )
            RETURNING id, event_id, endpoint_id, attempts
        )
        SELECT c.id, c.event_id, o.type AS event_type, o.payload,
               o.created_at AS event_created_at, c.endpoint_id, e.url, e.secret, c.attempts
        FROM claimed c
        JOIN outbox_events o ON o.id = c.event_id
        JOIN webhook_endpoints e ON e.id = c.endpoint_id
        """,
        limit,
        lease_seconds,
    )
    return [Delivery(**dict(row.items())) for row in rows]


async def mark_delivered(conn: Connection, delivery: Delivery, status_code: int) -> None:
    async with conn.transaction():
        await conn.execute(
            """
            UPDATE webhook_deliveries SET status = 'delivered', delivered_at = now(),
                last_status_code = $2, last_error = NULL
            WHERE id = $1
            """,
            delivery.id,
            status_code,
        )
        await conn.execute(
            "UPDATE webhook_endpoints SET consecutive_failures = 0 WHERE id = $1",
            delivery.endpoint_id,
        )


async def mark_attempt_failed(
    conn: Connection,
    delivery: Delivery,
    *,
    status_code: int | None,
    error: str,
    retry_in_seconds: float | None,
    disable_after: int,
) -> bool:
    """Schedule a retry (or give up); returns whether the endpoint has now been disabled."""
    async with conn.transaction():
        await conn.execute(
            """
            UPDATE webhook_deliveries SET last_status_code = $2, last_error = $3,
                status = CASE WHEN $4::float8 IS NULL THEN 'failed' ELSE status END,
                next_attempt_at = now() + make_interval(secs => coalesce($4::float8, 0))
            WHERE id = $1
            """,
            delivery.id,
            status_code,
            error[:2000],
            retry_in_seconds,
        )
        disabled: bool | None = await conn.fetchval(
            """
            UPDATE webhook_endpoints SET consecutive_failures = consecutive_failures + 1,
                enabled = consecutive_failures + 1 < $2,
                disabled_at = CASE WHEN consecutive_failures + 1 >= $2 THEN now()
                                   ELSE disabled_at END
            WHERE id = $1
            RETURNING NOT enabled
            """,
            delivery.endpoint_id,
            disable_after,
        )
    return bool(disabled)


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    id: uuid.UUID
    event_id: uuid.UUID
    event_type: str
    status: str
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: datetime
    delivered_at: datetime | None
    created_at: datetime


async def select_deliveries(
    conn: Executor, endpoint_id: uuid.UUID, *, after: After | None, limit: int
) -> list[DeliveryRecord]:
    """The endpoint's deliveries, newest first, after `after` (the first page when None): one
    range scan of webhook_deliveries_endpoint (endpoint_id, created_at DESC)."""
    start = after or NEWEST_FIRST
    rows = await conn.fetch(
        """
        SELECT d.id, d.event_id, o.type AS event_type, d.status, d.attempts, d.last_status_code,
               d.last_error, d.next_attempt_at, d.delivered_at, d.created_at
        FROM webhook_deliveries d JOIN outbox_events o ON o.id = d.event_id
        WHERE d.endpoint_id = $1 AND (d.created_at, d.id) < ($2, $3)
        ORDER BY d.created_at DESC, d.id DESC LIMIT $4
        """,
        endpoint_id,
        start.created_at,
        start.id,
        limit,
    )
    return [DeliveryRecord(**dict(row.items())) for row in rows]


async def requeue_delivery(conn: Executor, delivery_id: uuid.UUID) -> bool:
    """Send a delivery again (same event, same webhook-id), whatever its status."""
    updated = await conn.fetchval(
        "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = now() "
        "WHERE id = $1 RETURNING true",
        delivery_id,
    )
    return bool(updated)


@dataclass(frozen=True, slots=True)
class EmailDelivery:
    id: uuid.UUID
    event_id: uuid.UUID
    template: str
    to_address: str | None
    payload: dict[str, Any]
    attempts: int


async def claim_due_emails(
    conn: Executor, *, limit: int, lease_seconds: float
) -> list[EmailDelivery]:
    rows = await conn.fetch(
        """
        WITH claimed AS (
            UPDATE email_deliveries SET
                attempts = attempts + 1,
                next_attempt_at = now() + make_interval(secs => $2)
            WHERE id IN (
                SELECT id FROM email_deliveries
                WHERE status = 'pending' AND next_attempt_at <= now()
                ORDER BY next_attempt_at LIMIT $1
                FOR UPDATE SKIP LOCKED
            )
            RETURNING id, event_id, template, to_address, attempts
        )
        SELECT c.id, c.event_id, c.template, c.to_address, o.payload, c.attempts
        FROM claimed c JOIN outbox_events o ON o.id = c.event_id
        """,
        limit,
        lease_seconds,
    )
    return [EmailDelivery(**dict(row.items())) for row in rows]


async def finish_email(
    conn: Executor,
    email_id: uuid.UUID,
    *,
    status: str,
    error: str | None = None,
    retry_in_seconds: float | None = None,
) -> None:
    """`sent` or `skipped` are final; `pending` with a delay retries; `failed` gives up."""
    await conn.execute(
        """
        UPDATE email_deliveries SET status = $2, last_error = $3,
            sent_at = CASE WHEN $2 = 'sent' THEN now() END,
            next_attempt_at = now() + make_interval(secs => coalesce($4::float8, 0))
        WHERE id = $1
        """,
        email_id,
        status,
        error,
        retry_in_seconds,
    )


@dataclass(frozen=True, slots=True)
class Backlog:
    """Outgoing work not done yet, each count capped (see `backlog`)."""

    webhook_deliveries: int
    emails: int


async def backlog(conn: Executor, *, cap: int) -> Backlog:
    """Pending webhook deliveries and emails, each counted up to `cap` along the partial
    indexes of pending rows, so the count stays cheap when a backlog is large."""
    row = await conn.fetchrow(
        """
        SELECT
            (SELECT count(*) FROM (SELECT 1 FROM webhook_deliveries WHERE status = 'pending'
                                   LIMIT $1) AS d) AS webhook_deliveries,
            (SELECT count(*) FROM (SELECT 1 FROM email_deliveries WHERE status = 'pending'
                                   LIMIT $1) AS e) AS emails
        """,
        cap,
    )
    assert row is not None
    return Backlog(webhook_deliveries=int(row["webhook_deliveries"]), emails=int(row["emails"]))


@dataclass(frozen=True, slots=True)
class Notification:
    """An outbox event about one customer, with how its webhook deliveries stand."""

    id: uuid.UUID
    type: str
    created_at: datetime
    delivered: int
    pending: int
    failed: int


async def select_customer_notifications(
    conn: Executor, customer_key: str, *, limit: int
) -> list[Notification]:
    """The newest outbox events whose payload names the customer (`customer_id`), newest
    first: one range scan of outbox_events_customer (migration 0027)."""
    rows = await conn.fetch(
        """
        SELECT o.id, o.type, o.created_at,
               count(*) FILTER (WHERE d.status = 'delivered') AS delivered,
               count(*) FILTER (WHERE d.status = 'pending') AS pending,
               count(*) FILTER (WHERE d.status = 'failed') AS failed
        FROM (SELECT id, type, created_at FROM outbox_events
              WHERE payload ->> 'customer_id' = $1
              ORDER BY created_at DESC, id DESC LIMIT $2) AS o
        LEFT JOIN webhook_deliveries d ON d.event_id = o.id
        GROUP BY o.id, o.type, o.created_at
        ORDER BY o.created_at DESC, o.id DESC
        """,
        customer_key,
        limit,
    )
    return [Notification(**dict(row.items())) for row in rows]
