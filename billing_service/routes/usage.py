"""The hot path for calling apps: entitlement checks, usage tracking, usage reports, tokens."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from decimal import Context, Decimal
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from billing_service.auth import requires
from billing_service.errors import FieldError, IdempotencyKeyMismatch, ValidationFailed
from billing_service.history_window import DEFAULT_GRANULARITY, history_window
from billing_service.routes._conditional import conditional_json
from billing_service.routes._http import (
    CUSTOMER_ID_PATTERN,
    IDEMPOTENCY_KEY_HEADER,
    JSONResponse,
    Timestamp,
    customer_id_param,
    field_errors,
    idempotency_key_header,
    parse_json,
)
from billing_service.services import customer_tokens, usage
from billing_service.services.api_keys import Scope
from billing_service.services.overage_charges import OverageCharge, overage_charges
from billing_service.services.usage import Entitlement, TrackRequest
from billing_service.state import app_state, lag_tolerant

MAX_AMOUNT = 1_000_000_000
CustomerKey = Annotated[str, Field(pattern=CUSTOMER_ID_PATTERN)]
MemberKey = Annotated[str, Field(pattern=CUSTOMER_ID_PATTERN)]
FeatureKey = Annotated[str, Field(min_length=1, max_length=63)]

# Usage metadata labels a call (a model, a request id) and is kept as long as the usage event:
# the same per-entry limits as customer metadata (and Stripe's), and a bound on the whole.
MAX_METADATA_BYTES = 4096
MAX_METADATA_TEXT = 500
MAX_EXACT_NUMBER = 2**53 - 1  # integers beyond this are not exact in every JSON reader


def _metadata_value(value: object) -> object:
    """A short string, a finite number within ±(2**53 - 1), a boolean or null."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        if len(value) > MAX_METADATA_TEXT:
            raise ValueError(f"must be at most {MAX_METADATA_TEXT} characters")
        return value
    if isinstance(value, int | float):
        if not abs(value) <= MAX_EXACT_NUMBER:  # also refuses NaN and infinity
            raise ValueError(f"must be a number from -{MAX_EXACT_NUMBER} to {MAX_EXACT_NUMBER}")
        return value
    raise ValueError("must be a string, a number, a boolean or null")


MetadataKey = Annotated[str, Field(min_length=1, max_length=40)]
MetadataValue = Annotated[str | int | float | bool | None, BeforeValidator(_metadata_value)]

# What one call may add to a period's cost. A period's total saturates at the counter's bound
# (db.usage.MAX_COST) instead of overflowing; costs are never negative (see docs/usage.md).
COST_PLACES = 12
MAX_COST_PER_CALL = Decimal(10**12)
_DECIMAL_TEXT = re.compile(r"[0-9]+(\.[0-9]+)?")


def _cost(value: object) -> object:
    """A cost sent as a JSON number is inexact anyway: 12 decimal places of it are kept. A
    decimal string is taken exactly (and refused past 12 places)."""
    if isinstance(value, float) and abs(value) < 1e18:  # also refuses NaN and infinity
        return Decimal(repr(value)).quantize(Decimal(10) ** -COST_PLACES, context=Context(prec=40))
    if isinstance(value, int) and not isinstance(value, bool):
        return Decimal(value)
    if isinstance(value, str) and _DECIMAL_TEXT.fullmatch(value):
        return Decimal(value)
    raise ValueError(
        f'must be a number or a decimal string such as "0.0042", from 0 to {MAX_COST_PER_CALL}'
    )


Cost = Annotated[
    Decimal,
    BeforeValidator(_cost),
    Field(ge=0, le=MAX_COST_PER_CALL, decimal_places=COST_PLACES),
]


class CheckUsage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    customer_id: CustomerKey
    feature: FeatureKey
    amount: int = Field(default=1, ge=1, le=MAX_AMOUNT)
    member: MemberKey | None = None


