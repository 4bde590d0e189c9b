"""SQL for the `customers` table."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from billing_service.db.pages import NEWEST_FIRST, After
from billing_service.db.pool import Executor
from billing_service.db.subscriptions import grants_sql, ranking_sql

_COLUMNS = (
    "id, external_id, email, name, metadata, stripe_customer_id, stripe_customer_generation, "
    "created_at, updated_at"
)


@dataclass(frozen=True, slots=True)
class Customer:
    id: uuid.UUID
    external_id: str
    email: str | None
    name: str | None
    metadata: dict[str, str]
    stripe_customer_id: str | None
    # How many Stripe customers of this customer Stripe has deleted (it names the next one's key).
    stripe_customer_generation: int
    created_at: datetime
    # Moves with every write to the row: a change's Stripe idempotency key is derived from it.
    updated_at: datetime


def _from_row(row: asyncpg.Record) -> Customer:
    return Customer(**dict(row.items()))


async def upsert_customer(
    conn: Executor,
    *,
    external_id: str,
    email: str | None,
    name: str | None,
    metadata: dict[str, str],
) -> tuple[Customer, bool]:
    """Insert or update by the caller's id; returns the row and whether it was created."""
    row = await conn.fetchrow(
        f"""
        INSERT INTO customers (external_id, email, name, metadata) VALUES ($1, $2, $3, $4)
        ON CONFLICT (external_id) DO UPDATE
        SET email = EXCLUDED.email, name = EXCLUDED.name, metadata = EXCLUDED.metadata
        RETURNING {_COLUMNS}, (xmax = 0) AS created
        """,  # noqa: S608 - constant column list
        external_id,
        email,
        name,
        metadata,
    )
    assert row is not None
    created = row["created"]
    return Customer(**{k: v for k, v in row.items() if k != "created"}), created


async def select_customer(conn: Executor, external_id: str) -> Customer | None:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM customers WHERE external_id = $1",  # noqa: S608
        external_id,
    )
    return None if row is None else _from_row(row)


async def select_customer_by_id(conn: Executor, customer_id: uuid.UUID) -> Customer | None:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM customers WHERE id = $1",  # noqa: S608
        customer_id,
    )
    return None if row is None else _from_row(row)


async def select_customer_by_stripe_id(conn: Executor, stripe_customer_id: str) -> Customer | None:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM customers WHERE stripe_customer_id = $1",  # noqa: S608
        stripe_customer_id,
    )
    return None if row is None else _from_row(row)


async def claim_stripe_customer_id(
    conn: Executor, customer_id: uuid.UUID, stripe_customer_id: str, *, generation: int
) -> str | None:
    """Store the Stripe customer unless one is already stored; returns the one that stands.

    None when a deletion was mirrored since the Stripe customer was created under `generation`:
    what Stripe answered may be the deleted customer, so it is not stored."""
    row = await conn.fetchrow(
        """
        UPDATE customers SET stripe_customer_id = coalesce(stripe_customer_id, $2)
        WHERE id = $1 AND stripe_customer_generation = $3
        RETURNING stripe_customer_id
        """,
        customer_id,
        stripe_customer_id,
        generation,
    )
    return None if row is None else str(row["stripe_customer_id"])


async def subscriptions_fetched_at(conn: Executor, customer_id: uuid.UUID) -> datetime | None:
    fetched: datetime | None = await conn.fetchval(
        "SELECT subscriptions_fetched_at FROM customers WHERE id = $1", customer_id
    )
    return fetched


async def set_subscriptions_fetched_at(
    conn: Executor, customer_id: uuid.UUID, fetched_at: datetime
) -> None:
    await conn.execute(
        "UPDATE customers SET subscriptions_fetched_at = greatest(subscriptions_fetched_at, $2) "
        "WHERE id = $1",
        customer_id,
        fetched_at,
    )


async def update_contact(
    conn: Executor, customer_id: uuid.UUID, *, email: str | None, name: str | None
) -> None:
    """Take the email and name the customer set in Stripe (the portal lets them change both)."""
    await conn.execute(
        "UPDATE customers SET email = $2, name = $3 WHERE id = $1", customer_id, email, name
    )


