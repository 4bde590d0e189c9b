"""API keys: minting, authenticating, listing and revoking the credentials of calling services.

A key is `bsk_` plus 256 random bits. Only its SHA-256 is stored: a fast hash is enough because
the secret is random, and it keeps authentication to one indexed lookup on the hot path.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

import asyncpg

from billing_service.db import api_keys as db
from billing_service.db.api_keys import ApiKey
from billing_service.db.pages import After
from billing_service.db.pool import Executor
from billing_service.errors import FieldError, NotFound, ValidationFailed
from billing_service.services.key_cache import KeyCache

KEY_PREFIX = "bsk_"
_SHOWN_PREFIX_LENGTH = len(KEY_PREFIX) + 8
_MAX_KEY_LENGTH = 128


class Scope(StrEnum):
    """What a key may do. `admin` is the operator's key and implies every other scope."""

    ADMIN = "admin"
    BILLING = "billing"
    USAGE = "usage"


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A freshly minted key: the only moment the plaintext exists."""

    key: ApiKey
    plaintext: str


def hash_key(plaintext: str) -> bytes:
    return hashlib.sha256(plaintext.encode()).digest()


def key_allows(key: ApiKey, accepted: tuple[Scope, ...]) -> bool:
    """True when the key holds `admin` or any one of the accepted scopes."""
    return Scope.ADMIN in key.scopes or any(scope in key.scopes for scope in accepted)


async def create_key(
    pool: asyncpg.Pool,
    *,
    name: str,
    scopes: list[Scope],
    expires_at: datetime | None = None,
) -> IssuedKey:
    errors = []
    if not name.strip() or len(name) > 200:
        errors.append(FieldError("name", "must be 1 to 200 characters"))
    if not scopes:
        errors.append(FieldError("scopes", "must name at least one scope"))
    if expires_at is not None and expires_at.tzinfo is None:
        errors.append(FieldError("expires_at", "must include a UTC offset"))
    elif expires_at is not None and expires_at <= datetime.now(UTC):
        errors.append(FieldError("expires_at", "must be in the future"))
    if errors:
        raise ValidationFailed(errors)

    return await _mint(pool, name=name.strip(), scopes=scopes, expires_at=expires_at)


def looks_like_key(presented: str) -> bool:
    """Our prefix and a sane length: anything else is refused without hashing or a query."""
    return presented.startswith(KEY_PREFIX) and len(presented) <= _MAX_KEY_LENGTH


async def authenticate(
    pool: asyncpg.Pool, presented: str, cache: KeyCache | None = None
) -> ApiKey | None:
    """The usable key matching `presented`, or None for unknown, revoked or expired keys alike."""
    if not looks_like_key(presented):
        return None
    key_hash = hash_key(presented)
    if cache is not None and (cached := cache.get(key_hash)) is not None:
        return cached
    return await read_key(pool, key_hash, cache)


async def read_key(pool: asyncpg.Pool, key_hash: bytes, cache: KeyCache | None) -> ApiKey | None:
    """Look the key up in the database (stamping its last use), and tell the cache."""
    generation = cache.generation if cache is not None else 0
    key = await db.select_usable_key_touching_last_used(pool, key_hash)
    if cache is not None:
        cache.remember(key_hash, key, generation)
    return key


async def list_keys(
    pool: asyncpg.Pool, *, after: After | None = None, limit: int | None = None
) -> list[ApiKey]:
    """Keys oldest first: a page after `after`, or every key when no limit is given."""
    return await db.select_api_keys(pool, after=after, limit=limit)


async def revoke_key(pool: asyncpg.Pool, key_id: uuid.UUID) -> ApiKey:
    key = await db.revoke_api_key(pool, key_id)
    if key is None:
        raise NotFound(f"No API key has id {key_id}.")
    return key


async def ensure_bootstrap_admin_key(pool: asyncpg.Pool) -> IssuedKey | None:
    """On a database with no keys at all, mint the first admin key; otherwise do nothing.

    A transaction-scoped advisory lock makes this once-only even when replicas start together.
    """
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('billing.bootstrap_admin_key'))")
        if await db.count_api_keys(conn) > 0:
            return None
        return await _mint(conn, name="bootstrap-admin", scopes=[Scope.ADMIN], expires_at=None)


async def _mint(
    conn: Executor, *, name: str, scopes: list[Scope], expires_at: datetime | None
) -> IssuedKey:
    plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
    key = await db.insert_api_key(
        conn,
        name=name,
        prefix=plaintext[:_SHOWN_PREFIX_LENGTH],
        key_hash=hash_key(plaintext),
        scopes=sorted({scope.value for scope in scopes}),
        expires_at=expires_at,
    )
    return IssuedKey(key=key, plaintext=plaintext)


async def usable_key_and_hash(pool: asyncpg.Pool, key_id: uuid.UUID) -> tuple[ApiKey, bytes] | None:
    """A usable key by id with its stored hash, or None once it is revoked or expired."""
    return await db.select_usable_key_and_hash(pool, key_id)
