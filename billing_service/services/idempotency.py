"""The Idempotency-Key header: the same key and body replay the first response; another body is
a conflict. The caller's key also seeds the Stripe idempotency key, so concurrent duplicates end
at the same Stripe object even before the first response is stored."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg

from billing_service.db import idempotent_requests as db
from billing_service.errors import IdempotencyKeyReused


@dataclass(frozen=True, slots=True)
class Replay:
    """The stored response of an earlier request with the same key and body."""

    status: int
    body: Any


@dataclass(frozen=True, slots=True)
class Reservation:
    """Permission to run the request; `stripe_key` is what to pass to Stripe."""

    request_id: uuid.UUID | None
    stripe_key: str


async def begin(
    pool: asyncpg.Pool, *, api_key_id: uuid.UUID, operation: str, key: str | None, body: bytes
) -> Replay | Reservation:
    if key is None:
        return Reservation(request_id=None, stripe_key=f"{operation}:{uuid.uuid4()}")
    digest = hashlib.sha256(f"{api_key_id}:{operation}:{key}".encode()).hexdigest()
    stripe_key = f"{operation}:{digest}"
    request_hash = hashlib.sha256(body).digest()
    for _ in range(2):  # a reservation released between our two statements is claimed again
        reserved = await db.reserve(
            pool, api_key_id=api_key_id, operation=operation, key=key, request_hash=request_hash
        )
        if reserved is not None:
            return Reservation(request_id=reserved, stripe_key=stripe_key)
        existing = await db.select(pool, api_key_id=api_key_id, operation=operation, key=key)
        if existing is None:
            continue
        if bytes(existing.request_hash) != request_hash:
            raise IdempotencyKeyReused(
                "This Idempotency-Key was used with a different request body; use a new key."
            )
        if existing.response_status is not None:
            return Replay(status=existing.response_status, body=existing.response_body)
        # The same request is in flight: it will reach the same Stripe object through stripe_key.
        return Reservation(request_id=existing.id, stripe_key=stripe_key)
    return Reservation(request_id=None, stripe_key=stripe_key)


async def finish(pool: asyncpg.Pool, reservation: Reservation, status: int, body: Any) -> None:
    if reservation.request_id is not None:
        await db.store_response(pool, reservation.request_id, status, body)


async def abandon(pool: asyncpg.Pool, reservation: Reservation) -> None:
    if reservation.request_id is not None:
        await db.release(pool, reservation.request_id)
