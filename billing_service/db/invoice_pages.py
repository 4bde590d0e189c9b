"""SQL for the `invoice_pages` table: pages of customers' invoice lists, as Stripe answered."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from billing_service.db.pool import Executor


@dataclass(frozen=True, slots=True)
class PageKey:
    """Which page: a customer's Stripe customer, after which invoice, how many."""

    customer_id: uuid.UUID
    stripe_customer_id: str
    starting_after: str | None
    page_size: int


@dataclass(frozen=True, slots=True)
class CachedPage:
    invoices: list[dict[str, Any]]
    has_more: bool
    age: timedelta  # since it was fetched, by the database's clock


async def select_page(conn: Executor, key: PageKey, *, max_age: timedelta) -> CachedPage | None:
    row = await conn.fetchrow(
        """
        SELECT invoices, has_more, now() - fetched_at AS age FROM invoice_pages
        WHERE customer_id = $1 AND stripe_customer_id = $2 AND starting_after = $3
          AND page_size = $4 AND fetched_at > now() - $5::interval
        """,
        key.customer_id,
        key.stripe_customer_id,
        key.starting_after or "",
        key.page_size,
        max_age,
    )
    if row is None:
        return None
    return CachedPage(row["invoices"], row["has_more"], max(row["age"], timedelta(0)))


async def store_page(
    conn: Executor,
    key: PageKey,
    *,
    invoices: list[dict[str, Any]],
    has_more: bool,
    keep_for: timedelta,
) -> None:
    """Keep the page as fetched now, replacing an older copy; drops the customer's pages older
    than `keep_for`, so the table holds what was read lately and no more."""
    await conn.execute(
        """
        WITH pruned AS (
            DELETE FROM invoice_pages
            WHERE customer_id = $1 AND fetched_at < now() - $7::interval
              AND (stripe_customer_id, starting_after, page_size) <> ($2, $3, $4)
        )
        INSERT INTO invoice_pages
            (customer_id, stripe_customer_id, starting_after, page_size, invoices, has_more)
        VALUES ($1, $2, $3, $4, $5, $6)
        ON CONFLICT (customer_id, stripe_customer_id, starting_after, page_size) DO UPDATE
        SET invoices = EXCLUDED.invoices, has_more = EXCLUDED.has_more, fetched_at = now()
        """,
        key.customer_id,
        key.stripe_customer_id,
        key.starting_after or "",
        key.page_size,
        invoices,
        has_more,
        keep_for,
    )


async def forget_customer_pages(conn: Executor, customer_id: uuid.UUID) -> None:
    """The customer's invoices changed in Stripe: the next read fetches them afresh."""
    await conn.execute("DELETE FROM invoice_pages WHERE customer_id = $1", customer_id)
