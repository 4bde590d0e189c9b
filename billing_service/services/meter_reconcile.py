"""Reconciling billed overage with the spec: a meter per billed feature, a metered price per plan,
billed feature and recurring interval. Runs inside `catalog.apply_catalog`'s transaction."""

from __future__ import annotations

import uuid
from decimal import Decimal

from billing_service.catalog_spec import CatalogSpec, MeteredLimit
from billing_service.db import billing_meters
from billing_service.db import features as features_db
from billing_service.db import plans as plans_db
from billing_service.db.pool import Connection

# (plan id, feature id, interval) → (lookup key, unit amount, currency)
Wanted = dict[tuple[uuid.UUID, uuid.UUID, str], tuple[str, Decimal, str]]


def metered_lookup_key(plan_key: str, feature_key: str, interval: str) -> str:
    """Outside the catalog's key pattern (it has colons), so never a plan price's lookup key."""
    return f"{plan_key}:{feature_key}:overage:{interval}"


def _wanted(
    spec: CatalogSpec, plan_ids: dict[str, uuid.UUID], feature_ids: dict[str, uuid.UUID]
) -> Wanted:
    wanted: Wanted = {}
    for plan_key, plan in spec.plans.items():
        intervals = sorted({p.interval for p in plan.prices.values() if p.interval is not None})
        for feature_key, allowance in plan.features.items():
            if not isinstance(allowance, MeteredLimit) or allowance.overage != "bill":
                continue
            if not allowance.enabled or allowance.overage_price is None:
                continue
            price = allowance.overage_price
            for interval in intervals:
                wanted[(plan_ids[plan_key], feature_ids[feature_key], interval)] = (
                    metered_lookup_key(plan_key, feature_key, interval),
                    price.amount_per_unit,
                    price.currency,
                )
    return wanted


async def reconcile_metered(conn: Connection, spec: CatalogSpec) -> list[str]:
    """Write what differs; metered prices are immutable in Stripe, so new terms make a new
    price that takes the lookup key, and the old one is archived."""
    plan_ids = {p.key: p.id for p in await plans_db.select_plans(conn)}
    feature_ids = {f.key: f.id for f in await features_db.select_features(conn)}
    wanted = _wanted(spec, plan_ids, feature_ids)
    changes: list[str] = []
    feature_keys = {feature_id: key for key, feature_id in feature_ids.items()}
    for feature_id in sorted({fid for _, fid, _ in wanted}, key=feature_keys.__getitem__):
        event_name = feature_keys[feature_id]
        if await billing_meters.ensure_meter(conn, feature_id, event_name):
            changes.append(f"+ meter {event_name}")
    current = {
        (p.plan_id, p.feature_id, p.recurring_interval): p
        for p in await billing_meters.select_metered_prices(conn)
    }
    for terms_key, (lookup_key, amount, currency) in wanted.items():
        existing = current.pop(terms_key, None)
        if existing is not None and (existing.unit_amount, existing.currency) == (amount, currency):
            continue
        if existing is not None:
            await billing_meters.archive_metered_price(conn, existing.id)
        plan_id, feature_id, interval = terms_key
        await billing_meters.insert_metered_price(
            conn,
            plan_id=plan_id,
            feature_id=feature_id,
            lookup_key=lookup_key,
            unit_amount=amount,
            currency=currency,
            recurring_interval=interval,
        )
        sign = "+" if existing is None else "~"
        changes.append(f"{sign} metered price {lookup_key}: {amount} {currency}/unit")
    for leftover in current.values():
        await billing_meters.archive_metered_price(conn, leftover.id)
        changes.append(f"- metered price {leftover.lookup_key} (archived)")
    return changes
