"""Changing, cancelling, resuming and unpausing a customer's subscription in Stripe.

The subscription acted on is the one that carries the customer's plan (the best plan granted
now, see db/subscriptions.py), and within it the plan's item. A change also replaces the
metered items of the catalog (billed overage) with the new plan's for the new interval, in the
same update (a classic subscription refuses items of mixed intervals); other items stay.
Upgrades apply at once and invoice the prorated difference immediately (if that payment fails,
nothing changes). Downgrades wait for the end of the paid period by default, through a Stripe
subscription schedule, or apply at once with a proration credit when `BILLING_DOWNGRADE_AT=now`.
Every Stripe answer is mirrored into our table before we reply.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from fractions import Fraction
from typing import Literal

import asyncpg

from billing_service.db import billing_meters, plans, prices, subscriptions
from billing_service.db.billing_meters import MeteredItem
from billing_service.db.customers import Customer
from billing_service.db.prices import Price
from billing_service.db.subscriptions import Subscription
from billing_service.errors import (
    BillingError,
    Conflict,
    CurrencyMismatch,
    FieldError,
    NoActiveSubscription,
    SubscriptionPaused,
    ValidationFailed,
)
from billing_service.services.checkout import live_synced_price
from billing_service.stripe_gateway import StripeGateway, stripe_answered

INTERVAL_MONTHS = {"month": 1, "year": 12}
CHANGEABLE_STATUSES = ("active", "trialing", "past_due")


@dataclass(frozen=True, slots=True)
class PlanChange:
    direction: Literal["upgrade", "downgrade"]
    effective: Literal["now", "period_end"]


@dataclass(frozen=True, slots=True, order=True)
class PriceRank:
    """How a recurring price ranks in the catalog, compared field by field: the plan's
    `display_order` (the tier), then the billing interval in months (a longer commitment),
    then the amount per month (only ever compared within one currency)."""

    display_order: int
    months: int
    monthly_amount: Fraction


def is_upgrade(current: PriceRank | None, new: PriceRank) -> bool:
    """A higher tier, or in the same tier a longer interval or more per month, is an upgrade;
    anything else waits for the end of the paid period. A price outside the catalog ranks
    below every catalog price."""
    return current is None or new > current


async def _rank(pool: asyncpg.Pool, price: Price) -> PriceRank:
    plan = await plans.select_plan(pool, price.plan_id)
    months = INTERVAL_MONTHS.get(price.recurring_interval or "month", 1)
    return PriceRank(plan.display_order, months, Fraction(price.amount, months))


@dataclass(frozen=True, slots=True)
class MeteredSwap:
    """What a plan change does to the metered items: the catalog's metered items to remove
    and the Stripe prices to add, so the subscription carries the new plan's metered prices
    for the new interval and no other plan's."""

    remove: list[MeteredItem]
    add: list[str]


async def _metered_swap(
    pool: asyncpg.Pool, subscription: Subscription, price: Price
) -> MeteredSwap:
    """An item already on a wanted price stays; items priced outside the catalog stay too."""
    wanted = await billing_meters.select_stripe_metered_prices(
        pool, price.plan_id, price.recurring_interval
    )
    carried = await billing_meters.select_catalog_metered_items(pool, subscription.id)
    present = {item.price for item in carried}
    return MeteredSwap(
        remove=[item for item in carried if item.price not in wanted],
        add=[added for added in wanted if added not in present],
    )


async def _plan_subscription(
    pool: asyncpg.Pool, customer: Customer, *, grace: timedelta, paused_ok: bool = False
) -> Subscription:
    """The subscription carrying the customer's plan, if it is one we may act on."""
    current = await subscriptions.select_current_subscription(pool, customer.id, grace=grace)
    if current is not None and current.status == "paused" and not paused_ok:
        raise SubscriptionPaused(
            f"Customer '{customer.external_id}' has a paused subscription; resume it first with "
            f"POST /v1/customers/{customer.external_id}/subscription/resume."
        )
    allowed = (*CHANGEABLE_STATUSES, "paused") if paused_ok else CHANGEABLE_STATUSES
    if current is None or current.status not in allowed:
        raise NoActiveSubscription(
            f"Customer '{customer.external_id}' has no active subscription; "
            "start one with POST /v1/checkout/sessions."
        )
    return current


def _key(subscription: Subscription, action: str) -> str:
    """Stable for retries of one attempt (the SDK's own retries, a concurrent duplicate that
    read the same row), fresh once the row changes: after any change we mirror, and after a
    failure Stripe answered (see `_attempt`)."""
    version = int(subscription.updated_at.timestamp() * 1_000_000)
    return f"subscription:{subscription.stripe_subscription_id}:{action}:{version}"


@asynccontextmanager
async def _attempt(pool: asyncpg.Pool, subscription: Subscription) -> AsyncIterator[None]:
    """One attempt at changing the subscription in Stripe. Stripe keeps a failed answer (a
    declined card, a refusal) under its idempotency key for 24 hours, so once Stripe has
    answered, the row moves to a new version and the next attempt sends new keys."""
    try:
        yield
    except BillingError as exc:
        if stripe_answered(exc):
            await subscriptions.start_new_version(pool, subscription.id, subscription.updated_at)
        raise


