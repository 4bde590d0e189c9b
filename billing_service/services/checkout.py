"""Stripe Checkout and the customer portal: sending customers to Stripe to pay or manage billing."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg

from billing_service.db import billing_meters, checkout_sessions, discounts, plans, subscriptions
from billing_service.db.customers import Customer
from billing_service.db.prices import Price, select_live_price
from billing_service.errors import (
    FieldError,
    NoBillingAccount,
    NotFound,
    PriceNotSynced,
    SubscriptionExists,
    ValidationFailed,
)
from billing_service.services import customers
from billing_service.services.redirects import check_redirect_urls
from billing_service.services.stripe_keys import attempt_key
from billing_service.stripe_gateway import StripeGateway
from billing_service.stripe_objects import StripeCheckoutSession


@dataclass(frozen=True, slots=True)
class CheckoutRequest:
    customer_id: str
    price: str
    quantity: int
    success_url: str
    cancel_url: str
    trial_days: int | None
    allow_promotion_codes: bool
    promotion_code: str | None = None


async def live_synced_price(pool: asyncpg.Pool, lookup_key: str) -> tuple[Price, int]:
    """The live, synced price for a lookup key, with its plan's default trial days."""
    found = await select_live_price(pool, lookup_key)
    if found is None:
        raise ValidationFailed(
            [FieldError("price", f"no active price has lookup key '{lookup_key}'")]
        )
    price, trial_days = found
    if price.stripe_price_id is None:
        raise PriceNotSynced(
            f"Price '{lookup_key}' has not reached Stripe yet: push pending catalog changes with "
            "`billing-service catalog sync` or `POST /v1/catalog/sync` (admin key)."
        )
    return price, trial_days


async def create_checkout_session(
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    request: CheckoutRequest,
    *,
    allowed_hosts: list[str],
    idempotency_key: str,
    trial_repeats: bool = False,
) -> StripeCheckoutSession:
    """Open a Checkout session for one price; refuses a second subscription, and offers a
    trial only to a customer who never had one of the plan (unless `trial_repeats`)."""
    errors = check_redirect_urls(
        {"success_url": request.success_url, "cancel_url": request.cancel_url}, allowed_hosts
    )
    if errors:
        raise ValidationFailed(errors)
    customer = await customers.get_customer(pool, request.customer_id)
    price, plan_trial_days = await live_synced_price(pool, request.price)
    mode = "subscription" if price.type == "recurring" else "payment"
    if price.per_seat:  # the quantity is the seats bought: within the plan's bound
        max_seats = (await plans.select_plan(pool, price.plan_id)).max_seats
        if max_seats is not None and request.quantity > max_seats:
            raise ValidationFailed(
                [FieldError("quantity", f"must be at most {max_seats}, the plan's max_seats")]
            )
    if mode == "payment" and request.trial_days:
        raise ValidationFailed([FieldError("trial_days", "only subscriptions have trials")])
    trial_days = 0
    if mode == "subscription":
        wanted = plan_trial_days if request.trial_days is None else request.trial_days
        had_trial = (
            bool(wanted)
            and not trial_repeats
            and await _had_trial(pool, gateway, customer, price.plan_id)
        )
        await _refuse_second_subscription(pool, customer)
        trial_days = _trial_days(customer, wanted, explicit=request.trial_days, had=had_trial)

    promotion_code = await _promotion_code(pool, request)
    stripe_customer = await customers.ensure_stripe_customer(pool, gateway, customer)
    metadata = {
        "billing_customer_id": str(customer.id),
        "billing_customer_key": customer.external_id,
        "billing_price_key": price.lookup_key,
    }
    assert price.stripe_price_id is not None
    # The plan's metered prices for this interval ride along, so billed overage is invoiced.
    metered = (
        await billing_meters.select_stripe_metered_prices(
            pool, price.plan_id, price.recurring_interval
        )
        if mode == "subscription"
        else []
    )
    async with attempt_key(pool, idempotency_key) as key:
        session = await gateway.create_checkout_session(
            customer=stripe_customer,
            price=price.stripe_price_id,
            quantity=request.quantity,
            mode=mode,
            success_url=request.success_url,
            cancel_url=request.cancel_url,
            client_reference_id=str(customer.id),
            metadata=metadata,
            trial_days=trial_days,
            allow_promotion_codes=request.allow_promotion_codes,
            metered_prices=metered,
            promotion_code=promotion_code,
            idempotency_key=key,
        )
    await checkout_sessions.insert_checkout_session(
        pool, customer_id=customer.id, price_id=price.id, quantity=request.quantity,
        session=session,
    )  # fmt: skip
    return session


