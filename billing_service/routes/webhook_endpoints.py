"""Admin routes for outgoing webhooks: register endpoints, read their delivery log, redeliver."""

from __future__ import annotations

import uuid

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from billing_service.auth import requires
from billing_service.db import outbox
from billing_service.db.outbox import DeliveryRecord, Endpoint
from billing_service.errors import FieldError, NotFound, ValidationFailed
from billing_service.routes._http import JSONResponse, parse_json
from billing_service.routes._pagination import after, page_body, page_request, time_cursor
from billing_service.services import outgoing_webhooks
from billing_service.services.api_keys import Scope
from billing_service.state import app_state, lag_tolerant


class CreateEndpoint(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Checked by the outbound policy (public http(s) only), which also normalises it.
    url: str = Field(max_length=2048)
    event_types: list[str] = Field(min_length=1)


class UpdateEndpoint(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool


def serialize_endpoint(endpoint: Endpoint) -> dict[str, object]:
    return {
        "id": endpoint.id,
        "url": endpoint.url,
        "event_types": endpoint.event_types,
        "enabled": endpoint.enabled,
        "consecutive_failures": endpoint.consecutive_failures,
        "disabled_at": endpoint.disabled_at,
        "created_at": endpoint.created_at,
    }


def _uuid(request: Request, name: str) -> uuid.UUID:
    try:
        return uuid.UUID(request.path_params[name])
    except ValueError:
        raise NotFound(
            f"No {name.removesuffix('_id')} has id {request.path_params[name]}."
        ) from None


@requires(Scope.ADMIN)
async def create_endpoint(request: Request) -> Response:
    body = await parse_json(request, CreateEndpoint)
    unknown = sorted(set(body.event_types) - set(outgoing_webhooks.EVENT_TYPES))
    if unknown:
        known = ", ".join(outgoing_webhooks.EVENT_TYPES)
        raise ValidationFailed(
            [FieldError("event_types", f"unknown {', '.join(unknown)}; known: {known}")]
        )
    state = app_state(request)
    endpoint, secret = await outgoing_webhooks.register_endpoint(
        state["pool"],
        state["outbound"],
        url=body.url,
        event_types=sorted(set(body.event_types)),
    )
    return JSONResponse(serialize_endpoint(endpoint) | {"secret": secret}, status_code=201)


@requires(Scope.ADMIN)
async def list_endpoints(request: Request) -> Response:
    """Registered endpoints, oldest first, a page at a time."""
    page = page_request(request)
    endpoints = await lag_tolerant(
        request, lambda pool: outbox.select_endpoints(pool, after=after(page), limit=page.limit + 1)
    )
    return JSONResponse(
        page_body(endpoints, page, serialize=serialize_endpoint, cursor_of=time_cursor)
    )


@requires(Scope.ADMIN)
async def update_endpoint(request: Request) -> Response:
    """Disable an endpoint, or enable it again (its failure count starts over)."""
    endpoint_id = _uuid(request, "endpoint_id")
    body = await parse_json(request, UpdateEndpoint)
    pool = app_state(request)["pool"]
    if not await outbox.set_endpoint_enabled(pool, endpoint_id, body.enabled):
        raise NotFound(f"No endpoint has id {endpoint_id}.")
    endpoint = await outbox.select_endpoint(pool, endpoint_id)
    assert endpoint is not None  # endpoints are never deleted
    return JSONResponse(serialize_endpoint(endpoint))


def serialize_delivery(delivery: DeliveryRecord) -> dict[str, object]:
    return {
        "id": delivery.id,
        "webhook_id": f"msg_{delivery.event_id.hex}",
        "event_type": delivery.event_type,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "last_status_code": delivery.last_status_code,
        "last_error": delivery.last_error,
        "next_attempt_at": delivery.next_attempt_at if delivery.status == "pending" else None,
        "delivered_at": delivery.delivered_at,
        "created_at": delivery.created_at,
    }


@requires(Scope.ADMIN)
async def list_deliveries(request: Request) -> Response:
    """The endpoint's delivery log, newest first, a page at a time."""
    endpoint_id = _uuid(request, "endpoint_id")
    page = page_request(request)
    deliveries = await lag_tolerant(
        request,
        lambda pool: outbox.select_deliveries(
            pool, endpoint_id, after=after(page), limit=page.limit + 1
        ),
    )
    return JSONResponse(
        page_body(deliveries, page, serialize=serialize_delivery, cursor_of=time_cursor)
    )


@requires(Scope.ADMIN)
async def redeliver(request: Request) -> Response:
    delivery_id = _uuid(request, "delivery_id")
    if not await outbox.requeue_delivery(app_state(request)["pool"], delivery_id):
        raise NotFound(f"No delivery has id {delivery_id}.")
    return JSONResponse({"redelivering": True}, status_code=202)


routes = [
    Route("/v1/webhook-endpoints", create_endpoint, methods=["POST"]),
    Route("/v1/webhook-endpoints", list_endpoints, methods=["GET"]),
    Route("/v1/webhook-endpoints/{endpoint_id}", update_endpoint, methods=["PATCH"]),
    Route("/v1/webhook-endpoints/{endpoint_id}/deliveries", list_deliveries, methods=["GET"]),
    Route("/v1/webhook-deliveries/{delivery_id}/redeliver", redeliver, methods=["POST"]),
]
