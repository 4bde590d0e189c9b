"""The `openapi.yaml` contract: valid OpenAPI, and exactly the routes the app serves."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx
import yaml
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate
from pydantic import SecretStr
from starlette.routing import Route

from billing_service.app import create_app
from billing_service.catalog_spec import load_catalog_yaml
from billing_service.config import Settings
from billing_service.resources import example_catalog_path, openapi_path
from billing_service.services import catalog
from billing_service.stripe_gateway import StripeGateway
from tests.routes.test_checkout import checkout_body, seeded
from tests.stripe_fakes import FakeStripe

HTTP_METHODS = {"get", "put", "post", "delete", "patch"}


def _spec() -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load(openapi_path().read_text())
    return spec


def test_document_is_valid_openapi() -> None:
    """The contract passes the OpenAPI 3.1 validator."""
    validate(_spec())


def test_document_lists_exactly_the_apps_routes() -> None:
    """Every served method and path is documented, and nothing documented is missing; the
    console's HTML pages under /console are not part of the API."""
    settings = Settings(database_url=SecretStr("postgresql://unused@localhost/unused"))
    served = {
        (method.lower(), route.path)
        for route in create_app(settings).routes
        if isinstance(route, Route) and not route.path.startswith("/console")
        for method in route.methods or ()
        if method != "HEAD"
    }
    documented = {
        (method, path)
        for path, item in _spec()["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }
    assert served == documented


def test_authenticated_operations_document_401_403_and_429() -> None:
    """Operations that need a key say how they fail without one, or with too many requests."""
    for path, item in _spec()["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS and operation.get("security") != []:
                assert {"401", "403", "429"} <= set(operation["responses"]), (method, path)


def assert_matches_schema(body: object, schema_name: str) -> None:
    """Check a real response body against a component schema of the contract."""
    spec = _spec()
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": spec["components"]}
    errors = list(OAS31Validator(schema).iter_errors(body))
    assert not errors, [error.message for error in errors]


async def test_responses_match_their_documented_schemas(
    client: httpx.AsyncClient, pool: asyncpg.Pool, admin_key: str
) -> None:
    """Plans, applied edits, keys and problems as served fit the schemas that document them."""
    await catalog.apply_and_sync(pool, None, lambda _current: load_catalog_yaml(
        example_catalog_path().read_text()
    ))  # fmt: skip
    auth = {"Authorization": f"Bearer {admin_key}"}
    for plan in (await client.get("/v1/plans", headers=auth)).json()["data"]:
        assert_matches_schema(plan, "Plan")
    put = await client.put(
        "/v1/plans/team",
        headers=auth,
        json={"name": "Team", "prices": {"team_monthly": {"amount": 1, "currency": "usd",
                                                          "interval": "month"}}},
    )  # fmt: skip
    assert_matches_schema(put.json(), "PlanApplied")
    feature = await client.put(
        "/v1/features/seats", headers=auth, json={"name": "Seats", "kind": "metered"}
    )
    assert_matches_schema(feature.json(), "FeatureApplied")
    created = await client.post(
        "/v1/api-keys", headers=auth, json={"name": "x", "scopes": ["usage"]}
    )
    assert_matches_schema(created.json(), "IssuedApiKey")
    for key in (await client.get("/v1/api-keys", headers=auth)).json()["data"]:
        assert_matches_schema(key, "ApiKey")
    invalid = await client.post("/v1/api-keys", headers=auth, json={"scopes": []})
    assert_matches_schema(invalid.json(), "ValidationProblem")
    assert_matches_schema((await client.get("/v1/nothing")).json(), "Problem")


async def test_billing_responses_match_their_documented_schemas(
    stripe_client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    fake_stripe: FakeStripe,
    billing_key: str,
) -> None:
    """Customer, checkout and subscription responses fit the contract."""
    auth = {"Authorization": f"Bearer {billing_key}"}
    await seeded(stripe_client, pool, gateway, billing_key, "user_1")
    assert_matches_schema(
        (await stripe_client.get("/v1/customers/user_1", headers=auth)).json(), "Customer"
    )
    created = await stripe_client.post("/v1/checkout/sessions", headers=auth, json=checkout_body())
    assert_matches_schema(created.json(), "CheckoutSession")
    fake_stripe.complete_checkout(created.json()["id"])
    status = await stripe_client.get(f"/v1/checkout/sessions/{created.json()['id']}", headers=auth)
    assert_matches_schema(status.json(), "CheckoutSessionStatus")
    change = await stripe_client.post(
        "/v1/customers/user_1/subscription/change", headers=auth, json={"price": "pro_yearly"}
    )
    assert_matches_schema(change.json()["subscription"], "Subscription")
    subscription = await stripe_client.get("/v1/customers/user_1/subscription", headers=auth)
    assert_matches_schema(subscription.json(), "Subscription")
    assert_matches_schema(
        (await stripe_client.get("/v1/customers/user_1", headers=auth)).json(), "Customer"
    )


async def test_usage_responses_match_their_documented_schemas(
    client: httpx.AsyncClient, pool: asyncpg.Pool, billing_key: str
) -> None:
    """check, track (allowed and denied) and entitlements fit the contract."""
    await catalog.apply_and_sync(pool, None, lambda _current: load_catalog_yaml(
        example_catalog_path().read_text()
    ))  # fmt: skip
    auth = {"Authorization": f"Bearer {billing_key}"}
    body = {"customer_id": "u1", "feature": "ai_calls"}
    assert_matches_schema(
        (await client.post("/v1/usage/check", headers=auth, json=body)).json(), "UsageDecision"
    )
    for n in range(6):
        tracked = await client.post(
            "/v1/usage/track", headers=auth, json=body | {"idempotency_key": f"k{n}"}
        )
        assert_matches_schema(tracked.json(), "UsageDecision")
    assert tracked.json()["allowed"] is False
    entitlements = await client.get("/v1/customers/u1/entitlements", headers=auth)
    assert_matches_schema(entitlements.json(), "Entitlements")


def test_operations_document_the_errors_any_request_can_get() -> None:
    """Every JSON body can be malformed, mistyped or invalid; every path or query parameter can
    carry a NUL."""
    for path, item in _spec()["paths"].items():
        for method, operation in item.items():
            if method not in HTTP_METHODS:
                continue
            codes = set(operation["responses"])
            if "requestBody" in operation and operation["operationId"] != "receiveStripeWebhook":
                assert {"400", "415", "422"} <= codes, (method, path)
            if "{" in path or operation.get("parameters"):
                assert "400" in codes, (method, path)
