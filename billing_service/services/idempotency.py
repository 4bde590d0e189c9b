"""The Idempotency-Key header: the same key and body replay the first response; another body is
a conflict. The caller's key also seeds the Stripe idempotency key, so a request that is run
again (after a crash) ends at the same Stripe object.

A reservation belongs to the request that made it, for a lease as long as twice the longest that
request can take. A retry that arrives while the first request runs waits for its stored
response (at most that longest time), then answers 409 `request-in-progress` with Retry-After;
it never runs the request beside the first one (Stripe would refuse the second with
`idempotency_key_in_use`). Only the owner stores its response or releases the key; a reservation
whose owner died is claimed by the first retry after its lease has ended.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog

from billing_service.config import Settings
from billing_service.db import idempotent_requests as db
from billing_service.errors import IdempotencyKeyReused, RequestInProgress

logger = structlog.get_logger(__name__)

# How often a waiting retry looks for the first request's response: soon, then less often.
FIRST_POLL_SECONDS = 0.05
MAX_POLL_SECONDS = 0.5
# The Stripe SDK's backoff between attempts: 0.5 s, doubling, at most 5 s.
_SDK_FIRST_BACKOFF = 0.5
_SDK_MAX_BACKOFF = 5.0


def stripe_call_bound(settings: Settings) -> float:
    """The longest one Stripe call can take: every attempt times out, with the SDK's backoff
    between attempts (see docs/operations.md)."""
    retries = settings.stripe_max_network_retries
    backoff = sum(min(_SDK_FIRST_BACKOFF * 2.0**n, _SDK_MAX_BACKOFF) for n in range(retries))
    return float((retries + 1) * settings.stripe_timeout_seconds + backoff)


@dataclass(frozen=True, slots=True)
class Patience:
    """How long a retry waits for the first request, and how long a reservation is honoured."""

    wait_seconds: float
    lease_seconds: float

    @classmethod
    def for_stripe_calls(cls, settings: Settings, calls: int) -> Patience:
        """For a request that makes up to `calls` Stripe calls: a live one always finishes
        within `wait_seconds`, so its lease (twice that) only ends if its process died."""
        longest = calls * stripe_call_bound(settings)
        return cls(wait_seconds=longest, lease_seconds=2 * longest)


@dataclass(frozen=True, slots=True)
class Replay:
    """The stored response of an earlier request with the same key and body."""

    status: int
    body: Any


@dataclass(frozen=True, slots=True)
class Reservation:
    """Permission to run the request; `stripe_key` is what to pass to Stripe. `token` proves
    ownership of the reservation row (both None without an Idempotency-Key)."""

    request_id: uuid.UUID | None
    token: uuid.UUID | None
    stripe_key: str


async def begin(
    pool: asyncpg.Pool,
    *,
    api_key_id: uuid.UUID,
    operation: str,
    key: str | None,
    body: bytes,
    patience: Patience,
) -> Replay | Reservation:
    """Reserve the key for this request, replay its stored response, or wait for the request
    that holds it (bounded by `patience`)."""
    if key is None:
        return Reservation(None, None, stripe_key=f"{operation}:{uuid.uuid4()}")
    digest = hashlib.sha256(f"{api_key_id}:{operation}:{key}".encode()).hexdigest()
    stripe_key = f"{operation}:{digest}"
    request_hash = hashlib.sha256(body).digest()
    token = uuid.uuid4()
    deadline = time.monotonic() + patience.wait_seconds
    poll = FIRST_POLL_SECONDS
    while True:
        reserved = await db.reserve(
            pool, api_key_id=api_key_id, operation=operation, key=key,
            request_hash=request_hash, token=token, lease_seconds=patience.lease_seconds,
        )  # fmt: skip
        if reserved is not None:
            return Reservation(reserved, token, stripe_key)
        existing = await db.select(pool, api_key_id=api_key_id, operation=operation, key=key)
        if existing is not None and bytes(existing.request_hash) != request_hash:
            raise IdempotencyKeyReused(
                "This Idempotency-Key was used with a different request body; use a new key."
            )
        if existing is not None and existing.response_status is not None:
            return Replay(status=existing.response_status, body=existing.response_body)
        # Another request holds the key (or released it a moment ago): wait, then look again.
        lease_left = 0.0 if existing is None else existing.lease_seconds_left or 0.0
        left = deadline - time.monotonic()
        if left <= 0:
            logger.info("idempotency.request_in_progress", operation=operation)
            raise RequestInProgress(
                "The first request with this Idempotency-Key is still running; retry with the "
                "same key after Retry-After seconds to get its response.",
                retry_after=max(1, math.ceil(min(lease_left, patience.wait_seconds))),
            )
        await asyncio.sleep(min(poll, left, max(lease_left, FIRST_POLL_SECONDS)))
        poll = min(2 * poll, MAX_POLL_SECONDS)


async def finish(pool: asyncpg.Pool, reservation: Reservation, status: int, body: Any) -> None:
    """Store the response for replays, if the reservation is still this request's."""
    if reservation.request_id is None or reservation.token is None:
        return
    if not await db.store_response(pool, reservation.request_id, reservation.token, status, body):
        # Only after this request outlived its lease: a retry took the key over and reached
        # the same Stripe object through the same Stripe idempotency key.
        logger.warning("idempotency.lease_lost", request_id=str(reservation.request_id))


async def abandon(pool: asyncpg.Pool, reservation: Reservation) -> None:
    """Release this request's own reservation after it failed; never another request's."""
    if reservation.request_id is not None and reservation.token is not None:
        await db.release(pool, reservation.request_id, reservation.token)
