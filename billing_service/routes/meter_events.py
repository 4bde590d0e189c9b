"""Admin routes for the meter event outbox: what was billed, what Stripe refused, replays."""

from __future__ import annotations

import uuid

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from billing_service.auth import requires
from billing_service.db import meter_events
from billing_service.db.meter_events import STATUSES, MeterEvent
from billing_service.errors import FieldError, NotFound, ValidationFailed
from billing_service.routes._http import JSONResponse
from billing_service.routes._pagination import after, page_body, page_request, time_cursor
from billing_service.services.api_keys import Scope
from billing_service.state import app_state, lag_tolerant


def serialize_meter_event(event: MeterEvent) -> dict[str, object]:
    return {
        "id": str(event.id),
        "customer_id": event.customer,
        "feature": event.feature,
        "event_name": event.event_name,
        "identifier": event.identifier,
        "value": event.value,
        "status": event.status,
        "attempts": event.attempts,
        "last_error": event.last_error,
        "next_attempt_at": event.next_attempt_at if event.status == "pending" else None,
        "occurred_at": event.occurred_at,
        "sent_at": event.sent_at,
        "created_at": event.created_at,
    }


@requires(Scope.ADMIN)
async def list_meter_events(request: Request) -> Response:
    """The outbox, newest first, a page at a time; `?status=rejected` for what needs a look."""
    status = request.query_params.get("status")
    if status is not None and status not in STATUSES:
        raise ValidationFailed([FieldError("status", f"must be one of {', '.join(STATUSES)}")])
    page = page_request(request)
    found = await lag_tolerant(
        request,
        lambda pool: meter_events.select_meter_events(
            pool, status=status, after=after(page), limit=page.limit + 1
        ),
    )
    return JSONResponse(
        page_body(found, page, serialize=serialize_meter_event, cursor_of=time_cursor)
    )


@requires(Scope.ADMIN)
async def replay_meter_event(request: Request) -> Response:
    """Queue a rejected event again; its identifier is unchanged, so it still counts once."""
    raw = request.path_params["event_id"]
    try:
        event_id = uuid.UUID(raw)
    except ValueError:
        raise NotFound(f"No rejected meter event has id '{raw}'.") from None
    async with app_state(request)["pool"].acquire() as conn:
        if not await meter_events.replay(conn, event_id):
            raise NotFound(f"No rejected meter event has id '{raw}'.")
    return JSONResponse({"replayed": 1}, status_code=202)


routes = [
    Route("/v1/meter-events", list_meter_events, methods=["GET"]),
    Route("/v1/meter-events/{event_id}/replay", replay_meter_event, methods=["POST"]),
]
