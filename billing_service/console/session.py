"""Console sessions: the signed cookie an admin key's sign-in becomes, and the CSRF tokens of
the console's forms.

The cookie holds the key's id, an expiry and a random nonce, signed with HMAC-SHA256 under a
secret derived from the settings' secrets and the key's stored hash. It never holds the key
itself, cannot be made without both, and stops working the moment its key is revoked or
expires (each request reads the key again). Every form of a session carries a token derived
from the session's nonce; the sign-in form, which has no session yet, pairs a random token in
its field with the same token in a short-lived cookie of its own.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
import uuid
from dataclasses import dataclass

import asyncpg

from billing_service.config import Settings
from billing_service.db.api_keys import ApiKey
from billing_service.services import api_keys
from billing_service.services.api_keys import Scope

COOKIE = "billing_console"
SIGN_IN_COOKIE = "billing_console_sign_in"
COOKIE_PATH = "/console"
SIGN_IN_SECONDS = 600

_COOKIE_VALUE = re.compile(
    r"v1\.([0-9a-f]{32})\.([0-9]{1,12})\.([A-Za-z0-9_-]{22})\.([A-Za-z0-9_-]{43})"
)
_TOKEN = re.compile(r"[A-Za-z0-9_-]{22,64}")


@dataclass(frozen=True, slots=True)
class Session:
    """A signed-in admin key: who, until when (Unix seconds), and its forms' CSRF token."""

    key: ApiKey
    expires: int
    csrf: str


def settings_secret(settings: Settings) -> bytes:
    """The signing secret: a digest of every secret the settings hold (the database URL, which
    serving always has, and the Stripe and SMTP secrets when set). Replicas with the same
    settings agree on it; changing any of them signs everyone out."""
    parts = [b"billing-console-session-v1"]
    secret_settings = (
        settings.database_url,
        settings.stripe_secret_key,
        *settings.stripe_webhook_secrets,
        settings.smtp_password,
    )
    parts.extend(s.get_secret_value().encode() for s in secret_settings if s is not None)
    return hashlib.sha256(b"\0".join(parts)).digest()


def _mac(secret: bytes, purpose: bytes, key_hash: bytes, message: str) -> str:
    digest = hmac.new(secret, b"\0".join([purpose, key_hash, message.encode()]), hashlib.sha256)
    return base64.urlsafe_b64encode(digest.digest()).decode().rstrip("=")


def cookie_value(settings: Settings, key: ApiKey, key_hash: bytes, *, now: float) -> str:
    """A new session of `key`, valid for `BILLING_CONSOLE_SESSION_MINUTES` from `now`."""
    expires = int(now) + settings.console_session_minutes * 60
    payload = f"{key.id.hex}.{expires}.{secrets.token_urlsafe(16)}"
    return f"v1.{payload}.{_mac(settings_secret(settings), b'session', key_hash, payload)}"


async def read_session(
    pool: asyncpg.Pool, settings: Settings, value: str | None, *, now: float | None = None
) -> Session | None:
    """The session a cookie value proves, or None: malformed, expired, forged, of a key that is
    revoked, expired or no longer admin."""
    match = _COOKIE_VALUE.fullmatch(value or "")
    if match is None:
        return None
    key_id, expires, nonce, signature = match.groups()
    if int(expires) <= (time.time() if now is None else now):
        return None
    found = await api_keys.usable_key_and_hash(pool, uuid.UUID(key_id))
    if found is None:
        return None
    key, key_hash = found
    secret = settings_secret(settings)
    expected = _mac(secret, b"session", key_hash, f"{key_id}.{expires}.{nonce}")
    if not hmac.compare_digest(expected, signature) or Scope.ADMIN not in key.scopes:
        return None
    return Session(key=key, expires=int(expires), csrf=_mac(secret, b"csrf", key_hash, nonce))


def csrf_matches(expected: str, given: str | None) -> bool:
    """Whether a form's token is the one its session (or sign-in cookie) expects."""
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())


def new_sign_in_token() -> str:
    return secrets.token_urlsafe(24)


def sign_in_token(value: str | None) -> str | None:
    """The sign-in cookie's token when it is well formed."""
    return value if value is not None and _TOKEN.fullmatch(value) else None
