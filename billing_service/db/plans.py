"""SQL for the `plans` table, including its Stripe sync bookkeeping."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg

from billing_service.db.pool import Executor

_COLUMNS = (
    "id, key, name, description, is_default, active, trial_days, display_order, public, "
    "max_seats, stripe_product_id, sync_generation, synced_generation"
)


@dataclass(frozen=True, slots=True)
class Plan:
    id: uuid.UUID
    key: str
    name: str
    description: str
    is_default: bool
    active: bool
    trial_days: int
    display_order: int
    public: bool
    max_seats: int | None
    stripe_product_id: str | None
    sync_generation: int
    synced_generation: int


@dataclass(frozen=True, slots=True)
class PlanFields:
    """The catalog-managed fields of a plan, as written by `catalog apply`."""

    name: str
    description: str
    is_default: bool
    trial_days: int
    display_order: int
    public: bool = True
    max_seats: int | None = None


def _from_row(row: asyncpg.Record) -> Plan:
    return Plan(**dict(row.items()))


async def select_plans(conn: Executor) -> list[Plan]:
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM plans ORDER BY display_order, key"  # noqa: S608
    )
    return [_from_row(row) for row in rows]


async def insert_plan(conn: Executor, key: str, fields: PlanFields) -> Plan:
    row = await conn.fetchrow(
        f"""
        INSERT INTO plans (key, name, description, is_default, trial_days, display_order, public,
                           max_seats)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
        RETURNING {_COLUMNS}
        """,  # noqa: S608 - constant column list
        key,
        fields.name,
        fields.description,
        fields.is_default,
        fields.trial_days,
        fields.display_order,
        fields.public,
        fields.max_seats,
    )
    assert row is not None
    return _from_row(row)


async def update_plan(
    conn: Executor, plan_id: uuid.UUID, fields: PlanFields, *, active: bool
) -> None:
    """Write the plan's fields; a change Stripe's product shows marks the plan for re-sync."""
    await conn.execute(
        """
        UPDATE plans
        SET name = $2, description = $3, is_default = $4, trial_days = $5, display_order = $6,
            active = $7, public = $8, max_seats = $9,
            sync_generation = sync_generation
                + CASE WHEN (name, description, active) IS DISTINCT FROM ($2, $3, $7)
                       THEN 1 ELSE 0 END
        WHERE id = $1
        """,
        plan_id,
        fields.name,
        fields.description,
        fields.is_default,
        fields.trial_days,
        fields.display_order,
        active,
        fields.public,
        fields.max_seats,
    )


async def clear_default_plan(conn: Executor) -> None:
    """Unset the current default so another plan can take it within the same transaction."""
    await conn.execute("UPDATE plans SET is_default = false WHERE is_default")


async def archive_plan(conn: Executor, plan_id: uuid.UUID) -> None:
    await conn.execute(
        "UPDATE plans SET active = false, is_default = false, "
        "sync_generation = sync_generation + 1 WHERE id = $1",
        plan_id,
    )


async def mark_plan_for_sync(conn: Executor, plan_id: uuid.UUID) -> None:
    await conn.execute(
        "UPDATE plans SET sync_generation = sync_generation + 1 WHERE id = $1", plan_id
    )


async def select_plans_pending_sync(conn: Executor) -> list[Plan]:
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM plans WHERE sync_generation > synced_generation "  # noqa: S608
        "ORDER BY display_order, key"
    )
    return [_from_row(row) for row in rows]


async def select_plan(conn: Executor, plan_id: uuid.UUID) -> Plan:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM plans WHERE id = $1", plan_id)  # noqa: S608
    assert row is not None
    return _from_row(row)


async def set_stripe_product_id(conn: Executor, plan_id: uuid.UUID, product_id: str) -> None:
    await conn.execute("UPDATE plans SET stripe_product_id = $2 WHERE id = $1", plan_id, product_id)


async def forget_stripe_product(conn: Executor, plan_id: uuid.UUID) -> None:
    """The product is gone from Stripe: the next sync creates a new one."""
    await conn.execute(
        "UPDATE plans SET stripe_product_id = NULL, sync_generation = sync_generation + 1 "
        "WHERE id = $1",
        plan_id,
    )


async def mark_plan_synced(conn: Executor, plan_id: uuid.UUID, generation: int) -> None:
    """Record that Stripe has the plan as of `generation`; later changes stay pending."""
    await conn.execute(
        "UPDATE plans SET synced_generation = greatest(synced_generation, $2) WHERE id = $1",
        plan_id,
        generation,
    )


async def select_plan_by_product(conn: Executor, product_id: str) -> Plan | None:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM plans WHERE stripe_product_id = $1",  # noqa: S608
        product_id,
    )
    return None if row is None else _from_row(row)
