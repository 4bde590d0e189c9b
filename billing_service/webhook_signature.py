"""Verifying `Stripe-Signature` headers: HMAC-SHA256 of `{t}.{raw body}` under a signing secret.

Several secrets may be configured at once (rotation); a signature valid under any of them is
accepted. Timestamps older than the tolerance, or further in the future than a small clock skew,
are refused, so a captured request cannot be replayed later.
"""

from __future__ import annotations

import hashlib
import hmac
import time

TOLERANCE_SECONDS = 300
FUTURE_SKEW_SECONDS = 30


class SignatureError(Exception):
    """The webhook is not provably from Stripe; the message says why, for our logs."""


def verify_signature(
    payload: bytes,
    header: str | None,
    secrets: list[str],
    *,
    now: float | None = None,
    tolerance: int = TOLERANCE_SECONDS,
) -> int:
    """Return the signed timestamp, or raise SignatureError."""
    if not header:
        raise SignatureError("missing Stripe-Signature header")
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t":
            try:
                timestamp = int(value)
            except ValueError:
                raise SignatureError("timestamp is not an integer") from None
        elif name == "v1":
            signatures.append(value)
    if timestamp is None:
        raise SignatureError("no timestamp in Stripe-Signature")
    if not signatures:
        raise SignatureError("no v1 signature in Stripe-Signature")
    current = time.time() if now is None else now
    if timestamp < current - tolerance:
        raise SignatureError("timestamp outside the tolerance")
    if timestamp > current + FUTURE_SKEW_SECONDS:
        raise SignatureError("timestamp in the future")
    signed = str(timestamp).encode() + b"." + payload
    for secret in secrets:
        expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
        if any(hmac.compare_digest(expected, candidate) for candidate in signatures):
            return timestamp
    raise SignatureError("no signature matches a configured secret")
