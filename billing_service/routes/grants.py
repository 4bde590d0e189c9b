"""Operators' per-customer adjustments (admin scope): grant credits, override a feature's
limit, read the audit of both."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from billing_service.auth import current_key, requires
from billing_service.catalog_spec import KEY_PATTERN
from billing_service.db.grants import AuditEntry
from billing_service.errors import FieldError, ValidationFailed
from billing_service.routes._http import (
    JSONResponse,
    Timestamp,
    customer_id_param,
    field_errors,
    parse_json,
)
from billing_service.routes._pagination import after, page_body, page_request, time_cursor
from billing_service.services import grants
from billing_service.services.api_keys import Scope
from billing_service.services.grants import Change
from billing_service.state import app_state, lag_tolerant

MAX_CREDITS = 1_000_000_000


class GrantCredits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    feature: str = Field(pattern=KEY_PATTERN)
    amount: int = Field(ge=1, le=MAX_CREDITS)
    reason: str = Field(min_length=1, max_length=500)
    expires_at: Timestamp | None = None


class PutOverride(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int | None = Field(ge=0, le=2**63 - 1)
    reason: str = Field(min_length=1, max_length=500)


class RemoveOverride(BaseModel):
    """The query of a removal: DELETE carries no body."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=500)


def _change(request: Request, reason: str) -> Change:
    return Change(actor=current_key(request), reason=reason, now=app_state(request)["clock"]())


def _feature_param(request: Request) -> str:
    """The `{feature}` path segment, which must look like a feature key."""
    feature: str = request.path_params["feature"]
    if not re.fullmatch(KEY_PATTERN, feature):
        raise ValidationFailed([FieldError("feature", f"must match {KEY_PATTERN}")])
    return feature


def _forget(request: Request, customer_key: str) -> None:
    """This process answers from the new state at once; the others hear the triggers."""
    app_state(request)["entitlement_cache"].evict(customer_key)


@requires(Scope.ADMIN)
async def grant_credits(request: Request) -> Response:
    customer_key = customer_id_param(request)
    body = await parse_json(request, GrantCredits)
    lot = await grants.grant_credits(
        app_state(request)["pool"], customer_key, body.feature, body.amount,
        expires_at=body.expires_at, change=_change(request, body.reason),
    )  # fmt: skip
    _forget(request, customer_key)
    return JSONResponse(
        {
            "id": str(lot.id),
            "customer_id": customer_key,
            "feature": body.feature,
            "amount": lot.granted,
            "expires_at": lot.expires_at,
            "reason": body.reason,
            "created_at": lot.created_at,
        },
        status_code=201,
    )


@requires(Scope.ADMIN)
async def put_override(request: Request) -> Response:
    customer_key = customer_id_param(request)
    feature = _feature_param(request)
    body = await parse_json(request, PutOverride)
    override = await grants.set_override(
        app_state(request)["pool"], customer_key, feature, body.limit,
        _change(request, body.reason),
    )  # fmt: skip
    _forget(request, customer_key)
    return JSONResponse(
        {
            "customer_id": customer_key,
            "feature": feature,
            "limit": override.limit,
            "created_at": override.created_at,
            "updated_at": override.updated_at,
        }
    )


@requires(Scope.ADMIN)
async def delete_override(request: Request) -> Response:
    customer_key = customer_id_param(request)
    feature = _feature_param(request)
    try:
        query = RemoveOverride.model_validate(dict(request.query_params))
    except ValidationError as exc:
        raise ValidationFailed(field_errors(exc)) from None
    await grants.remove_override(
        app_state(request)["pool"], customer_key, feature, _change(request, query.reason)
    )
    _forget(request, customer_key)
    return Response(status_code=204)


def _audit_entry(entry: AuditEntry) -> dict[str, object]:
    return {
        "id": str(entry.id),
        "feature": entry.feature_key,
        "action": entry.action,
        "details": entry.details,
        "reason": entry.reason,
        "actor": {"key_id": entry.actor_key_id, "name": entry.actor_name},
        "created_at": entry.created_at,
    }


@requires(Scope.ADMIN)
async def list_audit(request: Request) -> Response:
    """The customer's adjustments, newest first, a page at a time."""
    customer_key = customer_id_param(request)
    page = page_request(request)
    entries = await lag_tolerant(
        request,
        lambda pool: grants.audit(pool, customer_key, after=after(page), limit=page.limit + 1),
    )
    return JSONResponse(page_body(entries, page, serialize=_audit_entry, cursor_of=time_cursor))


routes = [
    Route("/v1/customers/{customer_id}/credits", grant_credits, methods=["POST"]),
    Route("/v1/customers/{customer_id}/overrides/{feature}", put_override, methods=["PUT"]),
    Route("/v1/customers/{customer_id}/overrides/{feature}", delete_override, methods=["DELETE"]),
    Route("/v1/customers/{customer_id}/adjustments", list_audit, methods=["GET"]),
]
