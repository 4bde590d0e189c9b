"""SQL for the `orders` table: one-time purchases."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from billing_service.db.pages import NEWEST_FIRST, After
from billing_service.db.pool import Executor


@dataclass(frozen=True, slots=True)
class Order:
    id: uuid.UUID
    status: str
    currency: str
    amount_total: int
    customer_email: str | None
    line_items: list[dict[str, Any]]
    stripe_checkout_session_id: str
    stripe_payment_intent_id: str | None
    created_at: datetime


async def select_orders(
    conn: Executor, customer_id: uuid.UUID, *, after: After | None, limit: int
) -> list[Order]:
    """The customer's orders, newest first, after `after` (the first page when None): one
    range scan of orders_customer (customer_id, created_at DESC)."""
    start = after or NEWEST_FIRST
    rows = await conn.fetch(
        """
        SELECT id, status, currency, amount_total, customer_email, line_items,
               stripe_checkout_session_id, stripe_payment_intent_id, created_at
        FROM orders WHERE customer_id = $1 AND (created_at, id) < ($2, $3)
        ORDER BY created_at DESC, id DESC LIMIT $4
        """,
        customer_id,
        start.created_at,
        start.id,
        limit,
    )
    return [Order(**dict(row.items())) for row in rows]


async def upsert_order(
    conn: Executor,
    *,
    customer_id: uuid.UUID,
    stripe_checkout_session_id: str,
    stripe_payment_intent_id: str | None,
    status: str,
    currency: str,
    amount_total: int,
    customer_email: str | None,
    line_items: list[dict[str, Any]],
) -> uuid.UUID:
    """Record the order as Stripe reports it now. Statuses only move forward
    (pending → failed or paid → refunded), so a late event can never undo a later one."""
    order_id: uuid.UUID = await conn.fetchval(
        """
        INSERT INTO orders (customer_id, stripe_checkout_session_id, stripe_payment_intent_id,
                            status, currency, amount_total, customer_email, line_items)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
        ON CONFLICT (stripe_checkout_session_id) DO UPDATE SET
            stripe_payment_intent_id = EXCLUDED.stripe_payment_intent_id,
            status = (ARRAY['pending', 'failed', 'paid', 'refunded'])[greatest(
                array_position(ARRAY['pending', 'failed', 'paid', 'refunded'], orders.status),
                array_position(ARRAY['pending', 'failed', 'paid', 'refunded'], EXCLUDED.status))],
            amount_total = EXCLUDED.amount_total,
            customer_email = EXCLUDED.customer_email
        RETURNING id
        """,
        customer_id,
        stripe_checkout_session_id,
        stripe_payment_intent_id,
        status,
        currency,
        amount_total,
        customer_email,
        line_items,
    )
    return order_id


async def mark_refunded(conn: Executor, stripe_payment_intent_id: str) -> bool:
    updated = await conn.fetchval(
        "UPDATE orders SET status = 'refunded' WHERE stripe_payment_intent_id = $1 "
        "AND status <> 'refunded' RETURNING true",
        stripe_payment_intent_id,
    )
    return bool(updated)


async def grant_credits(
    conn: Executor, *, order_id: uuid.UUID, customer_id: uuid.UUID, grants: dict[uuid.UUID, int]
) -> int:
    """Add the order's credits to the customer's balance, once per order and feature.

    Called inside the event's transaction, so the grant and the balance move together."""
    added = 0
    for feature_id, amount in grants.items():
        inserted = await conn.fetchval(
            """
            INSERT INTO credit_grants (customer_id, feature_id, order_id, amount)
            VALUES ($1, $2, $3, $4)
            ON CONFLICT (order_id, feature_id) DO NOTHING
            RETURNING true
            """,
            customer_id,
            feature_id,
            order_id,
            amount,
        )
        if inserted:
            await conn.execute(
                """
                INSERT INTO credit_balances (customer_id, feature_id, granted)
                VALUES ($1, $2, $3)
                ON CONFLICT (customer_id, feature_id)
                DO UPDATE SET granted = credit_balances.granted + EXCLUDED.granted
                """,
                customer_id,
                feature_id,
                amount,
            )
            added += 1
    return added
