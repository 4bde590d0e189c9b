"""Checkout and portal routes: where calling apps send their customers to pay."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from billing_service.auth import current_key, requires
from billing_service.routes._http import (
    CUSTOMER_ID_PATTERN,
    JSONResponse,
    idempotency_key_header,
    parse_json,
)
from billing_service.routes.customers import serialize_customer, view_of
from billing_service.services import checkout, idempotency
from billing_service.services.api_keys import Scope
from billing_service.services.checkout import CheckoutRequest
from billing_service.state import app_state
from billing_service.stripe_gateway import require_stripe
from billing_service.stripe_objects import StripeCheckoutSession

# At most two: the Stripe customer is created (a first checkout) or, when a trial is at stake,
# a known customer's subscriptions are fetched (never both); then the session.
CHECKOUT_STRIPE_CALLS = 2


class CreateCheckout(BaseModel):
    model_config = ConfigDict(extra="forbid")

    customer_id: str = Field(pattern=CUSTOMER_ID_PATTERN)
    price: str = Field(min_length=1, max_length=63)
    quantity: int = Field(default=1, ge=1, le=1000)
    success_url: str = Field(max_length=2048)
    cancel_url: str = Field(max_length=2048)
    trial_days: int | None = Field(default=None, ge=0, le=730)
    allow_promotion_codes: bool = False
    promotion_code: str | None = Field(default=None, min_length=1, max_length=200)


class CreatePortal(BaseModel):
    model_config = ConfigDict(extra="forbid")

    customer_id: str = Field(pattern=CUSTOMER_ID_PATTERN)
    return_url: str = Field(max_length=2048)


def serialize_session(session: StripeCheckoutSession) -> dict[str, object]:
    return {
        "id": session.id,
        "url": session.url,
        "mode": session.mode,
        "expires_at": session.expires_at,
    }


@requires(Scope.BILLING)
async def create_checkout_session(request: Request) -> Response:
    body = await parse_json(request, CreateCheckout)
    key = idempotency_key_header(request)
    state = app_state(request)
    gateway = require_stripe(state["stripe"])
    pool = state["pool"]
    outcome = await idempotency.begin(
        pool,
        api_key_id=current_key(request).id,
        operation="checkout.session",
        key=key,
        body=body.model_dump_json().encode(),
        patience=idempotency.Patience.for_stripe_calls(state["settings"], CHECKOUT_STRIPE_CALLS),
    )
    if isinstance(outcome, idempotency.Replay):
        return JSONResponse(outcome.body, status_code=outcome.status)
    try:
        session = await checkout.create_checkout_session(
            pool,
            gateway,
            CheckoutRequest(**body.model_dump()),
            allowed_hosts=state["settings"].allowed_redirect_hosts,
            idempotency_key=outcome.stripe_key,
            trial_repeats=state["settings"].trial_repeats,
        )
    except BaseException:
        await idempotency.abandon(pool, outcome)
        raise
    payload = serialize_session(session)
    await idempotency.finish(pool, outcome, 201, payload)
    return JSONResponse(payload, status_code=201)


@requires(Scope.BILLING)
async def get_checkout_session(request: Request) -> Response:
    state = app_state(request)
    gateway = require_stripe(state["stripe"])
    status = await checkout.checkout_status(state["pool"], gateway, request.path_params["id"])
    session = status.session
    view = await view_of(request, status.customer)
    return JSONResponse(
        serialize_session(session)
        | {
            "status": session.status,
            "payment_status": session.payment_status,
            "customer": serialize_customer(view),
        }
    )


@requires(Scope.BILLING)
async def create_portal_session(request: Request) -> Response:
    body = await parse_json(request, CreatePortal)
    state = app_state(request)
    gateway = require_stripe(state["stripe"])
    url = await checkout.create_portal_session(
        state["pool"],
        gateway,
        customer_id=body.customer_id,
        return_url=body.return_url,
        allowed_hosts=state["settings"].allowed_redirect_hosts,
    )
    return JSONResponse({"url": url}, status_code=201)


routes = [
    Route("/v1/checkout/sessions", create_checkout_session, methods=["POST"]),
    Route("/v1/checkout/sessions/{id}", get_checkout_session, methods=["GET"]),
    Route("/v1/portal/sessions", create_portal_session, methods=["POST"]),
]
