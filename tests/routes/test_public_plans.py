"""GET /v1/public/plans: the pricing page's catalog, with no key, cacheable and rate-limited."""

from __future__ import annotations

import re

import asyncpg
import httpx

from billing_service.catalog_spec import CatalogSpec, dump_catalog_yaml, load_catalog_yaml
from billing_service.config import Settings
from billing_service.services import catalog
from tests.conftest import app_client
from tests.routes.test_checkout import bearer
from tests.services.test_catalog import apply, example
from tests.test_openapi import assert_matches_schema

PROBLEM = "application/problem+json"


def with_plan_fields(spec: CatalogSpec, plan: str, **fields: object) -> CatalogSpec:
    changed = spec.plans[plan].model_copy(update=fields)
    return spec.model_copy(update={"plans": spec.plans | {plan: changed}})


def without_price(spec: CatalogSpec, plan: str, lookup_key: str) -> CatalogSpec:
    prices = {k: p for k, p in spec.plans[plan].prices.items() if k != lookup_key}
    return with_plan_fields(spec, plan, prices=prices)


async def test_the_public_list_needs_no_key_and_fits_the_plan_schema(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """Every active plan in display order with its prices and limits, without a credential."""
    await apply(pool, None, example())
    response = await client.get("/v1/public/plans")
    assert response.status_code == 200
    plans = response.json()["data"]
    assert [p["key"] for p in plans] == ["free", "pro", "credits", "team"]
    for plan in plans:
        assert_matches_schema(plan, "Plan")
    pro = plans[1]
    assert [p["lookup_key"] for p in pro["prices"]] == ["pro_monthly", "pro_yearly"]
    assert pro["public"] is True
    assert {f["feature"]: f["limit"] for f in pro["features"]}["ai_calls"] == 500


async def test_hidden_archived_plans_and_archived_prices_are_left_out(
    client: httpx.AsyncClient, pool: asyncpg.Pool, admin_key: str
) -> None:
    """`public: false` hides a plan from the public list only; archived plans and prices go."""
    spec = with_plan_fields(example(), "credits", public=False)
    spec = without_price(spec, "pro", "pro_yearly")
    await apply(pool, None, spec)
    await apply(pool, None, spec.model_copy(update={"plans": {
        k: p for k, p in spec.plans.items() if k != "free"
    } | {"pro": spec.plans["pro"].model_copy(update={"default": True})}}))  # fmt: skip
    public = (await client.get("/v1/public/plans")).json()["data"]
    assert [p["key"] for p in public] == ["pro", "team"]
    assert [p["lookup_key"] for p in public[0]["prices"]] == ["pro_monthly"]
    listed = (await client.get("/v1/plans", headers=bearer(admin_key))).json()["data"]
    assert {p["key"]: p["public"] for p in listed} == {
        "pro": True, "credits": False, "team": True,
    }  # fmt: skip


async def test_a_hidden_plan_round_trips_through_the_catalog_and_its_put_route(
    client: httpx.AsyncClient, pool: asyncpg.Pool, admin_key: str
) -> None:
    """PUT /v1/plans/{key} takes `public`, the change is reported, and showing it again works."""
    await apply(pool, None, example())
    body = {"name": "Enterprise", "public": False, "display_order": 9}
    put = await client.put("/v1/plans/enterprise", headers=bearer(admin_key), json=body)
    assert put.status_code == 201
    assert put.json()["public"] is False
    assert "enterprise" not in [
        p["key"] for p in (await client.get("/v1/public/plans")).json()["data"]
    ]
    shown = await client.put(
        "/v1/plans/enterprise", headers=bearer(admin_key), json=body | {"public": True}
    )
    assert shown.json()["changes"] == ["~ plan enterprise: public False → True"]
    assert "enterprise" in [p["key"] for p in (await client.get("/v1/public/plans")).json()["data"]]


async def test_the_public_list_is_cacheable_and_answers_304_to_its_etag(
    client: httpx.AsyncClient, pool: asyncpg.Pool, admin_key: str
) -> None:
    """Cache-Control public, max-age=60 and an ETag; the ETag sent back gets a bodiless 304,
    until the catalog changes."""
    await apply(pool, None, example())
    first = await client.get("/v1/public/plans")
    assert first.headers["cache-control"] == "public, max-age=60"
    etag = first.headers["etag"]
    assert re.fullmatch(r'"[A-Za-z0-9_-]{22}"', etag)  # strong: no W/
    again = await client.get("/v1/public/plans", headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag
    assert again.headers["cache-control"] == "public, max-age=60"
    await apply(pool, None, with_plan_fields(example(), "pro", name="Pro+"))
    changed = await client.get("/v1/public/plans", headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.headers["etag"] != etag


async def test_the_public_list_is_limited_per_address(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    """Past BILLING_RATE_LIMIT_PUBLIC_PER_ADDRESS (bursts of twice it) an address gets a 429
    problem with Retry-After."""
    async with app_client(
        settings.model_copy(update={"rate_limit_public_per_address": 0.5})
    ) as client:
        assert (await client.get("/v1/public/plans")).status_code == 200
        limited = await client.get("/v1/public/plans")
    assert limited.status_code == 429
    assert limited.headers["content-type"] == PROBLEM
    assert limited.json()["type"] == "urn:billing-service:problem:rate-limited"
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.headers["access-control-allow-origin"] == "*"


async def test_a_hidden_plan_survives_catalog_export(pool: asyncpg.Pool) -> None:
    """`catalog export` writes `public: false` (and leaves the default out), and reads it back."""
    spec = with_plan_fields(example(), "credits", public=False)
    await apply(pool, None, spec)
    exported = dump_catalog_yaml(await catalog.current_catalog(pool))
    assert exported.count("public: false") == 1
    assert "public: true" not in exported
    assert load_catalog_yaml(exported) == spec
