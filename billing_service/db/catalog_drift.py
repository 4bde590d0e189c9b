"""SQL for the `catalog_drift` table: changes to our Stripe objects made outside the catalog."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from billing_service.db.pool import Executor


@dataclass(frozen=True, slots=True)
class Drift:
    id: uuid.UUID
    stripe_object_id: str
    object_type: str
    event_type: str
    description: str
    created_at: datetime


async def insert_drift(
    conn: Executor, *, stripe_object_id: str, object_type: str, event_type: str, description: str
) -> bool:
    """Record drift once: the same open finding for the same object is not repeated."""
    inserted = await conn.fetchval(
        """
        INSERT INTO catalog_drift (stripe_object_id, object_type, event_type, description)
        VALUES ($1, $2, $3, $4)
        ON CONFLICT (stripe_object_id, description) WHERE resolved_at IS NULL DO NOTHING
        RETURNING true
        """,
        stripe_object_id,
        object_type,
        event_type,
        description,
    )
    return bool(inserted)


async def select_open_drift(conn: Executor) -> list[Drift]:
    rows = await conn.fetch(
        "SELECT id, stripe_object_id, object_type, event_type, description, created_at "
        "FROM catalog_drift WHERE resolved_at IS NULL ORDER BY created_at, id"
    )
    return [Drift(**dict(row.items())) for row in rows]


async def resolve_reported_drift(conn: Executor, drift_ids: list[uuid.UUID]) -> None:
    """Settle findings that were shown to an operator and acted upon."""
    await conn.execute(
        "UPDATE catalog_drift SET resolved_at = now() "
        "WHERE resolved_at IS NULL AND id = ANY($1::uuid[])",
        drift_ids,
    )


async def resolve_drift(conn: Executor, stripe_object_ids: list[str]) -> None:
    await conn.execute(
        "UPDATE catalog_drift SET resolved_at = now() "
        "WHERE resolved_at IS NULL AND stripe_object_id = ANY($1::text[])",
        stripe_object_ids,
    )
