"""Pushing the catalog to Stripe, and noticing when Stripe's copy was changed behind our back.

The database is the source of truth. Rows whose `sync_generation` is ahead of their
`synced_generation` are pending; `sync_catalog` pushes them one by one, recording each result as
soon as Stripe confirms it, so a crash or an outage leaves only the unfinished work pending. No
transaction is held open across a Stripe call; a session lock keeps two syncs from overlapping.
Each call's idempotency key is named after its row (and generation, for updates); a failure
Stripe answered moves the next sync on to a new key (see services/stripe_keys.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import asyncpg
import structlog

from billing_service.db import billing_meters, catalog_drift, plans, prices
from billing_service.db.billing_meters import MeteredPrice
from billing_service.db.plans import Plan
from billing_service.db.pool import Connection, session_lock
from billing_service.db.prices import Price
from billing_service.services import meter_sync
from billing_service.services.stripe_keys import attempt_key
from billing_service.stripe_gateway import StripeGateway

logger = structlog.get_logger(__name__)

Action = Literal["create_product", "update_product", "create_price", "update_price", "settle"]


@dataclass(frozen=True, slots=True)
class SyncStep:
    """One piece of pending Stripe work for a plan's product or a price."""

    action: Action
    plan: Plan
    price: Price | None = None

    @property
    def calls_stripe(self) -> bool:
        return self.action != "settle"

    def describe(self) -> str:
        if self.action == "settle":
            return f"nothing to send for plan {self.plan.key}"
        if self.price is None:
            verb = "create" if self.action == "create_product" else "update"
            return f"{verb} product for plan {self.plan.key}"
        if self.action == "create_price":
            return f"create price {self.price.lookup_key} (plan {self.plan.key})"
        state = "archive" if not self.price.active else "update"
        return f"{state} price {self.price.lookup_key} ({self.price.stripe_price_id})"


@dataclass(frozen=True, slots=True)
class SyncReport:
    done: list[str]


async def pending_work(conn: Connection) -> list[str]:
    """What a sync would send to Stripe now, described for people."""
    work = [step.describe() for step in await plan_sync(conn) if step.calls_stripe]
    return work + await meter_sync.pending_meter_work(conn)


async def plan_sync(conn: Connection) -> list[SyncStep]:
    """The pending Stripe work, in an order Stripe accepts: products, new prices, then the rest."""
    all_plans = {plan.id: plan for plan in await plans.select_plans(conn)}
    live_prices = await prices.select_prices(conn, active_only=True)
    plans_with_prices = {price.plan_id for price in live_prices}
    pending_prices = await prices.select_prices_pending_sync(conn)
    needs_product = plans_with_prices | {
        price.plan_id for price in pending_prices if price.stripe_price_id is None and price.active
    }

    steps: list[SyncStep] = []
    pending_plan_ids = set()
    for plan in await plans.select_plans_pending_sync(conn):
        pending_plan_ids.add(plan.id)
        if plan.stripe_product_id is not None:
            steps.append(SyncStep("update_product", plan))
        elif plan.id in needs_product:
            steps.append(SyncStep("create_product", plan))
        else:
            steps.append(SyncStep("settle", plan))  # nothing Stripe needs to know yet
    for plan_id in needs_product - pending_plan_ids:
        plan = all_plans[plan_id]
        if plan.stripe_product_id is None:
            steps.append(SyncStep("create_product", plan))

    for price in pending_prices:
        plan = all_plans[price.plan_id]
        if price.stripe_price_id is not None:
            steps.append(SyncStep("update_price", plan, price))
        elif price.active:
            steps.append(SyncStep("create_price", plan, price))
        else:
            steps.append(SyncStep("settle", plan, price))  # archived before it ever reached Stripe
    return steps


def product_metadata(plan: Plan) -> dict[str, str]:
    return {"billing_plan_key": plan.key, "billing_plan_id": str(plan.id)}


def price_metadata(plan: Plan, price: Price) -> dict[str, str]:
    return {
        "billing_price_key": price.lookup_key,
        "billing_price_id": str(price.id),
        "billing_plan_key": plan.key,
    }


