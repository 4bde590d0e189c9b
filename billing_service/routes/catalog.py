"""Catalog routes: plans for pricing pages, and admin edits that go through the same apply."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from billing_service.auth import limit_by_address, requires
from billing_service.catalog_spec import (
    KEY_PATTERN,
    CatalogSpec,
    FeatureSpec,
    PlanSpec,
    is_valid_key,
)
from billing_service.db.plan_features import Allowance
from billing_service.errors import FieldError, NotFound, ValidationFailed
from billing_service.routes._conditional import conditional_json
from billing_service.routes._http import JSONResponse, parse_json
from billing_service.routes._pagination import PageRequest, encode_cursor, page_body, page_request
from billing_service.services import catalog, catalog_sync
from billing_service.services.api_keys import Scope
from billing_service.services.catalog import ApplyResult, PlanView
from billing_service.state import app_state, lag_tolerant
from billing_service.stripe_gateway import require_stripe


def serialize_plan(view: PlanView) -> dict[str, object]:
    plan = view.plan
    return {
        "key": plan.key,
        "name": plan.name,
        "description": plan.description,
        "default": plan.is_default,
        "active": plan.active,
        "trial_days": plan.trial_days,
        "display_order": plan.display_order,
        "public": plan.public,
        "max_seats": plan.max_seats,
        "prices": [
            {
                "lookup_key": price.lookup_key,
                "amount": price.amount,
                "currency": price.currency,
                "type": price.type,
                "interval": price.recurring_interval,
                "grants": grants,
                "per_seat": price.per_seat,
            }
            for price, grants in view.prices
        ],
        "features": [
            {
                "feature": feature.key,
                "name": feature.name,
                "kind": feature.kind,
                "unit": feature.unit,
                "enabled": allowance.enabled,
                "unlimited": allowance.enabled and allowance.limit is None,
                "limit": allowance.limit,
                "soft_limit": allowance.soft_limit,
                "reset": allowance.reset,
                "overage": allowance.overage,
                "overage_price": _overage_price(allowance),
                "per_seat": allowance.per_seat,
                "per_member": (
                    None if allowance.member_limit is None else {"limit": allowance.member_limit}
                ),
            }
            for feature, allowance in view.features
        ],
    }


def _overage_price(allowance: Allowance) -> dict[str, object] | None:
    amount = allowance.overage_unit_amount
    if amount is None or allowance.overage_currency is None:
        return None
    whole = amount == amount.to_integral_value()
    return {
        "amount_per_unit": int(amount) if whole else float(amount),
        "currency": allowance.overage_currency,
    }


def serialize_result(result: ApplyResult) -> dict[str, object]:
    return {
        "changes": result.changes,
        "stripe": {"synced": result.stripe_synced, "pending": result.stripe_pending},
    }


def _path_key(request: Request) -> str:
    key: str = request.path_params["key"]
    if not is_valid_key(key):
        raise ValidationFailed([FieldError("key", f"must match {KEY_PATTERN}")])
    return key


def _relative_to(errors: list[FieldError], prefix: str) -> list[FieldError]:
    """Report a body's errors relative to the body, not to the whole catalog."""
    return [
        FieldError(e.field.removeprefix(prefix) or "body", e.message)
        if e.field.startswith(prefix)
        else e
        for e in errors
    ]


def _plan_cursor(view: PlanView) -> str:
    return encode_cursor(view.plan.display_order, view.plan.key)


def _after_plan(page: PageRequest) -> tuple[int, str] | None:
    """The (display_order, key) a page of plans starts after."""
    if page.cursor is None:
        return None
    match page.cursor:
        case (int() as order, str() as key) if not isinstance(order, bool):
            return order, key
    raise ValidationFailed([FieldError("cursor", "must be a next_cursor this list returned")])


@requires(Scope.BILLING, Scope.USAGE)
async def list_plans(request: Request) -> Response:
    """Live plans in display order, a page at a time. The catalog is read whole (it is the
    operator's, a few rows, and does not grow with traffic); the page bounds the answer."""
    page = page_request(request)
    start = _after_plan(page)
    # Sorted here, so the order is the one the cursor compares with (not the database's collation).
    views = sorted(
        await lag_tolerant(request, catalog.plan_views),
        key=lambda v: (v.plan.display_order, v.plan.key),
    )
    if start is not None:
        views = [v for v in views if (v.plan.display_order, v.plan.key) > start]
    return conditional_json(
        request,
        page_body(views[: page.limit + 1], page, serialize=serialize_plan, cursor_of=_plan_cursor),
    )


