"""Team routes: changing the seats of a per-seat subscription, the members holding them, and a
member's entitlements."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from billing_service.auth import current_key, requires
from billing_service.catalog_spec import MAX_SEATS
from billing_service.db import members as members_db
from billing_service.db.members import Member
from billing_service.errors import FieldError, ValidationFailed
from billing_service.routes._http import (
    CUSTOMER_ID_PATTERN,
    JSONResponse,
    customer_id_param,
    idempotency_key_header,
    parse_json,
)
from billing_service.routes._pagination import encode_cursor, page_body, page_request
from billing_service.routes.customers import serialize_seats, serialize_subscription, view_of
from billing_service.routes.usage import serialize_entitlement
from billing_service.services import customers, idempotency, teams, usage
from billing_service.services.api_keys import Scope
from billing_service.state import app_state
from billing_service.stripe_gateway import require_stripe

_MEMBER_ID = re.compile(CUSTOMER_ID_PATTERN)
# A seat change may release a schedule, then update the subscription or write a schedule.
SEATS_STRIPE_CALLS = 4


class ChangeSeats(BaseModel):
    model_config = ConfigDict(extra="forbid")

    quantity: int = Field(ge=1, le=MAX_SEATS)


def member_id_param(request: Request) -> str:
    """The `{member_id}` path segment: the calling app's own id for the member."""
    member_id: str = request.path_params["member_id"]
    if not _MEMBER_ID.fullmatch(member_id):
        raise ValidationFailed([FieldError("member_id", f"must match {CUSTOMER_ID_PATTERN}")])
    return member_id


def _now(request: Request) -> datetime:
    return app_state(request)["clock"]()


def _grace(request: Request) -> timedelta:
    return timedelta(days=app_state(request)["settings"].past_due_grace_days)


def serialize_member(member: Member) -> dict[str, object]:
    return {"member_id": member.member_id, "created_at": member.created_at}


@requires(Scope.BILLING)
async def change_seats(request: Request) -> Response:
    """Set the seats bought; replayed for the same `Idempotency-Key` and body."""
    customer_id = customer_id_param(request)
    body = await parse_json(request, ChangeSeats)
    state = app_state(request)
    gateway = require_stripe(state["stripe"])
    pool = state["pool"]
    customer = await customers.get_customer(pool, customer_id)
    outcome = await idempotency.begin(
        pool,
        api_key_id=current_key(request).id,
        operation=f"subscription.seats:{customer.id}",
        key=idempotency_key_header(request),
        body=body.model_dump_json().encode(),
        patience=idempotency.Patience.for_stripe_calls(state["settings"], SEATS_STRIPE_CALLS),
    )
    if isinstance(outcome, idempotency.Replay):
        return JSONResponse(outcome.body, status_code=outcome.status)
    try:
        change = await teams.change_seats(
            pool,
            gateway,
            customer,
            quantity=body.quantity,
            reduce_at=state["settings"].seat_reduction_at,
            grace=_grace(request),
        )
    except BaseException:
        await idempotency.abandon(pool, outcome)
        raise
    finally:  # this process's next check sees the new limits
        state["entitlement_cache"].evict(customer_id)
    view = await view_of(request, customer)
    payload = {
        "change": {"direction": change.direction, "effective": change.effective},
        "seats": serialize_seats(view),
        "subscription": serialize_subscription(view.subscription, now=view.as_of),
    }
    await idempotency.finish(pool, outcome, 200, payload)
    return JSONResponse(payload)


@requires(Scope.BILLING)
async def put_member(request: Request) -> Response:
    """Give the member a seat: 201 when new, 200 when they hold one already."""
    customer_id = customer_id_param(request)
    member_id = member_id_param(request)
    pool = app_state(request)["pool"]
    customer = await customers.get_customer(pool, customer_id)
    member, created = await teams.assign_member(pool, customer, member_id)
    return JSONResponse(serialize_member(member), status_code=201 if created else 200)


@requires(Scope.BILLING)
async def delete_member(request: Request) -> Response:
    customer_id = customer_id_param(request)
    member_id = member_id_param(request)
    pool = app_state(request)["pool"]
    customer = await customers.get_customer(pool, customer_id)
    await teams.remove_member(pool, customer, member_id)
    return Response(status_code=204)


@requires(Scope.BILLING, Scope.USAGE)
async def list_members(request: Request) -> Response:
    """Members by id, a page at a time, with the customer's seats."""
    customer_id = customer_id_param(request)
    page = page_request(request)
    if page.cursor is not None and not (len(page.cursor) == 1 and isinstance(page.cursor[0], str)):
        raise ValidationFailed([FieldError("cursor", "must be a next_cursor this list returned")])
    pool = app_state(request)["pool"]
    customer = await customers.get_customer(pool, customer_id)
    found = await members_db.select_members(
        pool,
        customer.id,
        after=None if page.cursor is None else page.cursor[0],
        limit=page.limit + 1,
    )
    view = await view_of(request, customer)
    return JSONResponse(
        page_body(found, page, serialize=serialize_member,
                  cursor_of=lambda m: encode_cursor(m.member_id))
        | {"seats": serialize_seats(view)}
    )  # fmt: skip


@requires(Scope.USAGE, Scope.BILLING, customer_token=True)
async def get_member_entitlements(request: Request) -> Response:
    """The team's entitlements with the member's own use and limit of each feature."""
    customer_id = customer_id_param(request)
    member_id = member_id_param(request)
    found = await usage.member_entitlements(
        app_state(request)["pool"], customer_id, member_id, now=_now(request),
        grace=_grace(request),
    )  # fmt: skip
    plan = next((e.plan_key for e, _ in found if e.plan_key), None)
    return JSONResponse(
        {
            "customer_id": customer_id,
            "member_id": member_id,
            "plan": plan,
            "features": [
                serialize_entitlement(e)
                | {"member": {"used": s.used, "limit": s.limit, "remaining": s.remaining}}
                for e, s in found
            ],
        }
    )


routes = [
    Route("/v1/customers/{customer_id}/subscription/seats", change_seats, methods=["POST"]),
    Route("/v1/customers/{customer_id}/members", list_members, methods=["GET"]),
    Route("/v1/customers/{customer_id}/members/{member_id}", put_member, methods=["PUT"]),
    Route("/v1/customers/{customer_id}/members/{member_id}", delete_member, methods=["DELETE"]),
    Route(
        "/v1/customers/{customer_id}/members/{member_id}/entitlements",
        get_member_entitlements,
        methods=["GET"],
    ),
]
