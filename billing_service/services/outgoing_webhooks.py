"""Webhooks to calling apps, signed in the Standard Webhooks scheme and delivered from the outbox.

Events are written to the outbox in the transaction of the change they report, with one pending
delivery per interested endpoint; a worker sends them. A delivery keeps its `webhook-id` (the
event's id) across retries, so receivers can drop duplicates. Retries back off for about a day;
an endpoint that keeps failing is disabled. Endpoints must be public addresses (`outbound.py`),
checked when registered and again, after DNS, at every delivery; the delivery log records only
the status code or a fixed phrase, never what the receiver said.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time

import asyncpg
import orjson
import structlog

from billing_service.db import outbox
from billing_service.db.outbox import Delivery, Endpoint
from billing_service.errors import FieldError, ValidationFailed
from billing_service.outbound import DestinationRefused, OutboundPolicy
from billing_service.outbound_http import DeliveryFailed, WebhookClient

logger = structlog.get_logger(__name__)

EVENT_TYPES = (
    "customer.entitlements_updated",
    "usage.soft_limit_reached",
    "usage.limit_reached",
    "order.completed",
    "subscription.updated",
    "payment.failed",
    "dispute.updated",
    "subscription.seats_changed",
    "member.limit_reached",
    "team.seats_full",
)
# Seconds before each retry: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (about a day in all).
RETRY_DELAYS = (5, 300, 1800, 7200, 18000, 36000, 36000)
DISABLE_AFTER_FAILURES = 30
LEASE_SECONDS = 60.0
SECRET_PREFIX = "whsec_"  # noqa: S105 - the public prefix of Standard Webhooks secrets


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: v1, base64 HMAC-SHA256 of `id.timestamp.body`."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def message_id(delivery: Delivery) -> str:
    return f"msg_{delivery.event_id.hex}"


def message_body(delivery: Delivery) -> bytes:
    return orjson.dumps(
        {
            "type": delivery.event_type,
            "timestamp": delivery.event_created_at.isoformat(),
            "data": delivery.payload,
        }
    )


async def register_endpoint(
    pool: asyncpg.Pool, policy: OutboundPolicy, *, url: str, event_types: list[str]
) -> tuple[Endpoint, str]:
    """A new endpoint and its signing secret (shown once to the admin who registers it); a URL
    the policy refuses is a 422 on `url`."""
    try:
        url = await policy.vet_new_url(url)
    except DestinationRefused as exc:
        raise ValidationFailed([FieldError("url", str(exc))]) from None
    secret = new_secret()
    endpoint = await outbox.insert_endpoint(pool, url=url, event_types=event_types, secret=secret)
    return endpoint, secret


def retry_delay(attempts: int) -> float | None:
    """Seconds until the next attempt after `attempts` failures, or None to give up."""
    return float(RETRY_DELAYS[attempts - 1]) if attempts <= len(RETRY_DELAYS) else None


class DeliveryWorker:
    """Sends due deliveries; several workers (replicas) may share the outbox."""

    def __init__(self, pool: asyncpg.Pool, client: WebhookClient) -> None:
        self.pool = pool
        self.client = client

    async def deliver_due(self, *, limit: int = 20) -> int:
        claimed = await outbox.claim_due_deliveries(
            self.pool, limit=limit, lease_seconds=LEASE_SECONDS
        )
        for delivery in claimed:
            await self.deliver(delivery)
        return len(claimed)

    async def deliver(self, delivery: Delivery) -> None:
        body = message_body(delivery)
        timestamp = int(time.time())
        msg_id = message_id(delivery)
        headers = {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(delivery.secret, msg_id, timestamp, body),
        }
        log = logger.bind(webhook_id=msg_id, endpoint_id=str(delivery.endpoint_id))
        status_code: int | None = None
        try:
            status_code = await self.client.post(delivery.url, content=body, headers=headers)
            error = None if 200 <= status_code < 300 else f"HTTP {status_code}"
        except DeliveryFailed as exc:
            error = exc.summary
            log = log.bind(reason=exc.reason)
        async with self.pool.acquire() as conn:
            if error is None:
                await outbox.mark_delivered(conn, delivery, status_code or 200)
                log.info("outgoing_webhook.delivered", attempts=delivery.attempts)
                return
            disabled = await outbox.mark_attempt_failed(
                conn,
                delivery,
                status_code=status_code,
                error=error,
                retry_in_seconds=retry_delay(delivery.attempts),
                disable_after=DISABLE_AFTER_FAILURES,
            )
        log.warning("outgoing_webhook.failed", attempts=delivery.attempts, error=error)
        if disabled:
            log.warning("outgoing_webhook.endpoint_disabled")
