"""Verifying the service's outgoing webhooks (Standard Webhooks), without extra dependencies.

The service signs `{webhook-id}.{webhook-timestamp}.{body}` with HMAC-SHA256 under the endpoint's
`whsec_…` secret and sends `webhook-signature: v1,<base64>`; a delivery is trusted only when one
of its signatures matches and its timestamp is within the tolerance (replays are refused).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from billing_client.errors import InvalidWebhook

SECRET_PREFIX = "whsec_"  # noqa: S105 - the public prefix of Standard Webhooks secrets
DEFAULT_TOLERANCE_SECONDS = 300


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """A verified delivery: `id` is the same for every retry (use it to drop duplicates)."""

    id: str
    type: str
    timestamp: datetime
    data: dict[str, Any] = field(hash=False)

    @property
    def customer_id(self) -> str | None:
        value = self.data.get("customer_id")
        return value if isinstance(value, str) else None


def verify_webhook(
    secret: str,
    body: bytes | str,
    headers: Mapping[str, str],
    *,
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> WebhookEvent:
    """The event of a delivery whose signature verifies under `secret`; else `InvalidWebhook`.

    Pass the raw request body, exactly as received, and the request's headers.
    """
    raw = body.encode() if isinstance(body, str) else body
    lowered = {name.lower(): value for name, value in headers.items()}
    message_id = lowered.get("webhook-id")
    stamp = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not (message_id and stamp and signatures):
        raise InvalidWebhook("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        signed_at = int(stamp)
    except ValueError:
        raise InvalidWebhook("webhook-timestamp is not a number") from None
    current = time.time() if now is None else now
    if abs(current - signed_at) > tolerance_seconds:
        raise InvalidWebhook("webhook-timestamp is outside the tolerance")
    expected = _signature(_key(secret), message_id, signed_at, raw)
    offered = [s.split(",", 1)[1] for s in signatures.split() if s.startswith("v1,")]
    if not any(hmac.compare_digest(expected, candidate) for candidate in offered):
        raise InvalidWebhook("no signature matches")
    try:
        payload = json.loads(raw)
        return WebhookEvent(
            id=message_id,
            type=str(payload["type"]),
            timestamp=datetime.fromtimestamp(signed_at, UTC),
            data=dict(payload["data"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidWebhook("the body is not a webhook event") from exc


def _key(secret: str) -> bytes:
    try:
        return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except binascii.Error:
        raise InvalidWebhook("the secret is not a whsec_ secret") from None


def _signature(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{message_id}.{timestamp}.".encode() + body
    return base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
