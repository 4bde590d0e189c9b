"""SQL for operators' per-customer adjustments: granted credit lots, feature overrides, and
the audit of both (migration 0022)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from billing_service.db.pages import NEWEST_FIRST, After
from billing_service.db.pool import Executor


@dataclass(frozen=True, slots=True)
class CreditLot:
    """Credits granted by hand: they count until `expires_at` (never, when None)."""

    id: uuid.UUID
    granted: int
    spent: int
    expires_at: datetime | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Override:
    """One customer's own limit of one feature (None: unlimited)."""

    limit: int | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: uuid.UUID
    feature_key: str
    action: str
    details: dict[str, Any]
    reason: str
    actor_key_id: uuid.UUID | None
    actor_name: str
    created_at: datetime


async def select_feature_kind(conn: Executor, feature_key: str) -> tuple[uuid.UUID, str] | None:
    """The live feature's id and kind."""
    row = await conn.fetchrow(
        "SELECT id, kind FROM features WHERE key = $1 AND active", feature_key
    )
    return None if row is None else (row["id"], row["kind"])


async def select_customer_id(conn: Executor, customer_key: str) -> uuid.UUID | None:
    found: uuid.UUID | None = await conn.fetchval(
        "SELECT id FROM customers WHERE external_id = $1", customer_key
    )
    return found


async def insert_credit_lot(
    conn: Executor, *, customer_id: uuid.UUID, feature_id: uuid.UUID, amount: int,
    expires_at: datetime | None, now: datetime,
) -> CreditLot:  # fmt: skip
    row = await conn.fetchrow(
        """
        INSERT INTO credit_lots (customer_id, feature_id, granted, expires_at, created_at)
        VALUES ($1, $2, $3, $4, $5)
        RETURNING id, granted, spent, expires_at, created_at
        """,
        customer_id,
        feature_id,
        amount,
        expires_at,
        now,
    )
    assert row is not None
    return CreditLot(**dict(row.items()))


async def upsert_override(
    conn: Executor, *, customer_id: uuid.UUID, feature_id: uuid.UUID, limit: int | None,
    now: datetime,
) -> Override:  # fmt: skip
    row = await conn.fetchrow(
        """
        INSERT INTO feature_overrides AS o (customer_id, feature_id, "limit", created_at)
        VALUES ($1, $2, $3, $4)
        ON CONFLICT (customer_id, feature_id) DO UPDATE SET "limit" = EXCLUDED."limit"
        RETURNING o."limit" AS limit, o.created_at, o.updated_at
        """,
        customer_id,
        feature_id,
        limit,
        now,
    )
    assert row is not None
    return Override(**dict(row.items()))


async def delete_override(
    conn: Executor, *, customer_id: uuid.UUID, feature_id: uuid.UUID
) -> int | bool | None:
    """The removed override's limit, or False when there was none."""
    row = await conn.fetchrow(
        "DELETE FROM feature_overrides WHERE customer_id = $1 AND feature_id = $2 "
        'RETURNING "limit"',
        customer_id,
        feature_id,
    )
    if row is None:
        return False
    limit: int | None = row["limit"]
    return limit


async def insert_audit(
    conn: Executor, *, customer_id: uuid.UUID, feature_id: uuid.UUID, action: str,
    details: dict[str, Any], reason: str, actor_key_id: uuid.UUID | None, actor_name: str,
    now: datetime,
) -> None:  # fmt: skip
    await conn.execute(
        """
        INSERT INTO grant_audit (customer_id, feature_id, action, details, reason, actor_key_id,
                                 actor_name, created_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
        """,
        customer_id,
        feature_id,
        action,
        details,
        reason,
        actor_key_id,
        actor_name,
        now,
    )


async def select_audit(
    conn: Executor, customer_key: str, *, after: After | None, limit: int
) -> list[AuditEntry]:
    """The customer's adjustments, newest first, after `after` (the first page when None)."""
    start = after or NEWEST_FIRST
    rows = await conn.fetch(
        """
        SELECT a.id, f.key AS feature_key, a.action, a.details, a.reason, a.actor_key_id,
               a.actor_name, a.created_at
        FROM grant_audit a
        JOIN customers c ON c.id = a.customer_id
        JOIN features f ON f.id = a.feature_id
        WHERE c.external_id = $1 AND (a.created_at, a.id) < ($2, $3)
        ORDER BY a.created_at DESC, a.id DESC
        LIMIT $4
        """,
        customer_key,
        start.created_at,
        start.id,
        limit,
    )
    return [AuditEntry(**dict(row.items())) for row in rows]
