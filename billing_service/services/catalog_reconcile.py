"""Reconciling the catalog tables with a declarative spec: what differs is written and described.

Used inside `catalog.apply_catalog`'s transaction; nothing here commits or talks to Stripe.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from billing_service.catalog_spec import (
    CatalogSpec,
    MemberLimit,
    MeteredLimit,
    OveragePrice,
    PriceSpec,
)
from billing_service.db import features as features_db
from billing_service.db import plan_features, plans, prices
from billing_service.db.features import Feature
from billing_service.db.plan_features import Allowance
from billing_service.db.plans import Plan, PlanFields
from billing_service.db.pool import Connection
from billing_service.db.prices import Price
from billing_service.services import meter_reconcile

_DISABLED = Allowance(enabled=False, limit=None, soft_limit=None, reset=None, overage="deny")


@dataclass(frozen=True, slots=True)
class CatalogState:
    """Every catalog row, including archived ones, as the database holds them."""

    features: dict[str, Feature]
    plans: dict[str, Plan]
    prices: list[Price]
    allowances: dict[uuid.UUID, dict[uuid.UUID, Allowance]]  # plan id → feature id → allowance
    grants: dict[uuid.UUID, dict[uuid.UUID, int]]  # price id → feature id → units


async def load_state(conn: Connection) -> CatalogState:
    allowances: dict[uuid.UUID, dict[uuid.UUID, Allowance]] = {}
    for row in await plan_features.select_plan_features(conn):
        allowances.setdefault(row.plan_id, {})[row.feature_id] = row.allowance
    grants: dict[uuid.UUID, dict[uuid.UUID, int]] = {}
    for grant in await prices.select_grants(conn):
        grants.setdefault(grant.price_id, {})[grant.feature_id] = grant.amount
    return CatalogState(
        features={f.key: f for f in await features_db.select_features(conn)},
        plans={p.key: p for p in await plans.select_plans(conn)},
        prices=await prices.select_prices(conn),
        allowances=allowances,
        grants=grants,
    )


async def reconcile(conn: Connection, state: CatalogState, spec: CatalogSpec) -> list[str]:
    reconciler = _Reconciler(conn, state, spec)
    await reconciler.features()
    await reconciler.plans()
    await reconciler.allowances()
    await reconciler.prices()
    reconciler.changes += await meter_reconcile.reconcile_metered(conn, spec)
    return reconciler.changes


def _differences(pairs: dict[str, tuple[object, object]]) -> str:
    return ", ".join(
        f"{name} {old!r} → {new!r}" for name, (old, new) in pairs.items() if old != new
    )


def allowance_from_spec(kind: str, value: bool | MeteredLimit) -> Allowance:
    """One normal form per meaning, so equal allowances always compare equal."""
    if isinstance(value, bool):
        if not value:
            return _DISABLED
        reset = "month" if kind == "metered" else None
        return Allowance(enabled=True, limit=None, soft_limit=None, reset=reset, overage="deny")
    if not value.enabled:
        return _DISABLED
    return Allowance(
        enabled=True,
        limit=value.limit,
        soft_limit=value.soft_limit,
        reset=value.reset,
        overage=value.overage,
        overage_unit_amount=value.overage_price.amount_per_unit if value.overage_price else None,
        overage_currency=value.overage_price.currency if value.overage_price else None,
        per_seat=value.per_seat,
        member_limit=None if value.per_member is None else value.per_member.limit,
    )


def allowance_spec(kind: str, allowance: Allowance) -> bool | MeteredLimit:
    if kind == "boolean" or not allowance.enabled:
        return allowance.enabled
    return MeteredLimit(
        limit=allowance.limit,
        soft_limit=allowance.soft_limit,
        reset=allowance.reset,  # type: ignore[arg-type]
        overage=allowance.overage,  # type: ignore[arg-type]
        overage_price=(
            None
            if allowance.overage_unit_amount is None or allowance.overage_currency is None
            else OveragePrice(
                amount_per_unit=allowance.overage_unit_amount,
                currency=allowance.overage_currency,
            )
        ),
        per_seat=allowance.per_seat,
        per_member=(
            None if allowance.member_limit is None else MemberLimit(limit=allowance.member_limit)
        ),
    )


def describe_allowance(allowance: Allowance | None) -> str:
    if allowance is None:
        return "absent"
    if not allowance.enabled:
        return "off"
    if allowance.reset is None:
        return "on"
    amount = "unlimited" if allowance.limit is None else str(allowance.limit)
    soft = "" if allowance.soft_limit is None else f" (soft {allowance.soft_limit})"
    overage = ", overage allowed" if allowance.overage == "allow" else ""
    if allowance.overage == "bill":
        price = f"{allowance.overage_unit_amount} {allowance.overage_currency}"
        overage = f", overage billed at {price}/unit"
    seats = " per seat" if allowance.per_seat else ""
    member = "" if allowance.member_limit is None else f", {allowance.member_limit} per member"
    return f"{amount}{seats}/{allowance.reset}{soft}{overage}{member}"


def describe_price(amount: int, currency: str, interval: str | None) -> str:
    return f"{amount} {currency}" + (f"/{interval}" if interval else " once")


class _Reconciler:
    """Writes the difference between `state` and `spec`, describing each change it makes."""

    def __init__(self, conn: Connection, state: CatalogState, spec: CatalogSpec) -> None:
        self.conn, self.state, self.spec = conn, state, spec
        self.changes: list[str] = []
        self.feature_ids: dict[str, uuid.UUID] = {}
        self.plan_ids: dict[str, uuid.UUID] = {}

    async def features(self) -> None:
        for key, wanted in self.spec.features.items():
            current = self.state.features.get(key)
            if current is None:
                created = await features_db.insert_feature(
                    self.conn, key=key, name=wanted.name, kind=wanted.kind, unit=wanted.unit
                )
                self.feature_ids[key] = created.id
                self.changes.append(f"+ feature {key} ({wanted.kind})")
                continue
            self.feature_ids[key] = current.id
            diff = _differences(
                {
                    "name": (current.name, wanted.name),
                    "kind": (current.kind, wanted.kind),
                    "unit": (current.unit, wanted.unit),
                    "active": (current.active, True),
                }
            )
            if diff:
                await features_db.update_feature(
                    self.conn, current.id, name=wanted.name, kind=wanted.kind, unit=wanted.unit,
                    active=True,
                )  # fmt: skip
                self.changes.append(f"~ feature {key}: {diff}")
        for key, current in self.state.features.items():
            if key not in self.spec.features and current.active:
                await features_db.update_feature(
                    self.conn, current.id, name=current.name, kind=current.kind,
                    unit=current.unit, active=False,
                )  # fmt: skip
                self.changes.append(f"- feature {key} (archived)")

    async def plans(self) -> None:
        wanted_default = next((k for k, plan in self.spec.plans.items() if plan.default), None)
        if any(p.is_default and p.key != wanted_default for p in self.state.plans.values()):
            await plans.clear_default_plan(self.conn)  # the deferred check sees the final state
        for key, wanted in self.spec.plans.items():
            fields = PlanFields(
                name=wanted.name,
                description=wanted.description,
                is_default=wanted.default,
                trial_days=wanted.trial_days,
                display_order=wanted.display_order,
                public=wanted.public,
                max_seats=wanted.max_seats,
            )
            current = self.state.plans.get(key)
            if current is None:
                self.plan_ids[key] = (await plans.insert_plan(self.conn, key, fields)).id
                self.changes.append(f"+ plan {key}" + (" (default)" if wanted.default else ""))
                continue
            self.plan_ids[key] = current.id
            diff = _differences(
                {
                    "name": (current.name, fields.name),
                    "description": (current.description, fields.description),
                    "default": (current.is_default, fields.is_default),
                    "trial_days": (current.trial_days, fields.trial_days),
                    "display_order": (current.display_order, fields.display_order),
                    "public": (current.public, fields.public),
                    "max_seats": (current.max_seats, fields.max_seats),
                    "active": (current.active, True),
                }
            )
            if diff:
                await plans.update_plan(self.conn, current.id, fields, active=True)
                self.changes.append(f"~ plan {key}: {diff}")
        for key, current in self.state.plans.items():
            if key not in self.spec.plans and current.active:
                await plans.archive_plan(self.conn, current.id)
                self.changes.append(f"- plan {key} (archived)")

    async def allowances(self) -> None:
        feature_key = {f.id: f.key for f in self.state.features.values()}
        feature_key |= {feature_id: key for key, feature_id in self.feature_ids.items()}
        for plan_key, wanted_plan in self.spec.plans.items():
            plan_id = self.plan_ids[plan_key]
            wanted = {
                self.feature_ids[key]: allowance_from_spec(self.spec.features[key].kind, value)
                for key, value in wanted_plan.features.items()
            }
            current = self.state.allowances.get(plan_id, {})
            if wanted == current:
                continue
            await plan_features.replace_plan_features(self.conn, plan_id, wanted)
            for feature_id in sorted(wanted.keys() | current.keys(), key=feature_key.__getitem__):
                before, after = current.get(feature_id), wanted.get(feature_id)
                if before != after:
                    self.changes.append(
                        f"~ plan {plan_key} feature {feature_key[feature_id]}: "
                        f"{describe_allowance(before)} → {describe_allowance(after)}"
                    )

    async def prices(self) -> None:
        """Stripe prices are immutable: new terms make a new price that takes the lookup key."""
        live = {price.lookup_key: price for price in self.state.prices if price.active}
        for plan_key, wanted_plan in self.spec.plans.items():
            for lookup_key, wanted in wanted_plan.prices.items():
                await self._price(plan_key, lookup_key, wanted, live.pop(lookup_key, None))
        for lookup_key, leftover in live.items():
            await prices.archive_price(self.conn, leftover.id)
            self.changes.append(f"- price {lookup_key} (archived)")

    async def _price(
        self, plan_key: str, lookup_key: str, wanted: PriceSpec, current: Price | None
    ) -> None:
        plan_id = self.plan_ids[plan_key]
        grants = {self.feature_ids[key]: units for key, units in wanted.grants.items()}
        terms = (plan_id, wanted.amount, wanted.currency, wanted.type, wanted.interval)
        if current is not None and terms == (
            current.plan_id, current.amount, current.currency, current.type,
            current.recurring_interval,
        ):  # fmt: skip
            if self.state.grants.get(current.id, {}) != grants:
                await prices.replace_grants(self.conn, current.id, grants)
                self.changes.append(f"~ price {lookup_key}: grants {dict(wanted.grants)}")
            if current.per_seat != wanted.per_seat:
                await prices.set_per_seat(self.conn, current.id, wanted.per_seat)
                self.changes.append(
                    f"~ price {lookup_key}: per_seat {current.per_seat!r} → {wanted.per_seat!r}"
                )
            return
        if current is not None:
            await prices.archive_price(self.conn, current.id)
        created = await prices.insert_price(
            self.conn,
            plan_id=plan_id,
            lookup_key=lookup_key,
            amount=wanted.amount,
            currency=wanted.currency,
            type=wanted.type,
            recurring_interval=wanted.interval,
            per_seat=wanted.per_seat,
        )
        if grants:
            await prices.replace_grants(self.conn, created.id, grants)
        now = describe_price(wanted.amount, wanted.currency, wanted.interval)
        if current is None:
            self.changes.append(f"+ price {lookup_key}: {now} (plan {plan_key})")
            return
        before = describe_price(current.amount, current.currency, current.recurring_interval)
        self.changes.append(
            f"~ price {lookup_key}: {before} → {now} (plan {plan_key}; "
            "a new Stripe price takes the lookup key, the old one is archived)"
        )
