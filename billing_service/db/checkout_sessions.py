"""SQL for the `checkout_sessions` table: the sessions we opened, to know which are ours."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from billing_service.db.pool import Executor
from billing_service.stripe_objects import StripeCheckoutSession


@dataclass(frozen=True, slots=True)
class CheckoutSession:
    customer_id: uuid.UUID
    external_customer_id: str
    stripe_session_id: str
    price_id: uuid.UUID
    price_key: str
    quantity: int
    mode: str
    status: str


async def insert_checkout_session(
    conn: Executor,
    *,
    customer_id: uuid.UUID,
    price_id: uuid.UUID,
    quantity: int,
    session: StripeCheckoutSession,
) -> None:
    """Record a session; the same Stripe session (an idempotent replay) is recorded once."""
    await conn.execute(
        """
        INSERT INTO checkout_sessions
            (customer_id, price_id, quantity, stripe_session_id, mode, status, url, expires_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
        ON CONFLICT (stripe_session_id) DO NOTHING
        """,
        customer_id,
        price_id,
        quantity,
        session.id,
        session.mode,
        session.status,
        session.url,
        session.expires_at,
    )


async def select_checkout_session(conn: Executor, stripe_session_id: str) -> CheckoutSession | None:
    row = await conn.fetchrow(
        """
        SELECT cs.customer_id, c.external_id AS external_customer_id, cs.stripe_session_id,
               cs.price_id, p.lookup_key AS price_key, cs.quantity, cs.mode, cs.status
        FROM checkout_sessions cs
        JOIN customers c ON c.id = cs.customer_id
        JOIN prices p ON p.id = cs.price_id
        WHERE cs.stripe_session_id = $1
        """,
        stripe_session_id,
    )
    return None if row is None else CheckoutSession(**dict(row.items()))


async def update_checkout_status(conn: Executor, stripe_session_id: str, status: str) -> None:
    await conn.execute(
        "UPDATE checkout_sessions SET status = $2 WHERE stripe_session_id = $1 AND status <> $2",
        stripe_session_id,
        status,
    )