async def _run_step(conn: Connection, gateway: StripeGateway, step: SyncStep) -> str | None:
    """Carry out one step and record its outcome; returns the Stripe id it touched."""
    plan, price = step.plan, step.price
    if price is None:
        if step.action == "create_product":
            async with attempt_key(conn, f"catalog:plan:{plan.id}:create") as key:
                product_id = await gateway.create_product(
                    name=plan.name,
                    description=plan.description,
                    metadata=product_metadata(plan),
                    idempotency_key=key,
                )
            await plans.set_stripe_product_id(conn, plan.id, product_id)
        elif step.action == "update_product":
            assert plan.stripe_product_id is not None
            product_id = plan.stripe_product_id
            base_key = f"catalog:plan:{plan.id}:update:{plan.sync_generation}"
            async with attempt_key(conn, base_key) as key:
                await gateway.update_product(
                    product_id,
                    name=plan.name,
                    description=plan.description,
                    active=plan.active,
                    metadata=product_metadata(plan),
                    idempotency_key=key,
                )
        else:
            product_id = None
        await plans.mark_plan_synced(conn, plan.id, plan.sync_generation)
        return product_id

    stripe_price_id = price.stripe_price_id
    if step.action == "create_price":
        product_id = (await plans.select_plan(conn, plan.id)).stripe_product_id
        assert product_id is not None, "products are created before their prices"
        async with attempt_key(conn, f"catalog:price:{price.id}:create") as key:
            stripe_price_id = await gateway.create_price(
                product_id=product_id,
                amount=price.amount,
                currency=price.currency,
                interval=price.recurring_interval,
                lookup_key=price.lookup_key,
                metadata=price_metadata(plan, price),
                idempotency_key=key,
            )
        await prices.set_stripe_price_id(conn, price.id, stripe_price_id)
    elif step.action == "update_price":
        assert stripe_price_id is not None
        base_key = f"catalog:price:{price.id}:update:{price.sync_generation}"
        async with attempt_key(conn, base_key) as key:
            await gateway.update_price(
                stripe_price_id,
                active=price.active,
                lookup_key=price.lookup_key if price.active else None,
                idempotency_key=key,
            )
    await prices.mark_price_synced(conn, price.id, price.sync_generation)
    return stripe_price_id


async def sync_catalog(pool: asyncpg.Pool, gateway: StripeGateway) -> SyncReport:
    """Push every pending catalog change to Stripe; safe to run from several places at once."""
    done: list[str] = []
    async with (
        gateway.holding_connection(pool) as conn,
        session_lock(conn, "billing.catalog_sync"),
    ):
        for step in await plan_sync(conn):
            touched = await _run_step(conn, gateway, step)
            if touched is not None:
                await catalog_drift.resolve_drift(conn, [touched])
            if step.calls_stripe:
                done.append(step.describe())
        metered, touched_ids = await meter_sync.sync_meters(conn, gateway)
        if touched_ids:
            await catalog_drift.resolve_drift(conn, touched_ids)
        done += metered
    if done:
        logger.info("catalog.synced", steps=done)
    return SyncReport(done=done)


