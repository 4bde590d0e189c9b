"""Delivering billable units to Stripe's meters, exactly once, off the request path.

Each round leases a batch of due outbox rows (db/meter_events.py), sends them concurrently, and
records each outcome. Every event carries its `identifier`, so a resend after a crash, a
timeout or a lost answer is never counted twice: Stripe refuses an identifier it has already
counted, which means the units were delivered.
Transient failures retry with exponential backoff; a refusal is kept as `rejected` with Stripe's
reason, listed at GET /v1/meter-events and replayable.
"""

from __future__ import annotations

import asyncio

import asyncpg
import structlog

from billing_service.db import meter_events as db
from billing_service.db.meter_events import DueMeterEvent
from billing_service.errors import StripeRequestFailed, StripeUnavailable
from billing_service.stripe_gateway import StripeGateway

logger = structlog.get_logger(__name__)

BATCH_SIZE = 100
# Longer than one send can take (the SDK's bounded retries and timeouts), so a live worker
# never sees its lease lapse; a dead worker's batch is due again after it.
LEASE_SECONDS = 120.0
MAX_BACKOFF_SECONDS = 3600.0
CONCURRENT_SENDS = 8


def _idempotency_key(event: DueMeterEvent) -> str:
    """A new key per attempt: Stripe keeps a 500 under its key, so reusing it would replay the
    failure. The identifier, not the key, is what keeps a resend from counting twice."""
    return f"meter_event:{event.identifier}:{event.replays}:{event.attempts}"


def backoff_seconds(attempts: int) -> float:
    """2, 4, 8 … seconds after each failed attempt, at most an hour."""
    return min(2.0 ** max(attempts, 1), MAX_BACKOFF_SECONDS)


class MeterEventDelivery:
    """The worker step: `deliver_due` returns how many events it settled."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        gateway: StripeGateway,
        *,
        batch_size: int = BATCH_SIZE,
        lease_seconds: float = LEASE_SECONDS,
    ) -> None:
        self.pool = pool
        self.gateway = gateway
        self.batch_size = batch_size
        self.lease_seconds = lease_seconds
        self._sends = asyncio.Semaphore(CONCURRENT_SENDS)

    async def deliver_due(self) -> int:
        due = await db.lease_due(self.pool, limit=self.batch_size, lease_seconds=self.lease_seconds)
        if not due:
            return 0
        outcomes = await asyncio.gather(*(self._send(event) for event in due))
        delivered = [event.id for event, ok in zip(due, outcomes, strict=True) if ok]
        if delivered:
            await db.mark_sent(self.pool, delivered)
        logger.info("meter_events.delivered", sent=len(delivered), leased=len(due))
        return len(due)

    async def _send(self, event: DueMeterEvent) -> bool:
        """Send one event; True once Stripe has it, else the failure is recorded."""
        if event.stripe_customer_id is None:
            await db.reject(self.pool, event.id, error="the customer has no Stripe customer")
            return False
        try:
            async with self._sends:
                accepted = await self.gateway.create_meter_event(
                    event_name=event.event_name,
                    stripe_customer_id=event.stripe_customer_id,
                    value=event.value,
                    identifier=event.identifier,
                    timestamp=int(event.occurred_at.timestamp()),
                    idempotency_key=_idempotency_key(event),
                )
        except StripeUnavailable as exc:
            delay = backoff_seconds(event.attempts)
            await db.retry_later(self.pool, event.id, error=str(exc), delay=delay)
            logger.warning("meter_events.retry", meter_event_id=str(event.id), delay=delay)
            return False
        except StripeRequestFailed as exc:
            await db.reject(self.pool, event.id, error=str(exc))
            logger.warning("meter_events.rejected", meter_event_id=str(event.id))
            return False
        if not accepted:
            logger.info("meter_events.already_delivered", meter_event_id=str(event.id))
        return True
