"""SQL for the `members` and `member_usage_counters` tables: who holds a seat of a team, and
what each member used."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from billing_service.db.pool import Executor


@dataclass(frozen=True, slots=True)
class Member:
    member_id: str
    created_at: datetime


async def lock_team(conn: Executor, customer_id: uuid.UUID) -> None:
    """Serialize seat assignments and seat removals of one customer (inside a transaction)."""
    await conn.execute("SELECT 1 FROM customers WHERE id = $1 FOR UPDATE", customer_id)


async def count_members(conn: Executor, customer_id: uuid.UUID) -> int:
    count: int = await conn.fetchval(
        "SELECT count(*) FROM members WHERE customer_id = $1", customer_id
    )
    return count


async def select_member(conn: Executor, customer_id: uuid.UUID, member_id: str) -> Member | None:
    row = await conn.fetchrow(
        "SELECT member_id, created_at FROM members WHERE customer_id = $1 AND member_id = $2",
        customer_id,
        member_id,
    )
    return None if row is None else Member(**dict(row.items()))


async def insert_member(conn: Executor, customer_id: uuid.UUID, member_id: str) -> Member | None:
    """The new member, or None when they already hold a seat."""
    row = await conn.fetchrow(
        """
        INSERT INTO members (customer_id, member_id) VALUES ($1, $2)
        ON CONFLICT (customer_id, member_id) DO NOTHING
        RETURNING member_id, created_at
        """,
        customer_id,
        member_id,
    )
    return None if row is None else Member(**dict(row.items()))


async def delete_member(conn: Executor, customer_id: uuid.UUID, member_id: str) -> bool:
    result: str = await conn.execute(
        "DELETE FROM members WHERE customer_id = $1 AND member_id = $2", customer_id, member_id
    )
    return result == "DELETE 1"


async def select_members(
    conn: Executor, customer_id: uuid.UUID, *, after: str | None, limit: int
) -> list[Member]:
    """Members by id, a page at a time."""
    rows = await conn.fetch(
        """
        SELECT member_id, created_at FROM members
        WHERE customer_id = $1 AND ($2::text IS NULL OR member_id > $2)
        ORDER BY member_id LIMIT $3
        """,
        customer_id,
        after,
        limit,
    )
    return [Member(**dict(row.items())) for row in rows]


async def select_member_usage(
    conn: Executor, customer_id: uuid.UUID, member_id: str, period_starts: dict[uuid.UUID, datetime]
) -> dict[uuid.UUID, int]:
    """The member's use of each feature (id) in the window starting at the given moment."""
    if not period_starts:
        return {}
    rows = await conn.fetch(
        """
        SELECT mc.feature_id, mc.used
        FROM unnest($3::uuid[], $4::timestamptz[]) AS w(feature_id, period_start)
        JOIN member_usage_counters mc
          ON mc.customer_id = $1 AND mc.member_id = $2 AND mc.feature_id = w.feature_id
         AND mc.period_start = w.period_start
        """,
        customer_id,
        member_id,
        list(period_starts),
        list(period_starts.values()),
    )
    return {row["feature_id"]: row["used"] for row in rows}
