"""Changing, cancelling and resuming a customer's subscription in Stripe.

Upgrades apply at once and invoice the prorated difference immediately (if that payment fails,
nothing changes). Downgrades wait for the end of the paid period by default, through a Stripe
subscription schedule, or apply at once with a proration credit when `BILLING_DOWNGRADE_AT=now`.
Every Stripe answer is mirrored into our table before we reply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import asyncpg

from billing_service.db import prices, subscriptions
from billing_service.db.customers import Customer
from billing_service.db.prices import Price
from billing_service.db.subscriptions import Subscription
from billing_service.errors import Conflict, FieldError, NoActiveSubscription, ValidationFailed
from billing_service.services.checkout import live_synced_price
from billing_service.stripe_gateway import StripeGateway

INTERVAL_MONTHS = {"month": 1, "year": 12}
CHANGEABLE_STATUSES = ("active", "trialing", "past_due")


@dataclass(frozen=True, slots=True)
class PlanChange:
    direction: Literal["upgrade", "downgrade"]
    effective: Literal["now", "period_end"]


def is_upgrade(current: Price | None, new: Price) -> bool:
    """Longer billing intervals and, for the same interval, higher amounts are upgrades."""
    if current is None:
        return True
    current_months = INTERVAL_MONTHS.get(current.recurring_interval or "month", 1)
    new_months = INTERVAL_MONTHS.get(new.recurring_interval or "month", 1)
    if new_months != current_months:
        return new_months > current_months
    return new.amount > current.amount


async def live_subscription(pool: asyncpg.Pool, customer: Customer) -> Subscription:
    current = await subscriptions.select_current_subscription(pool, customer.id)
    if current is None or current.status not in CHANGEABLE_STATUSES:
        raise NoActiveSubscription(
            f"Customer '{customer.external_id}' has no active subscription; "
            "start one with POST /v1/checkout/sessions."
        )
    return current


def _key(subscription: Subscription, action: str) -> str:
    """Stable for retries of the same action on the same state, fresh once the state changes."""
    version = int(subscription.updated_at.timestamp() * 1_000_000)
    return f"subscription:{subscription.stripe_subscription_id}:{action}:{version}"


async def _release_schedule(gateway: StripeGateway, subscription: Subscription) -> None:
    if subscription.stripe_schedule_id is not None:
        await gateway.release_schedule(
            subscription.stripe_schedule_id, idempotency_key=_key(subscription, "release")
        )


async def change_plan(
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    customer: Customer,
    *,
    price_key: str,
    downgrade_at: Literal["period_end", "now"],
) -> PlanChange:
    subscription = await live_subscription(pool, customer)
    new_price, _trial_days = await live_synced_price(pool, price_key)
    if new_price.type != "recurring":
        raise ValidationFailed([FieldError("price", "must be a recurring price")])
    if new_price.id == subscription.price_id:
        raise Conflict(f"The subscription is already on price '{price_key}'.")
    assert new_price.stripe_price_id is not None
    assert subscription.stripe_item_id is not None
    current_price = (
        None
        if subscription.price_id is None
        else await prices.select_price(pool, subscription.price_id)
    )
    change_key = _key(subscription, f"change:{new_price.id}")

    if is_upgrade(current_price, new_price) or downgrade_at == "now":
        upgrade = is_upgrade(current_price, new_price)
        await _release_schedule(gateway, subscription)
        updated = await gateway.change_subscription_price(
            subscription.stripe_subscription_id,
            item_id=subscription.stripe_item_id,
            price=new_price.stripe_price_id,
            proration_behavior="always_invoice" if upgrade else "create_prorations",
            idempotency_key=change_key,
        )
        await subscriptions.upsert_subscription(pool, customer.id, updated)
        return PlanChange(direction="upgrade" if upgrade else "downgrade", effective="now")

    schedule_id = await gateway.schedule_price_change(
        subscription.stripe_subscription_id,
        schedule_id=subscription.stripe_schedule_id,
        current_price=subscription.stripe_price_id,
        new_price=new_price.stripe_price_id,
        quantity=subscription.quantity,
        idempotency_key=change_key,
    )
    await subscriptions.set_scheduled_change(
        pool, subscription.stripe_subscription_id, schedule_id=schedule_id, price_id=new_price.id
    )
    return PlanChange(direction="downgrade", effective="period_end")


async def cancel(
    pool: asyncpg.Pool, gateway: StripeGateway, customer: Customer, *, at_period_end: bool
) -> None:
    """Cancel at the end of the paid period (the plan is kept until then) or right away."""
    subscription = await live_subscription(pool, customer)
    await _release_schedule(gateway, subscription)
    if at_period_end:
        updated = await gateway.set_cancel_at_period_end(
            subscription.stripe_subscription_id,
            cancel=True,
            idempotency_key=_key(subscription, "cancel-at-period-end"),
        )
    else:
        updated = await gateway.cancel_subscription_now(
            subscription.stripe_subscription_id, idempotency_key=_key(subscription, "cancel-now")
        )
    await subscriptions.upsert_subscription(pool, customer.id, updated)


async def resume(pool: asyncpg.Pool, gateway: StripeGateway, customer: Customer) -> None:
    """Undo a pending cancellation."""
    subscription = await live_subscription(pool, customer)
    if not subscription.cancel_at_period_end:
        raise Conflict("The subscription has no pending cancellation to undo.")
    updated = await gateway.set_cancel_at_period_end(
        subscription.stripe_subscription_id,
        cancel=False,
        idempotency_key=_key(subscription, "resume"),
    )
    await subscriptions.upsert_subscription(pool, customer.id, updated)
