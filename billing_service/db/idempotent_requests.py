"""SQL for the `idempotent_requests` table: Idempotency-Key reservations and stored responses.

A reservation is owned by the request holding its `lease_token` until `lease_expires_at`; only
the owner stores the response or releases the key, and an expired reservation can be claimed.
"""

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
    # Seconds until the owner's lease ends (negative once it has); None once answered.
    lease_seconds_left: float | None


async def reserve(
    conn: Executor,
    *,
    api_key_id: uuid.UUID,
    operation: str,
    key: str,
    request_hash: bytes,
    token: uuid.UUID,
    lease_seconds: float,
) -> uuid.UUID | None:
    """Claim the key for this request under `token`: a new reservation, or one for the same
    body whose owner's lease has ended. None when another request holds or answered it."""
    reserved: uuid.UUID | None = await conn.fetchval(
        """
        INSERT INTO idempotent_requests
            (api_key_id, operation, idempotency_key, request_hash, lease_token, lease_expires_at)
        VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6))
        ON CONFLICT (api_key_id, operation, idempotency_key) DO UPDATE
        SET lease_token = excluded.lease_token, lease_expires_at = excluded.lease_expires_at
        WHERE idempotent_requests.response_status IS NULL
          AND idempotent_requests.lease_expires_at <= now()
          AND idempotent_requests.request_hash = excluded.request_hash
        RETURNING id
        """,
        api_key_id,
        operation,
        key,
        request_hash,
        token,
        lease_seconds,
    )
    return reserved


async def select(
    conn: Executor, *, api_key_id: uuid.UUID, operation: str, key: str
) -> IdempotentRequest | None:
    row = await conn.fetchrow(
        """
        SELECT id, request_hash, response_status, response_body,
               CASE WHEN response_status IS NULL
                    THEN extract(epoch FROM lease_expires_at - now())::float8 END
                   AS lease_seconds_left
        FROM idempotent_requests
        WHERE api_key_id = $1 AND operation = $2 AND idempotency_key = $3
        """,
        api_key_id,
        operation,
        key,
    )
    return None if row is None else IdempotentRequest(**dict(row.items()))


async def store_response(
    conn: Executor, request_id: uuid.UUID, token: uuid.UUID, status: int, body: Any
) -> bool:
    """Keep the owner's response for replays; False when the reservation is no longer ours."""
    stored = await conn.fetchval(
        """
        UPDATE idempotent_requests SET response_status = $3, response_body = $4
        WHERE id = $1 AND lease_token = $2 AND response_status IS NULL
        RETURNING true
        """,
        request_id,
        token,
        status,
        body,
    )
    return bool(stored)


async def release(conn: Executor, request_id: uuid.UUID, token: uuid.UUID) -> None:
    """Forget the owner's reservation after its request failed, so that a retry runs afresh."""
    await conn.execute(
        "DELETE FROM idempotent_requests "
        "WHERE id = $1 AND lease_token = $2 AND response_status IS NULL",
        request_id,
        token,
    )
