"""Customer routes: the customer record, their subscription and its changes, and their orders."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

import asyncpg
from pydantic import BaseModel, ConfigDict, EmailStr, Field, StringConstraints
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from billing_service.auth import requires
from billing_service.db import customers as customers_db
from billing_service.db import orders as orders_db
from billing_service.db.customers import Customer, ListedCustomer
from billing_service.db.orders import Order
from billing_service.db.subscriptions import Subscription
from billing_service.errors import FieldError, NotFound, ValidationFailed
from billing_service.routes._http import JSONResponse, customer_id_param, parse_json
from billing_service.routes._pagination import after, page_body, page_request, time_cursor
from billing_service.services import customers, subscriptions
from billing_service.services.api_keys import Scope
from billing_service.services.customers import CustomerView
from billing_service.state import app_state, lag_tolerant
from billing_service.stripe_gateway import require_stripe

MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=40)]
MetadataValue = Annotated[str, StringConstraints(max_length=500)]


class PutCustomer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: EmailStr
    name: str | None = Field(default=None, max_length=256)
    metadata: dict[MetadataKey, MetadataValue] = Field(default_factory=dict, max_length=50)


class ChangePlan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    price: str = Field(min_length=1, max_length=63)


class CancelSubscription(BaseModel):
    model_config = ConfigDict(extra="forbid")

    at_period_end: bool = True


def serialize_subscription(
    subscription: Subscription | None, *, now: datetime
) -> dict[str, object] | None:
    """The subscription as callers see it. A pending cancellation shows whether Stripe will
    end it at the period end or at a date; a scheduled change shows only until it happens."""
    if subscription is None:
        return None
    scheduled = subscription.scheduled_price_key
    effective_at = subscription.scheduled_change_at
    upcoming = scheduled is not None and (effective_at is None or effective_at > now)
    return {
        "stripe_subscription_id": subscription.stripe_subscription_id,
        "status": subscription.status,
        "plan": subscription.plan_key,
        "price": subscription.price_key,
        "quantity": subscription.quantity,
        "items": subscription.items,
        "current_period_start": subscription.current_period_start,
        "current_period_end": subscription.current_period_end,
        "cancel_at_period_end": subscription.cancel_at_period_end,
        "cancel_at": subscription.cancel_at,
        "cancellation_pending": subscription.cancellation_pending,
        "canceled_at": subscription.canceled_at,
        "trial_end": subscription.trial_end,
        "scheduled_change": (
            {"price": scheduled, "effective_at": effective_at} if upcoming else None
        ),
        "scheduled_quantity": subscription.scheduled_quantity,
    }


def serialize_seats(view: CustomerView) -> dict[str, object] | None:
    """Seats bought and held by members, when the subscription is sold per seat."""
    subscription = view.subscription
    if subscription is None or view.seats_in_use is None:
        return None
    return {
        "purchased": subscription.quantity,
        "in_use": view.seats_in_use,
        "available": max(
            0,
            min(subscription.quantity, subscription.scheduled_quantity or subscription.quantity)
            - view.seats_in_use,
        ),
        "scheduled": subscription.scheduled_quantity,
        "max_seats": subscription.max_seats,
    }


def serialize_customer(view: CustomerView) -> dict[str, object]:
    customer = view.customer
    return {
        "customer_id": customer.external_id,
        "stripe_customer_id": customer.stripe_customer_id,
        "email": customer.email,
        "name": customer.name,
        "metadata": customer.metadata,
        "plan": None if view.plan is None else {"key": view.plan.key, "name": view.plan.name},
        "subscription": serialize_subscription(view.subscription, now=view.as_of),
        "seats": serialize_seats(view),
        "created_at": customer.created_at,
    }


def _grace(request: Request) -> timedelta:
    return timedelta(days=app_state(request)["settings"].past_due_grace_days)


async def view_of(request: Request, customer: Customer) -> CustomerView:
    """The customer's current plan and subscription, under the configured grace period."""
    state = app_state(request)
    return await customers.customer_view(
        state["pool"], customer, grace=_grace(request), now=state["clock"]()
    )


async def _view(request: Request, customer_id: str) -> CustomerView:
    customer = await customers.get_customer(app_state(request)["pool"], customer_id)
    return await view_of(request, customer)


@requires(Scope.BILLING)
async def put_customer(request: Request) -> Response:
    customer_id = customer_id_param(request)
    body = await parse_json(request, PutCustomer)
    state = app_state(request)
    try:
        _customer, created = await customers.upsert_customer(
            state["pool"],
            state["stripe"],
            external_id=customer_id,
            email=body.email,
            name=body.name,
            metadata=body.metadata,
        )
    finally:  # this process's next check sees the new customer
        state["entitlement_cache"].evict(customer_id)
    view = await _view(request, customer_id)
    return JSONResponse(serialize_customer(view), status_code=201 if created else 200)


@requires(Scope.BILLING)
async def get_customer(request: Request) -> Response:
    return JSONResponse(serialize_customer(await _view(request, customer_id_param(request))))


@requires(Scope.BILLING)
async def get_subscription(request: Request) -> Response:
    customer_id = customer_id_param(request)
    view = await _view(request, customer_id)
    if view.subscription is None:
        raise NotFound(f"Customer '{customer_id}' has never subscribed.")
    return JSONResponse(serialize_subscription(view.subscription, now=view.as_of))