async def _promotion_code(pool: asyncpg.Pool, request: CheckoutRequest) -> str | None:
    """Stripe's id of the code the customer brought, looked up in our promotion codes
    (whatever its case); a code we do not know, or not yet in Stripe, is refused."""
    if request.promotion_code is None:
        return None
    if request.allow_promotion_codes:
        raise ValidationFailed(
            [FieldError("promotion_code", "cannot be sent with allow_promotion_codes: true")]
        )
    found = await discounts.select_promotion_code(pool, request.promotion_code)
    if found is None or found.stripe_promotion_code_id is None:
        raise ValidationFailed([FieldError("promotion_code", "no such promotion code")])
    return found.stripe_promotion_code_id


async def _had_trial(
    pool: asyncpg.Pool, gateway: StripeGateway, customer: Customer, plan_id: uuid.UUID
) -> bool:
    """Whether the customer already had a trial of the plan, in any subscription of any status.

    Our mirror answers first. When it knows of none and the customer is known to Stripe, their
    subscriptions are fetched from Stripe and mirrored, and the mirror asked again: a trial
    subscription whose webhook has not been processed yet still counts. A customer without a
    Stripe customer has no subscriptions in Stripe, so no call is made for them.
    """
    if await subscriptions.had_trial(pool, customer.id, plan_id):
        return True
    if customer.stripe_customer_id is None:
        return False
    await customers.sync_subscriptions_from_stripe(pool, gateway, customer)
    return await subscriptions.had_trial(pool, customer.id, plan_id)


def _trial_days(customer: Customer, wanted: int, *, explicit: int | None, had: bool) -> int:
    """The trial to offer: what was asked for (or the plan's), none for a customer who had one.
    A trial the caller asked for explicitly is refused rather than silently dropped, so the
    calling app never promises a trial that Checkout does not give."""
    if not had:
        return wanted
    if explicit:
        raise ValidationFailed(
            [FieldError("trial_days", "the customer already had a trial of this plan")],
            f"Customer '{customer.external_id}' already had a trial of this plan; check out "
            "without `trial_days` (or with 0) to subscribe without one.",
        )
    return 0


async def _refuse_second_subscription(pool: asyncpg.Pool, customer: Customer) -> None:
    """A live subscription carrying a plan (the one that matters, see db/subscriptions.py)
    blocks another: change it, resume it when paused, or use the portal. Subscriptions whose
    prices are outside the catalog (add-ons sold elsewhere) block nothing."""
    current = await subscriptions.select_current_subscription(pool, customer.id)
    if current is None or current.plan_id is None:
        return
    key = customer.external_id
    if current.status == "paused":
        raise SubscriptionExists(
            f"Customer '{key}' already has a paused subscription to '{current.plan_key}'. "
            f"Resume it with POST /v1/customers/{key}/subscription/resume."
        )
    if current.status in subscriptions.LIVE_STATUSES:
        raise SubscriptionExists(
            f"Customer '{key}' already has a {current.status} subscription. "
            f"Change it with POST /v1/customers/{key}/subscription/change "
            "or send the customer to the portal (POST /v1/portal/sessions)."
        )


@dataclass(frozen=True, slots=True)
class CheckoutStatus:
    session: StripeCheckoutSession
    customer: Customer


async def checkout_status(
    pool: asyncpg.Pool, gateway: StripeGateway, stripe_session_id: str
) -> CheckoutStatus:
    """Stripe's view of one of our sessions; a completed one syncs the customer at once, so a
    success page shows the new plan without waiting for the webhook."""
    ours = await checkout_sessions.select_checkout_session(pool, stripe_session_id)
    if ours is None:
        raise NotFound(f"No checkout session has id '{stripe_session_id}'.")
    session = await gateway.retrieve_checkout_session(stripe_session_id)
    await checkout_sessions.update_checkout_status(pool, stripe_session_id, session.status)
    customer = await customers.get_customer(pool, ours.external_customer_id)
    if session.status == "complete":
        await customers.sync_subscriptions_from_stripe(pool, gateway, customer)
    return CheckoutStatus(session=session, customer=customer)


async def create_portal_session(
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    *,
    customer_id: str,
    return_url: str,
    allowed_hosts: list[str],
) -> str:
    errors = check_redirect_urls({"return_url": return_url}, allowed_hosts)
    if errors:
        raise ValidationFailed(errors)
    customer = await customers.get_customer(pool, customer_id)
    if customer.stripe_customer_id is None:
        raise NoBillingAccount(
            f"Customer '{customer_id}' has no billing account yet; it is created by their "
            "first checkout."
        )
    return await gateway.create_portal_session(
        customer=customer.stripe_customer_id, return_url=return_url
    )