async def forget_stripe_customer(conn: Executor, stripe_customer_id: str) -> bool:
    """The Stripe customer was deleted: the next checkout creates a new one, under the next
    generation's idempotency key. False when no customer had it (already forgotten)."""
    forgotten = await conn.fetchval(
        """
        UPDATE customers SET stripe_customer_id = NULL,
            stripe_customer_generation = stripe_customer_generation + 1
        WHERE stripe_customer_id = $1
        RETURNING true
        """,
        stripe_customer_id,
    )
    return bool(forgotten)


async def select_customers_with_stripe(conn: Executor) -> list[Customer]:
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM customers WHERE stripe_customer_id IS NOT NULL "  # noqa: S608
        "ORDER BY created_at"
    )
    return [_from_row(row) for row in rows]


@dataclass(frozen=True, slots=True)
class ListedCustomer:
    """A customer as the operator's list shows them: the plan granted now (the default plan
    without a granting subscription) and the status of the subscription that matters."""

    id: uuid.UUID
    external_id: str
    email: str | None
    name: str | None
    stripe_customer_id: str | None
    created_at: datetime
    plan_key: str | None
    plan_name: str | None
    subscription_status: str | None


@dataclass(frozen=True, slots=True)
class Search:
    """Customers whose external id starts with `text`, or whose email does, ignoring case.
    Each is a range of a text_pattern_ops index (migration 0024): from the prefix up to
    `end`, the prefix with its last character moved one code point on (None: no upper bound)."""

    text: str
    end: str | None
    email: str
    email_end: str | None


def search(text: str) -> Search:
    email = text.lower()
    return Search(text, _prefix_end(text), email, _prefix_end(email))


def _prefix_end(prefix: str) -> str | None:
    """The least string above every string that starts with `prefix`, in byte order."""
    while prefix:
        following = ord(prefix[-1]) + 1
        following += 0x800 if 0xD800 <= following <= 0xDFFF else 0  # no surrogates
        if following <= 0x10FFFF:
            return prefix[:-1] + chr(following)
        prefix = prefix[:-1]
    return None


_SEARCHED = """
    AND ((c.external_id ~>=~ $4 AND ($5::text IS NULL OR c.external_id ~<~ $5))
      OR (lower(c.email) ~>=~ $6 AND ($7::text IS NULL OR lower(c.email) ~<~ $7)))
"""


def _list_sql(searched: bool) -> str:
    return f"""
        WITH page AS (
            SELECT c.id, c.external_id, c.email, c.name, c.stripe_customer_id, c.created_at
            FROM customers c
            WHERE (c.created_at, c.id) < ($1, $2) {_SEARCHED if searched else ""}
            ORDER BY c.created_at DESC, c.id DESC LIMIT $3
        )
        SELECT page.*,
               coalesce(sub.plan_key, dp.key) AS plan_key,
               coalesce(sub.plan_name, dp.name) AS plan_name,
               sub.status AS subscription_status
        FROM page
        LEFT JOIN LATERAL (
            SELECT s.status,
                   CASE WHEN {grants_sql("now()", "$8")} THEN pl.key END AS plan_key,
                   CASE WHEN {grants_sql("now()", "$8")} THEN pl.name END AS plan_name
            FROM subscriptions s LEFT JOIN prices p ON p.id = s.price_id
            LEFT JOIN plans pl ON pl.id = p.plan_id
            WHERE s.customer_id = page.id
            ORDER BY {ranking_sql("now()", "$8")}
            LIMIT 1
        ) sub ON true
        LEFT JOIN plans dp ON dp.is_default
        ORDER BY page.created_at DESC, page.id DESC
    """  # noqa: S608 - constant fragments only


_LIST = _list_sql(searched=False).replace("$8", "$4")
_SEARCH = _list_sql(searched=True)


async def select_customer_page(
    conn: Executor, *, found: Search | None, after: After | None, limit: int, grace: timedelta
) -> list[ListedCustomer]:
    """Up to `limit` customers, newest first, after `after` (the first page when None); only
    those `found` matches when given. Through customers_created, or the two prefix indexes."""
    start = after or NEWEST_FIRST
    if found is None:
        rows = await conn.fetch(_LIST, start.created_at, start.id, limit, grace)
    else:
        rows = await conn.fetch(
            _SEARCH, start.created_at, start.id, limit,
            found.text, found.end, found.email, found.email_end, grace,
        )  # fmt: skip
    return [ListedCustomer(**dict(row.items())) for row in rows]