@requires(Scope.BILLING)
async def change_subscription(request: Request) -> Response:
    customer_id = customer_id_param(request)
    body = await parse_json(request, ChangePlan)
    state = app_state(request)
    gateway = require_stripe(state["stripe"])
    customer = await customers.get_customer(state["pool"], customer_id)
    try:
        change = await subscriptions.change_plan(
            state["pool"],
            gateway,
            customer,
            price_key=body.price,
            downgrade_at=state["settings"].downgrade_at,
            grace=_grace(request),
        )
    finally:  # this process's next check sees the new plan
        state["entitlement_cache"].evict(customer_id)
    view = await _view(request, customer_id)
    return JSONResponse(
        {
            "change": {"direction": change.direction, "effective": change.effective},
            "subscription": serialize_subscription(view.subscription, now=view.as_of),
        }
    )


@requires(Scope.BILLING)
async def cancel_subscription(request: Request) -> Response:
    customer_id = customer_id_param(request)
    body = await parse_json(request, CancelSubscription)
    state = app_state(request)
    gateway = require_stripe(state["stripe"])
    customer = await customers.get_customer(state["pool"], customer_id)
    try:
        await subscriptions.cancel(
            state["pool"], gateway, customer, at_period_end=body.at_period_end,
            grace=_grace(request),
        )  # fmt: skip
    finally:
        state["entitlement_cache"].evict(customer_id)
    view = await _view(request, customer_id)
    return JSONResponse(serialize_subscription(view.subscription, now=view.as_of))


@requires(Scope.BILLING)
async def resume_subscription(request: Request) -> Response:
    customer_id = customer_id_param(request)
    state = app_state(request)
    gateway = require_stripe(state["stripe"])
    customer = await customers.get_customer(state["pool"], customer_id)
    try:
        await subscriptions.resume(state["pool"], gateway, customer, grace=_grace(request))
    finally:
        state["entitlement_cache"].evict(customer_id)
    view = await _view(request, customer_id)
    return JSONResponse(serialize_subscription(view.subscription, now=view.as_of))


def serialize_order(order: Order) -> dict[str, object]:
    return {
        "id": order.id,
        "status": order.status,
        "currency": order.currency,
        "amount_total": order.amount_total,
        "customer_email": order.customer_email,
        "line_items": order.line_items,
        "checkout_session_id": order.stripe_checkout_session_id,
        "created_at": order.created_at,
    }


@requires(Scope.BILLING)
async def list_orders(request: Request) -> Response:
    """The customer's one-time purchases, newest first, a page at a time."""
    page = page_request(request)
    customer_key = customer_id_param(request)

    async def read(pool: asyncpg.Pool) -> list[Order]:
        customer = await customers.get_customer(pool, customer_key)
        return await orders_db.select_orders(
            pool, customer.id, after=after(page), limit=page.limit + 1
        )

    orders = await lag_tolerant(request, read)
    return JSONResponse(page_body(orders, page, serialize=serialize_order, cursor_of=time_cursor))


def serialize_listed(customer: ListedCustomer) -> dict[str, object]:
    return {
        "customer_id": customer.external_id,
        "email": customer.email,
        "name": customer.name,
        "stripe_customer_id": customer.stripe_customer_id,
        "plan": None if customer.plan_key is None else {
            "key": customer.plan_key, "name": customer.plan_name,
        },
        "subscription_status": customer.subscription_status,
        "created_at": customer.created_at,
    }  # fmt: skip


def _search_param(request: Request) -> str | None:
    text = request.query_params.get("q")
    if text is not None and not (0 < len(text) <= 255 and text.isprintable()):
        raise ValidationFailed([FieldError("q", "must be 1 to 255 printable characters")])
    return text


@requires(Scope.BILLING)
async def list_customers(request: Request) -> Response:
    """Customers newest first, a page at a time; `q` keeps those whose external id starts with
    it, or whose email does, ignoring case. The search text is never logged."""
    text = _search_param(request)
    page = page_request(request)
    listed = await lag_tolerant(
        request,
        lambda pool: customers_db.select_customer_page(
            pool,
            found=None if text is None else customers_db.search(text),
            after=after(page),
            limit=page.limit + 1,
            grace=_grace(request),
        ),
    )
    return JSONResponse(page_body(listed, page, serialize=serialize_listed, cursor_of=time_cursor))


routes = [
    Route("/v1/customers", list_customers, methods=["GET"]),
    Route("/v1/customers/{customer_id}", put_customer, methods=["PUT"]),
    Route("/v1/customers/{customer_id}", get_customer, methods=["GET"]),
    Route("/v1/customers/{customer_id}/subscription", get_subscription, methods=["GET"]),
    Route("/v1/customers/{customer_id}/subscription/change", change_subscription, methods=["POST"]),
    Route("/v1/customers/{customer_id}/subscription/cancel", cancel_subscription, methods=["POST"]),
    Route("/v1/customers/{customer_id}/subscription/resume", resume_subscription, methods=["POST"]),
    Route("/v1/customers/{customer_id}/orders", list_orders, methods=["GET"]),
]
