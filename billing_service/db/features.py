"""SQL for the `features` table."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg

from billing_service.db.pool import Executor

_COLUMNS = "id, key, name, kind, unit, active"


@dataclass(frozen=True, slots=True)
class Feature:
    id: uuid.UUID
    key: str
    name: str
    kind: str
    unit: str | None
    active: bool


def _from_row(row: asyncpg.Record) -> Feature:
    return Feature(
        id=row["id"],
        key=row["key"],
        name=row["name"],
        kind=row["kind"],
        unit=row["unit"],
        active=row["active"],
    )


async def select_features(conn: Executor) -> list[Feature]:
    rows = await conn.fetch(f"SELECT {_COLUMNS} FROM features ORDER BY key")  # noqa: S608
    return [_from_row(row) for row in rows]


async def insert_feature(
    conn: Executor, *, key: str, name: str, kind: str, unit: str | None
) -> Feature:
    row = await conn.fetchrow(
        f"""
        INSERT INTO features (key, name, kind, unit) VALUES ($1, $2, $3, $4)
        RETURNING {_COLUMNS}
        """,  # noqa: S608 - constant column list
        key,
        name,
        kind,
        unit,
    )
    assert row is not None
    return _from_row(row)


async def update_feature(
    conn: Executor, feature_id: uuid.UUID, *, name: str, kind: str, unit: str | None, active: bool
) -> None:
    await conn.execute(
        "UPDATE features SET name = $2, kind = $3, unit = $4, active = $5 WHERE id = $1",
        feature_id,
        name,
        kind,
        unit,
        active,
    )
