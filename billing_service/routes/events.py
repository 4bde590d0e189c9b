"""The Stripe webhook endpoint, and admin routes to inspect and replay the event ledger."""

from __future__ import annotations

import re

import asyncpg
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from billing_service.auth import requires
from billing_service.db import stripe_events
from billing_service.db.stripe_events import STATUSES, LedgerEntry
from billing_service.errors import FieldError, NotFound, ValidationFailed
from billing_service.routes._http import CUSTOMER_ID_PATTERN, JSONResponse
from billing_service.routes._pagination import after, page_body, page_request, time_cursor
from billing_service.services import customers
from billing_service.services import stripe_events as events_service
from billing_service.services.api_keys import Scope
from billing_service.state import app_state, lag_tolerant


async def receive_stripe_webhook(request: Request) -> Response:
    """Authenticated by Stripe's signature, not by an API key."""
    state = app_state(request)
    inserted = await events_service.receive_event(
        state["pool"],
        state["settings"],
        await request.body(),
        request.headers.get("stripe-signature"),
    )
    state["metrics"].events_received.labels("new" if inserted else "duplicate").inc()
    if inserted and state["worker"] is not None:
        state["worker"].wake()
    return JSONResponse({"received": True, "duplicate": not inserted})


def serialize_event(event: LedgerEntry) -> dict[str, object]:
    return {
        "id": event.stripe_event_id,
        "type": event.type,
        "object_id": event.object_id,
        "status": event.status,
        "attempts": event.attempts,
        "last_error": event.last_error,
        "next_attempt_at": event.next_attempt_at if event.status == "pending" else None,
        "stripe_created_at": event.stripe_created_at,
        "received_at": event.created_at,
        "processed_at": event.processed_at,
    }


_EVENT_TYPE = re.compile(r"[a-z0-9_.]{1,100}")
_CUSTOMER_ID = re.compile(CUSTOMER_ID_PATTERN)


@requires(Scope.ADMIN)
async def list_events(request: Request) -> Response:
    """The ledger, newest first, a page at a time (see routes/_pagination.py), optionally of one
    status, one event type and one customer (the events about their Stripe customer)."""
    params = request.query_params
    status, event_type, customer_id = (
        params.get("status"),
        params.get("type"),
        params.get("customer"),
    )
    errors = []
    if status is not None and status not in STATUSES:
        errors.append(FieldError("status", f"must be one of {', '.join(STATUSES)}"))
    if event_type is not None and not _EVENT_TYPE.fullmatch(event_type):
        errors.append(FieldError("type", "must be a Stripe event type, such as invoice.paid"))
    if customer_id is not None and not _CUSTOMER_ID.fullmatch(customer_id):
        errors.append(FieldError("customer", f"must match {CUSTOMER_ID_PATTERN}"))
    if errors:
        raise ValidationFailed(errors)
    page = page_request(request)

    async def read(pool: asyncpg.Pool) -> list[LedgerEntry]:
        stripe_customer_id = None
        if customer_id is not None:
            customer = await customers.get_customer(pool, customer_id)
            if customer.stripe_customer_id is None:  # never reached Stripe: no event is theirs
                return []
            stripe_customer_id = customer.stripe_customer_id
        return await stripe_events.select_events(
            pool,
            status=status,
            type=event_type,
            stripe_customer_id=stripe_customer_id,
            after=after(page),
            limit=page.limit + 1,
        )

    found = await lag_tolerant(request, read)
    return JSONResponse(page_body(found, page, serialize=serialize_event, cursor_of=time_cursor))


@requires(Scope.ADMIN)
async def replay_event(request: Request) -> Response:
    state = app_state(request)
    event_id = request.path_params["event_id"]
    async with state["pool"].acquire() as conn:
        replayed = await stripe_events.requeue(conn, stripe_event_id=event_id)
    if not replayed:
        raise NotFound(f"No Stripe event has id '{event_id}'.")
    if state["worker"] is not None:
        state["worker"].wake()
    return JSONResponse({"replayed": replayed}, status_code=202)


@requires(Scope.ADMIN)
async def replay_failed_events(request: Request) -> Response:
    state = app_state(request)
    async with state["pool"].acquire() as conn:
        replayed = await stripe_events.requeue(conn, stripe_event_id=None)
    if state["worker"] is not None:
        state["worker"].wake()
    return JSONResponse({"replayed": replayed}, status_code=202)


routes = [
    Route("/v1/webhooks/stripe", receive_stripe_webhook, methods=["POST"]),
    Route("/v1/events", list_events, methods=["GET"]),
    Route("/v1/events/replay-failed", replay_failed_events, methods=["POST"]),
    Route("/v1/events/{event_id}/replay", replay_event, methods=["POST"]),
]