async def _release_schedule(
    pool: asyncpg.Pool, gateway: StripeGateway, subscription: Subscription
) -> None:
    """Drop a scheduled change before changing the subscription directly; the mirror forgets
    it at once, so a later attempt does not release it again."""
    if subscription.stripe_schedule_id is not None:
        await gateway.release_schedule(
            subscription.stripe_schedule_id, idempotency_key=_key(subscription, "release")
        )
        await subscriptions.forget_schedule(pool, subscription.stripe_subscription_id)


async def change_plan(
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    customer: Customer,
    *,
    price_key: str,
    downgrade_at: Literal["period_end", "now"],
    grace: timedelta,
) -> PlanChange:
    """Move the plan's item to another recurring price in the subscription's currency."""
    subscription = await _plan_subscription(pool, customer, grace=grace)
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
    currency = subscription.currency or (current_price.currency if current_price else None)
    if currency is not None and new_price.currency != currency:
        raise CurrencyMismatch(
            [FieldError("price", f"is in {new_price.currency.upper()}; the subscription is "
                        f"billed in {currency.upper()}")],
            f"A subscription cannot change currency. Choose a price in {currency.upper()}, or "
            "cancel the subscription and check out again in the new currency.",
        )  # fmt: skip
    upgrade = is_upgrade(
        None if current_price is None else await _rank(pool, current_price),
        await _rank(pool, new_price),
    )
    change_key = _key(subscription, f"change:{new_price.id}")
    swap = await _metered_swap(pool, subscription, new_price)

    async with _attempt(pool, subscription):
        if upgrade or downgrade_at == "now":
            await _release_schedule(pool, gateway, subscription)
            updated = await gateway.change_subscription_price(
                subscription.stripe_subscription_id,
                item_id=subscription.stripe_item_id,
                price=new_price.stripe_price_id,
                proration_behavior="always_invoice" if upgrade else "create_prorations",
                idempotency_key=change_key,
                remove_items=[item.id for item in swap.remove],
                add_prices=swap.add,
            )
            await subscriptions.upsert_subscription(pool, customer.id, updated)
            return PlanChange(direction="upgrade" if upgrade else "downgrade", effective="now")

        schedule_id, effective_at = await gateway.schedule_price_change(
            subscription.stripe_subscription_id,
            item_id=subscription.stripe_item_id,
            new_price=new_price.stripe_price_id,
            idempotency_key=change_key,
            drop_prices={item.price for item in swap.remove},
            add_prices=swap.add,
        )
    await subscriptions.set_scheduled_change(
        pool,
        subscription.stripe_subscription_id,
        schedule_id=schedule_id,
        price_id=new_price.id,
        effective_at=effective_at,
    )
    return PlanChange(direction="downgrade", effective="period_end")


async def cancel(
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    customer: Customer,
    *,
    at_period_end: bool,
    grace: timedelta,
) -> None:
    """Cancel at the end of the paid period (the plan is kept until then) or right away.
    A paused subscription has no running period: it can only be cancelled now."""
    subscription = await _plan_subscription(pool, customer, grace=grace, paused_ok=True)
    if subscription.status == "paused" and at_period_end:
        raise SubscriptionPaused(
            "A paused subscription has no period to run out: cancel it now "
            '({"at_period_end": false}) or resume it first.'
        )
    async with _attempt(pool, subscription):
        await _release_schedule(pool, gateway, subscription)
        if at_period_end:
            updated = await gateway.set_cancel_at_period_end(
                subscription.stripe_subscription_id,
                cancel=True,
                idempotency_key=_key(subscription, "cancel-at-period-end"),
            )
        else:
            updated = await gateway.cancel_subscription_now(
                subscription.stripe_subscription_id,
                idempotency_key=_key(subscription, "cancel-now"),
            )
    await subscriptions.upsert_subscription(pool, customer.id, updated)


async def resume(
    pool: asyncpg.Pool, gateway: StripeGateway, customer: Customer, *, grace: timedelta
) -> None:
    """Unpause a paused subscription, or undo a pending cancellation, whether it was set for
    the period end (`cancel_at_period_end`) or for a date (`cancel_at`, from the portal)."""
    subscription = await _plan_subscription(pool, customer, grace=grace, paused_ok=True)
    stripe_id = subscription.stripe_subscription_id
    async with _attempt(pool, subscription):
        if subscription.status == "paused":
            updated = await gateway.resume_subscription(
                stripe_id, idempotency_key=_key(subscription, "unpause")
            )
        elif subscription.cancel_at_period_end:
            updated = await gateway.set_cancel_at_period_end(
                stripe_id, cancel=False, idempotency_key=_key(subscription, "resume")
            )
        elif subscription.cancel_at is not None:
            updated = await gateway.clear_cancel_at(
                stripe_id, idempotency_key=_key(subscription, "resume")
            )
        else:
            raise Conflict("The subscription is neither paused nor set to cancel.")
    await subscriptions.upsert_subscription(pool, customer.id, updated)
