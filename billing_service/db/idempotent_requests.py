"""SQL for the `idempotent_requests` table: Idempotency-Key reservations and stored responses."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from billing_service.db.pool import Executor


@dataclass(frozen=True, slots=True)
class IdempotentRequest:
    id: uuid.UUID
    request_hash: bytes
    response_status: int | None
    response_body: Any


async def reserve(
    conn: Executor, *, api_key_id: uuid.UUID, operation: str, key: str, request_hash: bytes
) -> uuid.UUID | None:
    """Claim the key for this request; None when another request holds or held it."""
    reserved: uuid.UUID | None = await conn.fetchval(
        """
        INSERT INTO idempotent_requests (api_key_id, operation, idempotency_key, request_hash)
        VALUES ($1, $2, $3, $4)
        ON CONFLICT (api_key_id, operation, idempotency_key) DO NOTHING
        RETURNING id
        """,
        api_key_id,
        operation,
        key,
        request_hash,
    )
    return reserved


async def select(
    conn: Executor, *, api_key_id: uuid.UUID, operation: str, key: str
) -> IdempotentRequest | None:
    row = await conn.fetchrow(
        """
        SELECT id, request_hash, response_status, response_body FROM idempotent_requests
        WHERE api_key_id = $1 AND operation = $2 AND idempotency_key = $3
        """,
        api_key_id,
        operation,
        key,
    )
    return None if row is None else IdempotentRequest(**dict(row.items()))


async def store_response(conn: Executor, request_id: uuid.UUID, status: int, body: Any) -> None:
    await conn.execute(
        "UPDATE idempotent_requests SET response_status = $2, response_body = $3 WHERE id = $1",
        request_id,
        status,
        body,
    )


async def release(conn: Executor, request_id: uuid.UUID) -> None:
    """Forget a reservation whose request failed, so that a retry runs afresh."""
    await conn.execute(
        "DELETE FROM idempotent_requests WHERE id = $1 AND response_status IS NULL", request_id
    )