class TrackUsage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    customer_id: CustomerKey
    feature: FeatureKey
    amount: int = Field(default=1, ge=-MAX_AMOUNT, le=MAX_AMOUNT)
    cost: Cost | None = None
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=255)
    metadata: dict[MetadataKey, MetadataValue] = Field(default_factory=dict, max_length=50)
    member: MemberKey | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata_is_small(cls, metadata: dict[str, Any]) -> dict[str, Any]:
        if len(orjson.dumps(metadata)) > MAX_METADATA_BYTES:
            raise ValueError(
                f"must be at most {MAX_METADATA_BYTES} bytes as JSON, keys and values together"
            )
        return metadata


class IssueToken(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ttl_seconds: int = Field(default=900, ge=60, le=86_400)
    member: MemberKey | None = None


class UsageQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    feature: FeatureKey | None = None
    since: Timestamp | None = Field(default=None, alias="from")
    until: Timestamp | None = Field(default=None, alias="to")
    granularity: Literal["hour", "day", "week", "month", "period"] = DEFAULT_GRANULARITY


def _now(request: Request) -> datetime:
    return app_state(request)["clock"]()


def _grace(request: Request) -> timedelta:
    return timedelta(days=app_state(request)["settings"].past_due_grace_days)


@requires(Scope.USAGE, Scope.BILLING)
async def check_usage(request: Request) -> Response:
    body = await parse_json(request, CheckUsage)
    state = app_state(request)
    decision = await usage.check(
        state["pool"], body.customer_id, body.feature, body.amount,
        now=_now(request), grace=_grace(request), cache=state["entitlement_cache"],
        member=body.member,
    )  # fmt: skip
    return JSONResponse(decision)


def _track_key(request: Request, body: TrackUsage) -> str:
    """One key, from the `Idempotency-Key` header or the body's `idempotency_key`; when both
    are sent they must agree."""
    header = idempotency_key_header(request)
    if header is not None and body.idempotency_key not in (None, header):
        raise IdempotencyKeyMismatch(
            [FieldError(IDEMPOTENCY_KEY_HEADER, "must equal the body's idempotency_key")],
            "The Idempotency-Key header and the body's idempotency_key differ; send one key.",
        )
    key = header or body.idempotency_key
    if key is None:
        raise ValidationFailed(
            [FieldError("idempotency_key", "required, in the body or the Idempotency-Key header")]
        )
    return key


@requires(Scope.USAGE, Scope.BILLING)
async def track_usage(request: Request) -> Response:
    body = await parse_json(request, TrackUsage)
    if body.amount == 0:
        raise ValidationFailed([FieldError("amount", "must not be 0")])
    idempotency_key = _track_key(request, body)
    state = app_state(request)
    recorded = True  # as far as anyone can tell, until the answer says otherwise
    try:
        decision = await usage.track(
            state["pool"],
            TrackRequest(
                customer_key=body.customer_id,
                feature_key=body.feature,
                amount=body.amount,
                cost=body.cost,
                idempotency_key=idempotency_key,
                metadata=body.metadata,
                member=body.member,
            ),
            now=_now(request),
            grace=_grace(request),
        )
        recorded = decision.get("recorded") is not False
    finally:  # this process's next check sees the track at once, the others moments later
        state["entitlement_cache"].evict(body.customer_id)
        if recorded:
            state["usage_publisher"].publish(body.customer_id)
    return JSONResponse(decision)


def serialize_entitlement(entitlement: Entitlement) -> dict[str, object]:
    period = entitlement.period
    metered = entitlement.metered and entitlement.enabled
    return {
        "feature": entitlement.context.feature_key,
        "kind": entitlement.context.kind,
        "enabled": entitlement.enabled,
        "unlimited": metered and entitlement.limit is None,
        "limit": entitlement.limit,
        "source": entitlement.source,
        "soft_limit": entitlement.soft_limit,
        "used": entitlement.used if metered else None,
        "remaining": entitlement.remaining,
        "credits": entitlement.credits if entitlement.metered else None,
        "cost": str(entitlement.cost) if metered else None,
        "reset": entitlement.reset if metered else None,
        "period_start": period.start if period else None,
        "resets_at": period.end if period else None,
    }


@requires(Scope.USAGE, Scope.BILLING, customer_token=True)
async def get_entitlements(request: Request) -> Response:
    customer_id = customer_id_param(request)
    state = app_state(request)
    found = await usage.entitlements(
        state["pool"], customer_id, now=_now(request), grace=_grace(request),
        cache=state["entitlement_cache"],
    )  # fmt: skip
    first = found[0].context if found else None
    plan = next((e.plan_key for e in found if e.plan_key), None)
    charges = await overage_charges(state["pool"], found)
    return conditional_json(
        request,
        {
            "customer_id": customer_id,
            "plan": plan,
            "subscription_status": first.status if first else None,
            "features": [
                serialize_entitlement(e)
                | {"overage_billing": serialize_charge(charges.get(e.context.feature_id))}
                for e in found
            ],
        },
    )


def serialize_charge(charge: OverageCharge | None) -> dict[str, object] | None:
    """A billed feature's units past its limit this period and their estimated amount."""
    if charge is None:
        return None
    return {
        "billable_units": charge.billable_units,
        "unit_amount": format(charge.unit_amount.normalize(), "f"),
        "currency": charge.currency,
        "estimated_amount": format(charge.estimated_amount.normalize(), "f"),
    }


@requires(Scope.USAGE, Scope.BILLING)
async def get_usage(request: Request) -> Response:
    """Usage and cost per feature and bucket over a bounded window (see history_window.py)."""
    customer_id = customer_id_param(request)
    try:
        query = UsageQuery.model_validate(dict(request.query_params))
    except ValidationError as exc:
        raise ValidationFailed(field_errors(exc)) from None
    window = history_window(
        query.granularity, since=query.since, until=query.until, now=_now(request)
    )
    state = app_state(request)
    periods = await lag_tolerant(
        request,
        lambda pool: usage.usage_history(
            pool, customer_id, feature_key=query.feature, window=window
        ),
    )
    current = await usage.entitlements(
        state["pool"], customer_id, now=_now(request), grace=_grace(request),
        cache=state["entitlement_cache"],
    )  # fmt: skip
    charges = await overage_charges(
        state["pool"], [e for e in current if query.feature in (None, e.context.feature_key)]
    )
    return JSONResponse(
        {
            "customer_id": customer_id,
            "granularity": window.granularity.name,
            "from": window.start,
            "to": window.end,
            "data": [
                {
                    "feature": p.feature_key,
                    "period_start": p.period_start,
                    "period_end": p.period_end,
                    "used": p.used,
                    "cost": format(p.cost, "f"),  # never exponent notation (1E-12)
                }
                for p in periods
            ],
            "overage_billing": [
                {
                    "feature": e.context.feature_key,
                    "period_start": e.period.start if e.period else None,
                    "period_end": e.period.end if e.period else None,
                    **(serialize_charge(charges[e.context.feature_id]) or {}),
                }
                for e in current
                if e.context.feature_id in charges
            ],
        }
    )


@requires(Scope.USAGE)
async def issue_customer_token(request: Request) -> Response:
    customer_id = customer_id_param(request)
    body = await parse_json(request, IssueToken) if await request.body() else IssueToken()
    token, expires_at = await customer_tokens.issue_token(
        app_state(request)["pool"], customer_id, now=_now(request),
        ttl=timedelta(seconds=body.ttl_seconds), member=body.member,
    )  # fmt: skip
    return JSONResponse(
        {"token": token, "expires_at": expires_at, "member_id": body.member}, status_code=201
    )


routes = [
    Route("/v1/usage/check", check_usage, methods=["POST"]),
    Route("/v1/usage/track", track_usage, methods=["POST"]),
    Route("/v1/customers/{customer_id}/entitlements", get_entitlements, methods=["GET"]),
    Route("/v1/customers/{customer_id}/usage", get_usage, methods=["GET"]),
    Route("/v1/customers/{customer_id}/tokens", issue_customer_token, methods=["POST"]),
]
