"""Operators' per-customer adjustments: credits granted by hand (optionally expiring) and one
feature's limit overridden for one customer. Each change and its audit row (who, when, what,
why) commit together; migration 0022's triggers tell every process's entitlement cache."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from billing_service.db import grants as db
from billing_service.db.api_keys import ApiKey
from billing_service.db.grants import AuditEntry, CreditLot, Override
from billing_service.db.pages import After
from billing_service.db.pool import Executor
from billing_service.db.usage import ensure_customer
from billing_service.errors import FieldError, NotFound, ValidationFailed

_UNKNOWN = "no live feature has key '{}'"


@dataclass(frozen=True, slots=True)
class Change:
    """Who asks for a change, when and why."""

    actor: ApiKey
    reason: str
    now: datetime


async def _feature(conn: Executor, feature_key: str, *, metered: bool, field: str) -> uuid.UUID:
    found = await db.select_feature_kind(conn, feature_key)
    if found is None:
        raise ValidationFailed([FieldError(field, _UNKNOWN.format(feature_key))])
    feature_id, kind = found
    if metered and kind != "metered":
        raise ValidationFailed([FieldError(field, "must be a metered feature")])
    return feature_id


async def _audit(
    conn: Executor, change: Change, *, customer_id: uuid.UUID, feature_id: uuid.UUID,
    action: str, details: dict[str, object],
) -> None:  # fmt: skip
    await db.insert_audit(
        conn,
        customer_id=customer_id,
        feature_id=feature_id,
        action=action,
        details=details,
        reason=change.reason,
        actor_key_id=change.actor.id,
        actor_name=change.actor.name,
        now=change.now,
    )


async def grant_credits(
    pool: asyncpg.Pool, customer_key: str, feature_key: str, amount: int, *,
    expires_at: datetime | None, change: Change,
) -> CreditLot:  # fmt: skip
    """Give the customer `amount` credits of a metered feature, counting until `expires_at`."""
    if expires_at is not None and expires_at <= change.now:
        raise ValidationFailed([FieldError("expires_at", "must be in the future")])
    async with pool.acquire() as conn, conn.transaction():
        feature_id = await _feature(conn, feature_key, metered=True, field="feature")
        customer_id = await ensure_customer(conn, customer_key)
        lot = await db.insert_credit_lot(
            conn, customer_id=customer_id, feature_id=feature_id, amount=amount,
            expires_at=expires_at, now=change.now,
        )  # fmt: skip
        await _audit(
            conn, change, customer_id=customer_id, feature_id=feature_id,
            action="credits.granted",
            details={"lot_id": str(lot.id), "amount": amount,
                     "expires_at": None if expires_at is None else expires_at.isoformat()},
        )  # fmt: skip
    return lot


async def set_override(
    pool: asyncpg.Pool, customer_key: str, feature_key: str, limit: int | None, change: Change
) -> Override:
    """The customer's own limit of the feature (None: unlimited), replacing any earlier one;
    a boolean feature is simply enabled, so it takes no limit."""
    async with pool.acquire() as conn, conn.transaction():
        found = await db.select_feature_kind(conn, feature_key)
        if found is None:
            raise ValidationFailed([FieldError("feature", _UNKNOWN.format(feature_key))])
        feature_id, kind = found
        if kind != "metered" and limit is not None:
            raise ValidationFailed([FieldError("limit", "must be null for a boolean feature")])
        customer_id = await ensure_customer(conn, customer_key)
        override = await db.upsert_override(
            conn, customer_id=customer_id, feature_id=feature_id, limit=limit, now=change.now
        )
        await _audit(
            conn, change, customer_id=customer_id, feature_id=feature_id, action="override.set",
            details={"limit": limit},
        )  # fmt: skip
    return override


async def remove_override(
    pool: asyncpg.Pool, customer_key: str, feature_key: str, change: Change
) -> None:
    """Back to the plan's allowance; 404 when the customer had no override of the feature."""
    async with pool.acquire() as conn, conn.transaction():
        feature_id = await _feature(conn, feature_key, metered=False, field="feature")
        customer_id = await db.select_customer_id(conn, customer_key)
        if customer_id is None:
            raise NotFound(f"This customer has no override of '{feature_key}'.")
        removed = await db.delete_override(conn, customer_id=customer_id, feature_id=feature_id)
        if removed is False:
            raise NotFound(f"This customer has no override of '{feature_key}'.")
        await _audit(
            conn, change, customer_id=customer_id, feature_id=feature_id,
            action="override.removed", details={"limit": removed},
        )  # fmt: skip


async def audit(
    pool: asyncpg.Pool, customer_key: str, *, after: After | None, limit: int
) -> list[AuditEntry]:
    """The customer's grants and override changes, newest first, a page at a time."""
    return await db.select_audit(pool, customer_key, after=after, limit=limit)