@requires(Scope.BILLING, Scope.USAGE)
async def get_plan(request: Request) -> Response:
    key = request.path_params["key"]
    views = await catalog.plan_views(app_state(request)["pool"], key=key)
    if not views:
        raise NotFound(f"No plan has key '{key}'.")
    return conditional_json(request, serialize_plan(views[0]))


# Shared caches (a CDN) may serve the public list for a minute; browsers revalidate after that.
PUBLIC_CACHE_CONTROL = "public, max-age=60"


async def list_public_plans(request: Request) -> Response:
    """What a pricing page shows, with no credential: the active plans marked public, in
    display order, with their active prices, a page at a time. Limited per client address."""
    limit_by_address(request)
    page = page_request(request)
    start = _after_plan(page)
    views = await lag_tolerant(request, catalog.plan_views)
    public = sorted(
        (v for v in views if v.plan.public), key=lambda v: (v.plan.display_order, v.plan.key)
    )
    if start is not None:
        public = [v for v in public if (v.plan.display_order, v.plan.key) > start]
    return conditional_json(
        request,
        page_body(public[: page.limit + 1], page, serialize=serialize_plan, cursor_of=_plan_cursor),
        cache_control=PUBLIC_CACHE_CONTROL,
    )


@requires(Scope.ADMIN)
async def put_feature(request: Request) -> Response:
    key = _path_key(request)
    body = await parse_json(request, FeatureSpec)
    state = app_state(request)

    def with_feature(current: CatalogSpec) -> CatalogSpec:
        return current.model_copy(update={"features": current.features | {key: body}})

    try:
        result = await catalog.apply_and_sync(state["pool"], state["stripe"], with_feature)
    finally:  # this process's next check sees the new catalog
        state["entitlement_cache"].clear()
    payload = {"key": key, **body.model_dump(), **serialize_result(result)}
    return JSONResponse(payload, status_code=200 if key in result.before.features else 201)


@requires(Scope.ADMIN)
async def put_plan(request: Request) -> Response:
    key = _path_key(request)
    body = await parse_json(request, PlanSpec)
    state = app_state(request)

    def with_plan(current: CatalogSpec) -> CatalogSpec:
        others = {
            other_key: plan.model_copy(update={"default": False}) if body.default else plan
            for other_key, plan in current.plans.items()
            if other_key != key
        }
        return current.model_copy(update={"plans": others | {key: body}})

    try:
        result = await catalog.apply_and_sync(state["pool"], state["stripe"], with_plan)
    except ValidationFailed as exc:
        raise ValidationFailed(_relative_to(exc.errors, f"plans.{key}."), exc.detail) from None
    finally:  # this process's next check sees the new catalog
        state["entitlement_cache"].clear()
    [view] = await catalog.plan_views(state["pool"], key=key)
    payload = serialize_plan(view) | serialize_result(result)
    return JSONResponse(payload, status_code=200 if key in result.before.plans else 201)


@requires(Scope.ADMIN)
async def sync_catalog(request: Request) -> Response:
    state = app_state(request)
    gateway = require_stripe(state["stripe"])
    report = await catalog_sync.sync_catalog(state["pool"], gateway)
    async with state["pool"].acquire() as conn:
        pending = await catalog_sync.pending_work(conn)
    return JSONResponse({"synced": report.done, "pending": pending})


# Routes any web page may call (cors.py answers every origin for them).
public_routes = [Route("/v1/public/plans", list_public_plans, methods=["GET"])]

routes = [
    Route("/v1/plans", list_plans, methods=["GET"]),
    Route("/v1/plans/{key}", get_plan, methods=["GET"]),
    Route("/v1/plans/{key}", put_plan, methods=["PUT"]),
    Route("/v1/features/{key}", put_feature, methods=["PUT"]),
    Route("/v1/catalog/sync", sync_catalog, methods=["POST"]),
]
