"""Helpers the tests share: database URLs, and webhook signatures made as Stripe makes them."""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import urlsplit, urlunsplit

ADMIN_DATABASE = "postgres"


def with_database(url: str, database: str) -> str:
    """The same server URL pointed at another database (host/port or socket URLs alike)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


def stripe_signature_header(
    payload: bytes, secret: str, *, timestamp: int | None = None, scheme: str = "v1"
) -> str:
    """A `Stripe-Signature` value: HMAC-SHA256 of `{timestamp}.{payload}` under the secret."""
    signed_at = int(time.time()) if timestamp is None else timestamp
    signed = f"{signed_at}.".encode() + payload
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={signed_at},{scheme}={digest}"
