"""SQL for the `customer_tokens` table: short-lived read tokens for one customer."""

from __future__ import annotations

import uuid
from datetime import datetime

from billing_service.db.pool import Executor


async def insert_token(
    conn: Executor, customer_id: uuid.UUID, token_hash: bytes, expires_at: datetime,
    member_id: str | None = None,
) -> None:  # fmt: skip
    await conn.execute(
        "INSERT INTO customer_tokens (customer_id, token_hash, expires_at, member_id) "
        "VALUES ($1, $2, $3, $4)",
        customer_id,
        token_hash,
        expires_at,
        member_id,
    )


async def select_token_customer(conn: Executor, token_hash: bytes) -> tuple[str, str | None] | None:
    """The customer (their external id) an unexpired token belongs to, and the member it is
    limited to (None: the whole customer)."""
    row = await conn.fetchrow(
        """
        SELECT c.external_id, t.member_id
        FROM customer_tokens t JOIN customers c ON c.id = t.customer_id
        WHERE t.token_hash = $1 AND t.expires_at > now()
        """,
        token_hash,
    )
    return None if row is None else (row["external_id"], row["member_id"])


async def select_live_token_hashes(conn: Executor, limit: int) -> list[tuple[bytes, datetime]]:
    """Hash and expiry of unexpired tokens, at most `limit` of them."""
    rows = await conn.fetch(
        "SELECT token_hash, expires_at FROM customer_tokens WHERE expires_at > now() LIMIT $1",
        limit,
    )
    return [(bytes(row["token_hash"]), row["expires_at"]) for row in rows]
