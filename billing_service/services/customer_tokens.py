"""Customer tokens: a front end may show a customer their remaining usage, and nothing else.

A token reads `GET /v1/customers/{its customer}/entitlements` until it expires (15 minutes by
default). A member's token reads only `GET /v1/customers/{its customer}/members/{its member}/
entitlements`. Only its SHA-256 is stored, as for API keys.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from billing_service.db import customer_tokens as db
from billing_service.db import members
from billing_service.db.usage import ensure_customer
from billing_service.errors import NotFound

TOKEN_PREFIX = "bct_"  # noqa: S105 - a public prefix, not a secret
DEFAULT_TTL = timedelta(minutes=15)


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def is_customer_token(credential: str) -> bool:
    return credential.startswith(TOKEN_PREFIX)


@dataclass(frozen=True, slots=True)
class TokenHolder:
    """Whose entitlements a token reads: a customer's, or one member's of that customer."""

    customer: str
    member: str | None


async def issue_token(
    pool: asyncpg.Pool, customer_key: str, *, now: datetime, ttl: timedelta = DEFAULT_TTL,
    member: str | None = None,
) -> tuple[str, datetime]:  # fmt: skip
    """A token for the customer, or for one member holding a seat of theirs."""
    customer_id = await ensure_customer(pool, customer_key)
    if member is not None and await members.select_member(pool, customer_id, member) is None:
        raise NotFound(f"Customer '{customer_key}' has no member '{member}'.")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    expires_at = now + ttl
    await db.insert_token(pool, customer_id, hash_token(token), expires_at, member)
    return token, expires_at


async def token_customer(pool: asyncpg.Pool, token: str) -> TokenHolder | None:
    """Whose entitlements an unexpired token reads, or None."""
    if not is_customer_token(token) or len(token) > 128:
        return None
    found = await db.select_token_customer(pool, hash_token(token))
    return None if found is None else TokenHolder(*found)
