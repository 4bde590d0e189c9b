"""SQL for the `orders` table (one-time purchases) and the credits they grant and take back."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from billing_service.db.pages import NEWEST_FIRST, After
from billing_service.db.pool import Executor

# Order statuses in the only order they may move in: a late event never undoes a later one.
STATUSES = ("pending", "failed", "paid", "refunded", "charged_back")


@dataclass(frozen=True, slots=True)
class Order:
    id: uuid.UUID
    customer_id: uuid.UUID
    status: str
    currency: str
    amount_total: int
    customer_email: str | None
    line_items: list[dict[str, Any]]
    stripe_checkout_session_id: str
    stripe_payment_intent_id: str | None
    created_at: datetime


_ORDER = (
    "id, customer_id, status, currency, amount_total, customer_email, line_items, "
    "stripe_checkout_session_id, stripe_payment_intent_id, created_at"
)


async def select_orders(
    conn: Executor, customer_id: uuid.UUID, *, after: After | None, limit: int
) -> list[Order]:
    """The customer's orders, newest first, after `after` (the first page when None): one
    range scan of orders_customer (customer_id, created_at DESC)."""
    start = after or NEWEST_FIRST
    rows = await conn.fetch(
        f"""
        SELECT {_ORDER}
        FROM orders WHERE customer_id = $1 AND (created_at, id) < ($2, $3)
        ORDER BY created_at DESC, id DESC LIMIT $4
        """,  # noqa: S608 - constant columns
        customer_id,
        start.created_at,
        start.id,
        limit,
    )
    return [Order(**dict(row.items())) for row in rows]


async def select_order_by_payment_intent(
    conn: Executor, stripe_payment_intent_id: str
) -> Order | None:
    row = await conn.fetchrow(
        f"SELECT {_ORDER} FROM orders WHERE stripe_payment_intent_id = $1",  # noqa: S608
        stripe_payment_intent_id,
    )
    return None if row is None else Order(**dict(row.items()))


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
    """Record the order as Stripe reports it now. Statuses only move forward (pending → failed
    or paid → refunded or charged_back), so a late event can never undo a later one."""
    order_id: uuid.UUID = await conn.fetchval(
        """
        INSERT INTO orders (customer_id, stripe_checkout_session_id, stripe_payment_intent_id,
                            status, currency, amount_total, customer_email, line_items)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
        ON CONFLICT (stripe_checkout_session_id) DO UPDATE SET
            stripe_payment_intent_id = EXCLUDED.stripe_payment_intent_id,
            status = ($9::text[])[greatest(
                array_position($9::text[], orders.status),
                array_position($9::text[], EXCLUDED.status))],
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
        list(STATUSES),
    )
    return order_id


async def mark_reversed(conn: Executor, order_id: uuid.UUID, status: str) -> bool:
    """Move a paid order to `refunded` or `charged_back`; False when it was not paid (a pending
    or failed order was never paid, and a reversed one stays as it is)."""
    assert status in {"refunded", "charged_back"}
    updated = await conn.fetchval(
        "UPDATE orders SET status = $2 WHERE id = $1 AND status = 'paid' RETURNING true",
        order_id,
        status,
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


@dataclass(frozen=True, slots=True)
class Clawback:
    """Credits of one feature taken back from an order: what it granted, what could be taken
    back (unspent), and what had already been spent."""

    feature: str
    granted: int
    clawed_back: int
    unrecovered: int


async def claw_back_credits(conn: Executor, *, order_id: uuid.UUID, reason: str) -> list[Clawback]:
    """Take the order's credits back from the balance, once per order and feature, never below
    what has been spent; what was already spent is recorded as unrecovered.

    Called inside the event's transaction. The balance row is locked first, as a track does, so
    a concurrent spend either lands before (and is unrecovered) or sees the smaller balance."""
    taken: list[Clawback] = []
    grants = await conn.fetch(
        """
        SELECT g.customer_id, g.feature_id, f.key, g.amount FROM credit_grants g
        JOIN features f ON f.id = g.feature_id
        WHERE g.order_id = $1 ORDER BY g.feature_id
        """,
        order_id,
    )
    for grant in grants:
        unspent: int = (
            await conn.fetchval(
                "SELECT granted - spent FROM credit_balances "
                "WHERE customer_id = $1 AND feature_id = $2 FOR UPDATE",
                grant["customer_id"],
                grant["feature_id"],
            )
            or 0
        )
        clawed_back = max(0, min(grant["amount"], unspent))
        recorded = await conn.fetchval(
            """
            INSERT INTO credit_clawbacks
                (customer_id, feature_id, order_id, reason, granted, clawed_back, unrecovered)
            VALUES ($1, $2, $3, $4, $5::bigint, $6::bigint, $5::bigint - $6::bigint)
            ON CONFLICT (order_id, feature_id) DO NOTHING
            RETURNING true
            """,
            grant["customer_id"],
            grant["feature_id"],
            order_id,
            reason,
            grant["amount"],
            clawed_back,
        )
        if not recorded:
            continue  # taken back before (a refund and a lost dispute of one order, a replay)
        await conn.execute(
            "UPDATE credit_balances SET granted = granted - $3 "
            "WHERE customer_id = $1 AND feature_id = $2",
            grant["customer_id"],
            grant["feature_id"],
            clawed_back,
        )
        taken.append(
            Clawback(grant["key"], grant["amount"], clawed_back, grant["amount"] - clawed_back)
        )
    return taken
