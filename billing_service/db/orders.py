"""SQL for the `orders` table: one-time purchases."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

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


async def select_orders(conn: Executor, customer_id: uuid.UUID) -> list[Order]:
    rows = await conn.fetch(
        """
        SELECT id, status, currency, amount_total, customer_email, line_items,
               stripe_checkout_session_id, stripe_payment_intent_id, created_at
        FROM orders WHERE customer_id = $1 ORDER BY created_at DESC, id
        """,
        customer_id,
    )
    return [Order(**dict(row.items())) for row in rows]