def _metadata(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    metadata = obj.get("metadata")
    return metadata if isinstance(metadata, Mapping) else {}


async def record_stripe_change(
    conn: Connection, event_type: str, obj: Mapping[str, Any]
) -> list[str]:
    """Compare a Stripe product or price with the catalog; record and schedule repair of drift.

    The catalog wins: drift on an object we own marks it pending, so the next sync restores our
    values in Stripe. Objects created outside the catalog on our products are only reported.
    """
    object_type = obj.get("object")
    object_id = str(obj.get("id"))
    if object_type == "product":
        findings = await _product_drift(conn, event_type, object_id, obj)
    elif object_type == "price":
        findings = await _price_drift(conn, object_id, obj)
    else:
        return []
    for description in findings:
        await catalog_drift.insert_drift(
            conn,
            stripe_object_id=object_id,
            object_type=str(object_type),
            event_type=event_type,
            description=description,
        )
    if findings:
        logger.warning("catalog.drift", stripe_object_id=object_id, findings=findings)
    return findings


async def _product_drift(
    conn: Connection, event_type: str, product_id: str, obj: Mapping[str, Any]
) -> list[str]:
    plan = await plans.select_plan_by_product(conn, product_id)
    if plan is None:
        plan_key = _metadata(obj).get("billing_plan_key")
        if plan_key is None or _is_in_flight(
            obj, "billing_plan_id", await _unsynced_plan_ids(conn)
        ):
            return []  # not ours, or our own create whose id is not stored yet
        return [f"product {product_id} claims plan '{plan_key}' but is not in the catalog"]
    if event_type == "product.deleted" or obj.get("deleted"):
        await plans.forget_stripe_product(conn, plan.id)
        return [f"product of plan '{plan.key}' was deleted in Stripe"]
    findings = [
        f"product of plan '{plan.key}': {field} is {theirs!r} in Stripe, {ours!r} in the catalog"
        for field, theirs, ours in (
            ("name", obj.get("name"), plan.name),
            ("description", obj.get("description") or "", plan.description),
            ("active", obj.get("active"), plan.active),
        )
        if theirs != ours
    ]
    if findings:
        await plans.mark_plan_for_sync(conn, plan.id)
    return findings


async def _price_drift(conn: Connection, stripe_price_id: str, obj: Mapping[str, Any]) -> list[str]:
    price = await prices.select_price_by_stripe_id(conn, stripe_price_id)
    metered = await billing_meters.select_metered_price_by_stripe_id(conn, stripe_price_id)
    if price is None and metered is not None:
        return await _metered_price_drift(conn, metered, obj)
    if price is None:
        if _is_in_flight(obj, "billing_metered_price_id", await _unsynced_metered_price_ids(conn)):
            return []
        if _is_in_flight(obj, "billing_price_id", await _unsynced_price_ids(conn)):
            return []
        product_id = obj.get("product")
        if isinstance(product_id, str) and await plans.select_plan_by_product(conn, product_id):
            return [f"price {stripe_price_id} was created in Stripe outside the catalog"]
        return []
    findings = []
    if obj.get("active") != price.active:
        state = "active" if obj.get("active") else "archived"
        findings.append(f"price {price.lookup_key}: {state} in Stripe, not in the catalog")
    if price.active and obj.get("lookup_key") != price.lookup_key:
        findings.append(
            f"price {price.lookup_key}: lookup key is {obj.get('lookup_key')!r} in Stripe"
        )
    if findings:
        await prices.mark_price_for_sync(conn, price.id)
    return findings


async def _metered_price_drift(
    conn: Connection, price: MeteredPrice, obj: Mapping[str, Any]
) -> list[str]:
    findings = []
    if obj.get("active") != price.active:
        state = "active" if obj.get("active") else "archived"
        findings.append(f"metered price {price.lookup_key}: {state} in Stripe, not in the catalog")
    if price.active and obj.get("lookup_key") != price.lookup_key:
        findings.append(
            f"metered price {price.lookup_key}: lookup key is {obj.get('lookup_key')!r} in Stripe"
        )
    if findings:
        await billing_meters.mark_metered_price_for_sync(conn, price.id)
    return findings


async def _unsynced_metered_price_ids(conn: Connection) -> set[uuid.UUID]:
    return {
        p.id
        for p in await billing_meters.select_metered_prices(conn, active_only=False)
        if p.stripe_price_id is None
    }


def _is_in_flight(obj: Mapping[str, Any], metadata_key: str, unsynced: set[uuid.UUID]) -> bool:
    """Our own create, announced by Stripe before we stored the new object's id."""
    row_id = _metadata(obj).get(metadata_key)
    try:
        return row_id is not None and uuid.UUID(str(row_id)) in unsynced
    except ValueError:
        return False


async def _unsynced_plan_ids(conn: Connection) -> set[uuid.UUID]:
    return {p.id for p in await plans.select_plans(conn) if p.stripe_product_id is None}


async def _unsynced_price_ids(conn: Connection) -> set[uuid.UUID]:
    return {p.id for p in await prices.select_prices(conn) if p.stripe_price_id is None}
