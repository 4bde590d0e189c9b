"""Catalog over HTTP: plans for pricing pages, and admin edits applied like the catalog file."""

from __future__ import annotations

import asyncpg
import httpx
import pytest

from billing_service.services.api_keys import Scope
from tests.conftest import issue_key
from tests.services.test_catalog import apply, example
from tests.stripe_fakes import FakeStripe

STUDIO_PLAN = {
    "name": "Studio",
    "description": "For studios.",
    "display_order": 5,
    "features": {"ai_calls": {"limit": 5000, "reset": "month"}, "export_csv": True},
    "prices": {"studio_monthly": {"amount": 4900, "currency": "USD", "interval": "month"}},
}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_plans_list_the_live_catalog_for_pricing_pages(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """Active plans in display order with prices and limits; no Stripe ids are exposed."""
    await apply(pool, None, example())
    response = await client.get("/v1/plans", headers=bearer(await issue_key(pool, Scope.USAGE)))
    assert response.status_code == 200
    plans = response.json()["data"]
    assert [plan["key"] for plan in plans] == ["free", "pro", "credits", "team"]
    free, pro, credits, team = plans
    assert free["default"] is True
    assert {f["feature"]: (f["enabled"], f["limit"], f["reset"]) for f in free["features"]} == {
        "ai_calls": (True, 5, "month"),
        "projects": (True, 3, "never"),
        "export_csv": (False, None, None),
    }
    ai_calls = next(f for f in pro["features"] if f["feature"] == "ai_calls")
    assert (ai_calls["limit"], ai_calls["soft_limit"], ai_calls["unlimited"]) == (500, 100, False)
    projects = next(f for f in pro["features"] if f["feature"] == "projects")
    assert projects["unlimited"] is True
    assert [(p["lookup_key"], p["amount"], p["interval"]) for p in pro["prices"]] == [
        ("pro_monthly", 1900, "month"),
        ("pro_yearly", 19000, "year"),
    ]
    assert credits["prices"][0]["grants"] == {"ai_calls": 1000}
    assert team["max_seats"] == 50
    assert [(p["lookup_key"], p["per_seat"]) for p in team["prices"]] == [("team_monthly", True)]
    team_calls = next(f for f in team["features"] if f["feature"] == "ai_calls")
    assert (team_calls["limit"], team_calls["per_seat"], team_calls["per_member"]) == (
        400,
        True,
        {"limit": 500},
    )
    assert pro["prices"][0]["per_seat"] is False
    assert "stripe" not in response.text


async def test_plans_need_a_billing_or_usage_key(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """Both read scopes (and admin) may read plans; no key may not."""
    for scope in (Scope.BILLING, Scope.USAGE, Scope.ADMIN):
        key = await issue_key(pool, scope)
        assert (await client.get("/v1/plans", headers=bearer(key))).status_code == 200
    assert (await client.get("/v1/plans")).status_code == 401


async def test_one_plan_by_key_including_archived_ones(
    client: httpx.AsyncClient, pool: asyncpg.Pool, billing_key: str
) -> None:
    """A plan is found by key even once archived (customers may still be on it); else 404."""
    await apply(pool, None, example())
    spec = example()
    await apply(pool, None, spec.model_copy(
        update={"plans": {k: v for k, v in spec.plans.items() if k != "credits"}}
    ))  # fmt: skip
    archived = await client.get("/v1/plans/credits", headers=bearer(billing_key))
    assert archived.status_code == 200
    assert archived.json()["active"] is False
    assert archived.json()["prices"] == []
    missing = await client.get("/v1/plans/enterprise", headers=bearer(billing_key))
    assert missing.status_code == 404
    assert missing.json()["type"] == "urn:billing-service:problem:not-found"


async def test_put_plan_creates_then_updates_and_syncs_stripe(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    admin_key: str,
    fake_stripe: FakeStripe,
) -> None:
    """PUT is an upsert through the catalog apply: 201 then 200, Stripe synced, idempotent."""
    await apply(pool, None, example())
    created = await stripe_client.put(
        "/v1/plans/studio", headers=bearer(admin_key), json=STUDIO_PLAN
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["key"] == "studio"
    assert body["prices"][0]["currency"] == "usd"
    assert "+ plan studio" in body["changes"]
    assert "create price studio_monthly (plan studio)" in body["stripe"]["synced"]
    assert body["stripe"]["pending"] == []
    studio_prices = [c for c in fake_stripe.calls_to("POST", "/v1/prices")
                   if c.form["lookup_key"] == "studio_monthly"]  # fmt: skip
    assert len(studio_prices) == 1

    calls_before = len(fake_stripe.calls)
    again = await stripe_client.put("/v1/plans/studio", headers=bearer(admin_key), json=STUDIO_PLAN)
    assert again.status_code == 200
    assert again.json()["changes"] == []
    assert len(fake_stripe.calls) == calls_before


async def test_put_plan_without_stripe_saves_and_reports_pending_work(
    client: httpx.AsyncClient, pool: asyncpg.Pool, admin_key: str
) -> None:
    """With no Stripe key the plan is saved and the Stripe work is reported as pending."""
    await apply(pool, None, example())
    response = await client.put("/v1/plans/studio", headers=bearer(admin_key), json=STUDIO_PLAN)
    assert response.status_code == 201
    assert "create price studio_monthly (plan studio)" in response.json()["stripe"]["pending"]


async def test_put_plan_default_moves_the_default(
    client: httpx.AsyncClient, pool: asyncpg.Pool, admin_key: str
) -> None:
    """Making a plan the default takes the flag from the previous default."""
    await apply(pool, None, example())
    response = await client.put(
        "/v1/plans/studio", headers=bearer(admin_key), json=STUDIO_PLAN | {"default": True}
    )
    assert response.status_code == 201
    assert await pool.fetchval("SELECT array_agg(key) FROM plans WHERE is_default") == ["studio"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (STUDIO_PLAN | {"prices": {"studio_monthly": {"amount": 1, "currency": "usd"}}},
         "prices.studio_monthly.interval"),
        (STUDIO_PLAN | {"features": {"seats": True}}, "features.seats"),
        (STUDIO_PLAN | {"trial_days": -1}, "trial_days"),
        (STUDIO_PLAN | {"prices": {"pro_monthly": {"amount": 1, "currency": "usd",
                                                 "interval": "month"}}}, "prices.pro_monthly"),
    ],
)  # fmt: skip
async def test_invalid_plan_is_422_with_fields_relative_to_the_body(
    client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    admin_key: str,
    body: dict[str, object],
    field: str,
) -> None:
    """Errors name the body's own fields, and nothing is saved."""
    await apply(pool, None, example())
    response = await client.put("/v1/plans/studio", headers=bearer(admin_key), json=body)
    assert response.status_code == 422
    assert field in [error["field"] for error in response.json()["errors"]]
    assert await pool.fetchval("SELECT count(*) FROM plans WHERE key = 'studio'") == 0


async def test_put_plan_needs_admin_and_a_valid_key_in_the_path(
    client: httpx.AsyncClient, pool: asyncpg.Pool, admin_key: str, billing_key: str
) -> None:
    """Catalog edits are admin-only; plan keys follow the catalog's key rules."""
    forbidden = await client.put("/v1/plans/studio", headers=bearer(billing_key), json=STUDIO_PLAN)
    assert forbidden.status_code == 403
    bad_key = await client.put("/v1/plans/Team-1", headers=bearer(admin_key), json=STUDIO_PLAN)
    assert bad_key.status_code == 422
    assert bad_key.json()["errors"][0]["field"] == "key"


async def test_put_feature_creates_then_updates(
    client: httpx.AsyncClient, pool: asyncpg.Pool, admin_key: str
) -> None:
    """A feature PUT is 201 when new and 200 after, and the change is listed."""
    await apply(pool, None, example())
    body = {"name": "Seats", "kind": "metered", "unit": "seat"}
    created = await client.put("/v1/features/seats", headers=bearer(admin_key), json=body)
    assert created.status_code == 201
    assert created.json()["changes"] == ["+ feature seats (metered)"]
    renamed = await client.put(
        "/v1/features/seats", headers=bearer(admin_key), json=body | {"name": "Team seats"}
    )
    assert renamed.status_code == 200
    assert renamed.json()["changes"] == ["~ feature seats: name 'Seats' → 'Team seats'"]


async def test_catalog_sync_without_stripe_is_503(
    client: httpx.AsyncClient, admin_key: str
) -> None:
    """A Stripe-backed route with no Stripe key answers a clear 503 problem."""
    response = await client.post("/v1/catalog/sync", headers=bearer(admin_key))
    assert response.status_code == 503
    problem = response.json()
    assert problem["type"] == "urn:billing-service:problem:stripe-not-configured"
    assert "BILLING_STRIPE_SECRET_KEY" in problem["detail"]


async def test_catalog_sync_pushes_pending_work(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    admin_key: str,
    fake_stripe: FakeStripe,
) -> None:
    """A catalog saved without Stripe reaches Stripe on POST /v1/catalog/sync."""
    await apply(pool, None, example())
    response = await stripe_client.post("/v1/catalog/sync", headers=bearer(admin_key))
    assert response.status_code == 200
    assert len(response.json()["synced"]) == 10  # with Pro's meter and metered prices
    assert response.json()["pending"] == []
    assert len(fake_stripe.prices) == 6


@pytest.mark.parametrize(
    ("amount", "kind"),
    [("19.00", "a string"), ("1900", "a string"), (19.0, "a decimal number"),
     (19.5, "a decimal number"), (True, "a boolean")],
)  # fmt: skip
async def test_price_amounts_must_be_integers_of_minor_units(
    client: httpx.AsyncClient, pool: asyncpg.Pool, admin_key: str, amount: object, kind: str
) -> None:
    """`"19.00"`, `19.0` or `true` is a 422 naming the amount, never 19 cents or 1 cent."""
    await apply(pool, None, example())
    price = {"amount": amount, "currency": "usd", "interval": "month"}
    # Another field written as 5.0 (a JSON Schema integer) must not smuggle the amount through.
    body = STUDIO_PLAN | {"display_order": 5.0, "prices": {"studio_monthly": price}}
    response = await client.put("/v1/plans/studio", headers=bearer(admin_key), json=body)
    assert response.status_code == 422, response.text
    [error] = response.json()["errors"]
    assert error["field"] == "prices.studio_monthly.amount"
    assert "integer number of the currency's minor units" in error["message"]
    assert error["message"].endswith(f"not {kind}")
    assert await pool.fetchval("SELECT count(*) FROM plans WHERE key = 'studio'") == 0
    integral = await client.put(
        "/v1/plans/studio", headers=bearer(admin_key), json=STUDIO_PLAN | {"display_order": 5.0}
    )
    assert integral.status_code == 201, integral.text
