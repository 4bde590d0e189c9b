"""The console's actions (POST forms): replay events, redeliver webhooks, grant credits, open a
portal link, re-sync a customer from Stripe. Each calls the service the API route calls."""

from __future__ import annotations

import uuid

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from billing_service.console._data import writer
from billing_service.console._web import Form, message, redirect, render, signed_in
from billing_service.console.session import Session
from billing_service.db import outbox, stripe_events
from billing_service.errors import NotFound, ValidationFailed
from billing_service.routes._http import field_errors
from billing_service.routes.grants import GrantCredits
from billing_service.services import checkout, customers, grants
from billing_service.services.grants import Change
from billing_service.state import app_state
from billing_service.stripe_gateway import require_stripe


def _wake_event_worker(request: Request) -> None:
    worker = app_state(request)["worker"]
    if worker is not None:
        worker.wake()


@signed_in
async def replay_event(request: Request, session: Session, _form: Form) -> Response:
    event_id = request.path_params["event_id"]
    async with writer(request).acquire() as conn:
        replayed = await stripe_events.requeue(conn, stripe_event_id=event_id)
    if not replayed:
        raise NotFound(f"No Stripe event has id '{event_id}'.")
    _wake_event_worker(request)
    return redirect(f"/console/events/{event_id}")


@signed_in
async def replay_failed(request: Request, session: Session, _form: Form) -> Response:
    async with writer(request).acquire() as conn:
        replayed = await stripe_events.requeue(conn, stripe_event_id=None)
    _wake_event_worker(request)
    return message(
        request,
        "Failed events requeued",
        f"{replayed} failed event(s) are pending again; the worker processes them next.",
        status=200,
        session=session,
    )


@signed_in
async def redeliver(request: Request, session: Session, _form: Form) -> Response:
    try:
        delivery_id = uuid.UUID(request.path_params["delivery_id"])
    except ValueError:
        raise NotFound(f"No delivery has id {request.path_params['delivery_id']}.") from None
    if not await outbox.requeue_delivery(writer(request), delivery_id):
        raise NotFound(f"No delivery has id {delivery_id}.")
    return message(
        request,
        "Redelivering",
        "The delivery is pending again; the worker sends it next.",
        status=200,
        session=session,
    )


@signed_in
async def grant_credits(request: Request, session: Session, form: Form) -> Response:
    customer_key = request.path_params["customer_id"]
    fields: dict[str, object] = {
        "feature": form.get("feature", ""),
        "amount": form.get("amount", ""),
        "reason": form.get("reason", ""),
    }
    if form.get("expires_at"):
        fields["expires_at"] = form["expires_at"]
    try:
        body = GrantCredits.model_validate(fields)
    except ValidationError as exc:
        raise ValidationFailed(field_errors(exc)) from None
    state = app_state(request)
    pool = writer(request)
    await customers.get_customer(pool, customer_key)
    try:
        await grants.grant_credits(
            pool,
            customer_key,
            body.feature,
            body.amount,
            expires_at=body.expires_at,
            change=Change(actor=session.key, reason=body.reason, now=state["clock"]()),
        )
    finally:
        state["entitlement_cache"].evict(customer_key)
    return redirect(f"/console/customers/{customer_key}")


@signed_in
async def resync(request: Request, session: Session, _form: Form) -> Response:
    customer_key = request.path_params["customer_id"]
    state = app_state(request)
    gateway = require_stripe(state["stripe"])
    pool = writer(request)
    customer = await customers.get_customer(pool, customer_key)
    try:
        await customers.sync_subscriptions_from_stripe(pool, gateway, customer)
    finally:
        state["entitlement_cache"].evict(customer_key)
    return redirect(f"/console/customers/{customer_key}")


@signed_in
async def portal_link(request: Request, session: Session, form: Form) -> Response:
    """A Stripe billing portal link for the customer, shown to copy (not followed: the portal
    is the customer's, not the operator's)."""
    customer_key = request.path_params["customer_id"]
    state = app_state(request)
    gateway = require_stripe(state["stripe"])
    url = await checkout.create_portal_session(
        writer(request),
        gateway,
        customer_id=customer_key,
        return_url=form.get("return_url", ""),
        allowed_hosts=state["settings"].allowed_redirect_hosts,
    )
    return render(
        request,
        "portal.html",
        {"customer_key": customer_key, "url": url},
        session=session,
    )
