"""The plan catalog: reconcile the database with a declarative spec, and read it back.

`apply_catalog` runs in one transaction under a lock, so concurrent applies queue up instead of
interleaving. It writes only what differs and describes each change; a dry run does the very same
work, runs the checks PostgreSQL would otherwise leave to the commit, and rolls it back, so it
fails where an apply would fail and prints what an apply would do. Stripe is brought up to date
afterwards, outside the transaction (see `catalog_sync`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import asyncpg

from billing_service.catalog_spec import (
    CatalogSpec,
    FeatureSpec,
    PlanSpec,
    PriceSpec,
    validated,
)
from billing_service.db import catalog_drift
from billing_service.db.catalog_drift import Drift
from billing_service.db.features import Feature
from billing_service.db.plan_features import Allowance
from billing_service.db.plans import Plan
from billing_service.db.prices import Price
from billing_service.errors import FieldError, ValidationFailed
from billing_service.services import catalog_sync
from billing_service.services.catalog_reconcile import (
    CatalogState,
    allowance_spec,
    load_state,
    reconcile,
)
from billing_service.stripe_gateway import StripeGateway


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What an apply changed (or would change), and where Stripe stands afterwards."""

    before: CatalogSpec
    changes: list[str]
    stripe_pending: list[str]
    drift: list[Drift]
    dry_run: bool
    stripe_synced: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class PlanView:
    """A plan with its live prices (and their grants) and its feature allowances."""

    plan: Plan
    prices: list[tuple[Price, dict[str, int]]]
    features: list[tuple[Feature, Allowance]]


def export_spec(state: CatalogState) -> CatalogSpec:
    """The live catalog (archived rows left out) in the declarative form."""
    feature_by_id = {f.id: f for f in state.features.values()}
    live_prices: dict[uuid.UUID, dict[str, PriceSpec]] = {}
    for price in state.prices:
        if price.active:
            live_prices.setdefault(price.plan_id, {})[price.lookup_key] = PriceSpec(
                amount=price.amount,
                currency=price.currency,
                type=price.type,  # type: ignore[arg-type]
                interval=price.recurring_interval,  # type: ignore[arg-type]
                grants={
                    feature_by_id[feature_id].key: units
                    for feature_id, units in state.grants.get(price.id, {}).items()
                },
                per_seat=price.per_seat,
            )
    return CatalogSpec(
        features={
            f.key: FeatureSpec(name=f.name, kind=f.kind, unit=f.unit)  # type: ignore[arg-type]
            for f in state.features.values()
            if f.active
        },
        plans={
            plan.key: PlanSpec(
                name=plan.name,
                description=plan.description,
                default=plan.is_default,
                trial_days=plan.trial_days,
                display_order=plan.display_order,
                public=plan.public,
                max_seats=plan.max_seats,
                features={
                    feature_by_id[feature_id].key: allowance_spec(
                        feature_by_id[feature_id].kind, allowance
                    )
                    for feature_id, allowance in state.allowances.get(plan.id, {}).items()
                },
                prices=live_prices.get(plan.id, {}),
            )
            for plan in state.plans.values()
            if plan.active
        },
    )


def _check_default_plan_kept(state: CatalogState, spec: CatalogSpec) -> None:
    """Plans are archived, never deleted: once one exists, the catalog needs its default plan.

    The file's own checks allow a catalog without plans (a first, empty apply); over a database
    that already has plans it would leave none as the default, which the commit refuses.
    """
    if state.plans and not spec.plans:
        raise ValidationFailed(
            [
                FieldError(
                    "plans",
                    "exactly one plan must have default: true (none); plans already applied are "
                    "archived, never deleted, so the catalog cannot go without a default plan",
                )
            ],
            "The catalog is invalid.",
        )


async def apply_catalog(
    pool: asyncpg.Pool, build: Callable[[CatalogSpec], CatalogSpec], *, dry_run: bool = False
) -> ApplyResult:
    """Make the database match `build(current catalog)`; roll back instead when `dry_run`."""
    async with pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        try:
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('billing.catalog'))")
            state = await load_state(conn)
            before = export_spec(state)
            spec = validated(build(before))
            _check_default_plan_kept(state, spec)
            changes = await reconcile(conn, state, spec)
            pending = await catalog_sync.pending_work(conn)
            drift = await catalog_drift.select_open_drift(conn)
            if dry_run:
                # The deferred constraints are checked now, as the commit of an apply would.
                await conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
        except BaseException:
            await transaction.rollback()
            raise
        if dry_run:
            await transaction.rollback()
        else:
            await transaction.commit()
    return ApplyResult(
        before=before, changes=changes, stripe_pending=pending, drift=drift, dry_run=dry_run
    )


async def apply_and_sync(
    pool: asyncpg.Pool,
    gateway: StripeGateway | None,
    build: Callable[[CatalogSpec], CatalogSpec],
    *,
    dry_run: bool = False,
) -> ApplyResult:
    """Apply, then push to Stripe when it is configured; without Stripe the work stays pending.

    Drift reported in the result is settled once the sync has pushed the catalog back.
    """
    result = await apply_catalog(pool, build, dry_run=dry_run)
    if dry_run or gateway is None:
        return result
    report = await catalog_sync.sync_catalog(pool, gateway)
    async with pool.acquire() as conn:
        await catalog_drift.resolve_reported_drift(conn, [d.id for d in result.drift])
        pending = await catalog_sync.pending_work(conn)
    return replace(result, stripe_synced=report.done, stripe_pending=pending)


async def plan_views(pool: asyncpg.Pool, *, key: str | None = None) -> list[PlanView]:
    """Live plans in display order, or the one plan `key` (archived or not)."""
    async with pool.acquire() as conn:
        state = await load_state(conn)
    feature_by_id = {f.id: f for f in state.features.values()}
    views = []
    for plan in state.plans.values():
        if (key is None and not plan.active) or (key is not None and plan.key != key):
            continue
        live = [price for price in state.prices if price.active and price.plan_id == plan.id]
        allowances = state.allowances.get(plan.id, {})
        views.append(
            PlanView(
                plan=plan,
                prices=[
                    (
                        price,
                        {
                            feature_by_id[feature_id].key: units
                            for feature_id, units in state.grants.get(price.id, {}).items()
                        },
                    )
                    for price in live
                ],
                features=sorted(
                    ((feature_by_id[fid], allowance) for fid, allowance in allowances.items()),
                    key=lambda pair: pair[0].key,
                ),
            )
        )
    return views


async def current_catalog(pool: asyncpg.Pool) -> CatalogSpec:
    async with pool.acquire() as conn:
        return export_spec(await load_state(conn))


async def catalog_is_empty(pool: asyncpg.Pool) -> bool:
    return not await pool.fetchval("SELECT EXISTS (SELECT 1 FROM plans)")
