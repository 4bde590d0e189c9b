"""SQL for the `api_keys` table."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from billing_service.db.pages import OLDEST_FIRST, After
from billing_service.db.pool import Executor

_COLUMNS = "id, name, prefix, scopes, expires_at, revoked_at, last_used_at, created_at"

# How stale `last_used_at` may get before a request writes it again; keeps auth to one read.
LAST_USED_RESOLUTION = "1 minute"


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A stored API key, without its secret."""

    id: uuid.UUID
    name: str
    prefix: str
    scopes: frozenset[str]
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    created_at: datetime


def _from_row(row: asyncpg.Record) -> ApiKey:
    return ApiKey(
        id=row["id"],
        name=row["name"],
        prefix=row["prefix"],
        scopes=frozenset(row["scopes"]),
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
        last_used_at=row["last_used_at"],
        created_at=row["created_at"],
    )


async def insert_api_key(
    conn: Executor,
    *,
    name: str,
    prefix: str,
    key_hash: bytes,
    scopes: list[str],
    expires_at: datetime | None,
) -> ApiKey:
    row = await conn.fetchrow(
        f"""
        INSERT INTO api_keys (name, prefix, key_hash, scopes, expires_at)
        VALUES ($1, $2, $3, $4, $5)
        RETURNING {_COLUMNS}
        """,  # noqa: S608 - constant column list
        name,
        prefix,
        key_hash,
        scopes,
        expires_at,
    )
    assert row is not None
    return _from_row(row)


async def select_usable_key_touching_last_used(conn: Executor, key_hash: bytes) -> ApiKey | None:
    """The unrevoked, unexpired key with this hash, refreshing `last_used_at` in the same trip."""
    row = await conn.fetchrow(
        f"""
        WITH found AS (
            SELECT {_COLUMNS} FROM api_keys
            WHERE key_hash = $1
              AND revoked_at IS NULL
              AND (expires_at IS NULL OR expires_at > now())
        ), touched AS (
            UPDATE api_keys SET last_used_at = now()
            FROM found
            WHERE api_keys.id = found.id
              AND (found.last_used_at IS NULL
                   OR found.last_used_at < now() - interval '{LAST_USED_RESOLUTION}')
        )
        SELECT * FROM found
        """,  # noqa: S608 - constants only
        key_hash,
    )
    return None if row is None else _from_row(row)


async def select_api_keys(
    conn: Executor, *, after: After | None, limit: int | None
) -> list[ApiKey]:
    """Keys oldest first, after `after` (from the start when None); all when no limit."""
    start = after or OLDEST_FIRST
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM api_keys WHERE (created_at, id) > ($1, $2) "  # noqa: S608
        "ORDER BY created_at, id LIMIT $3",
        start.created_at,
        start.id,
        limit,
    )
    return [_from_row(row) for row in rows]


async def select_api_key(conn: Executor, key_id: uuid.UUID) -> ApiKey | None:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM api_keys WHERE id = $1", key_id)  # noqa: S608
    return None if row is None else _from_row(row)


async def revoke_api_key(conn: Executor, key_id: uuid.UUID) -> ApiKey | None:
    """Revoke once; revoking again keeps the first revocation time."""
    row = await conn.fetchrow(
        f"""
        UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())
        WHERE id = $1
        RETURNING {_COLUMNS}
        """,  # noqa: S608 - constant column list
        key_id,
    )
    return None if row is None else _from_row(row)


async def count_api_keys(conn: Executor) -> int:
    count = await conn.fetchval("SELECT count(*) FROM api_keys")
    return int(count)


async def select_usable_key_hashes(conn: Executor) -> list[tuple[uuid.UUID, bytes]]:
    """Id and hash of every unrevoked, unexpired key: what a process must recognise."""
    rows = await conn.fetch(
        """
        SELECT id, key_hash FROM api_keys
        WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())
        """
    )
    return [(row["id"], bytes(row["key_hash"])) for row in rows]


async def select_usable_key_and_hash(
    conn: Executor, key_id: uuid.UUID
) -> tuple[ApiKey, bytes] | None:
    """The unrevoked, unexpired key with this id and its stored hash (which console sessions
    are signed with, so that a session ends with its key)."""
    row = await conn.fetchrow(
        f"""
        SELECT {_COLUMNS}, key_hash FROM api_keys
        WHERE id = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())
        """,  # noqa: S608 - constant column list
        key_id,
    )
    return None if row is None else (_from_row(row), bytes(row["key_hash"]))
