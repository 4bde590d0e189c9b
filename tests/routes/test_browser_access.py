"""CORS: customer tokens from listed origins, the public pricing list from any, API keys never."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from billing_service.config import Settings
from billing_service.services.api_keys import Scope
from tests.conftest import app_client, issue_key
from tests.routes.test_checkout import bearer

APP_ORIGIN = "https://app.example.com"
OTHER_ORIGIN = "https://evil.example.net"
ENTITLEMENTS = "/v1/customers/user_1/entitlements"
PROBLEM = "application/problem+json"


def preflight(origin: str, method: str = "GET", headers: str = "authorization") -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": headers,
    }


def assert_refused(response: httpx.Response) -> None:
    """A refused preflight: a 403 problem, and nothing a browser would take as permission."""
    assert response.status_code == 403
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["type"] == "urn:billing-service:problem:cross-origin-refused"
    assert response.json()["request_id"] == response.headers["x-request-id"]
    assert "access-control-allow-origin" not in response.headers
    assert "access-control-allow-methods" not in response.headers


@pytest.fixture
async def browser_client(
    settings: Settings, pool: asyncpg.Pool
) -> AsyncIterator[httpx.AsyncClient]:
    """The app with one browser origin allowed."""
    async with app_client(settings.model_copy(update={"cors_origins": [APP_ORIGIN]})) as client:
        yield client


@pytest.fixture
async def usage_key(pool: asyncpg.Pool) -> str:
    return await issue_key(pool, Scope.USAGE)


@pytest.fixture
async def token(browser_client: httpx.AsyncClient, usage_key: str) -> str:
    issued = await browser_client.post("/v1/customers/user_1/tokens", headers=bearer(usage_key))
    assert issued.status_code == 201
    value: str = issued.json()["token"]
    return value


async def test_a_preflight_for_entitlements_from_a_listed_origin_is_answered(
    browser_client: httpx.AsyncClient,
) -> None:
    """204 naming the origin, GET, the Authorization header, a Max-Age and Vary: Origin."""
    response = await browser_client.options(
        ENTITLEMENTS, headers=preflight(APP_ORIGIN, headers="Authorization, If-None-Match")
    )
    assert response.status_code == 204
    assert response.content == b""
    assert response.headers["access-control-allow-origin"] == APP_ORIGIN
    assert response.headers["access-control-allow-methods"] == "GET"
    allowed = {
        h.strip().lower() for h in response.headers["access-control-allow-headers"].split(",")
    }
    assert {"authorization", "if-none-match", "x-request-id"} == allowed
    assert response.headers["access-control-max-age"] == "600"
    assert "Origin" in response.headers["vary"]
    assert "access-control-allow-credentials" not in response.headers


async def test_a_customer_token_from_a_listed_origin_may_read_its_entitlements(
    browser_client: httpx.AsyncClient, token: str
) -> None:
    """The actual request names the origin back and exposes ETag and the request id."""
    response = await browser_client.get(
        ENTITLEMENTS, headers=bearer(token) | {"Origin": APP_ORIGIN}
    )
    assert response.status_code == 200
    assert response.json()["customer_id"] == "user_1"
    assert response.headers["access-control-allow-origin"] == APP_ORIGIN
    assert response.headers["vary"] == "Origin"
    exposed = response.headers["access-control-expose-headers"]
    assert {"ETag", "Retry-After", "X-Request-ID"} == {h.strip() for h in exposed.split(",")}


async def test_a_refused_customer_token_is_readable_by_the_page(
    browser_client: httpx.AsyncClient,
) -> None:
    """An unknown token's 401 problem carries the CORS headers, so the page can see why."""
    response = await browser_client.get(
        ENTITLEMENTS, headers=bearer("bct_" + "x" * 43) | {"Origin": APP_ORIGIN}
    )
    assert response.status_code == 401
    assert response.headers["content-type"] == PROBLEM
    assert response.headers["access-control-allow-origin"] == APP_ORIGIN


async def test_an_api_key_on_the_token_route_gets_no_cors_headers(
    browser_client: httpx.AsyncClient, usage_key: str
) -> None:
    """Served (a server may send an Origin header too), but nothing lets a browser read it."""
    response = await browser_client.get(
        ENTITLEMENTS, headers=bearer(usage_key) | {"Origin": APP_ORIGIN}
    )
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers
    assert "access-control-expose-headers" not in response.headers
    assert response.headers["vary"] == "Origin"


async def test_a_customer_token_from_an_unlisted_origin_gets_no_cors_headers(
    browser_client: httpx.AsyncClient, token: str
) -> None:
    """Another site's page cannot read a customer's entitlements even with a stolen token."""
    response = await browser_client.get(
        ENTITLEMENTS, headers=bearer(token) | {"Origin": OTHER_ORIGIN}
    )
    assert "access-control-allow-origin" not in response.headers
    assert_refused(await browser_client.options(ENTITLEMENTS, headers=preflight(OTHER_ORIGIN)))


@pytest.mark.parametrize(
    ("path", "method"),
    [
        ("/v1/usage/track", "POST"),
        ("/v1/usage/check", "POST"),
        ("/v1/plans", "GET"),
        ("/v1/customers/user_1/usage", "GET"),
        ("/v1/customers/user_1/tokens", "POST"),
        ("/v1/api-keys", "GET"),
        ("/v1/no-such-route", "GET"),
    ],
)
async def test_preflights_for_api_key_routes_are_refused(
    browser_client: httpx.AsyncClient, path: str, method: str
) -> None:
    """Even from a listed origin: API keys belong on servers, so the browser never sends one."""
    assert_refused(await browser_client.options(path, headers=preflight(APP_ORIGIN, method)))


async def test_an_api_key_route_answers_a_browser_origin_without_cors_headers(
    browser_client: httpx.AsyncClient, usage_key: str
) -> None:
    """A request that did reach an API-key route carries nothing a browser would accept."""
    body = {"customer_id": "user_1", "feature": "ai_calls"}
    response = await browser_client.post(
        "/v1/usage/check", headers=bearer(usage_key) | {"Origin": APP_ORIGIN}, json=body
    )
    assert not [name for name in response.headers if name.startswith("access-control-")]


@pytest.mark.parametrize(
    ("method", "headers"),
    [("DELETE", "authorization"), ("GET", "authorization, content-type"), ("GET", "cookie")],
)
async def test_a_preflight_asking_for_more_than_reading_is_refused(
    browser_client: httpx.AsyncClient, method: str, headers: str
) -> None:
    """Only GET with Authorization, If-None-Match and X-Request-ID may be asked for."""
    assert_refused(
        await browser_client.options(ENTITLEMENTS, headers=preflight(APP_ORIGIN, method, headers))
    )


async def test_no_origin_is_allowed_by_default(client: httpx.AsyncClient, usage_key: str) -> None:
    """Without BILLING_CORS_ORIGINS, token routes refuse every preflight."""
    assert_refused(await client.options(ENTITLEMENTS, headers=preflight(APP_ORIGIN)))
    issued = await client.post("/v1/customers/user_1/tokens", headers=bearer(usage_key))
    response = await client.get(
        ENTITLEMENTS, headers=bearer(issued.json()["token"]) | {"Origin": APP_ORIGIN}
    )
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


async def test_an_options_request_that_is_not_a_preflight_reaches_the_router(
    browser_client: httpx.AsyncClient,
) -> None:
    """OPTIONS without Access-Control-Request-Method is an ordinary request: 405 here."""
    response = await browser_client.options(ENTITLEMENTS, headers={"Origin": APP_ORIGIN})
    assert response.status_code == 405
    assert response.headers["content-type"] == PROBLEM


async def test_the_public_pricing_list_may_be_read_from_any_origin(
    client: httpx.AsyncClient,
) -> None:
    """`*` on the answer and on its preflight (If-None-Match may be sent), with no setting."""
    response = await client.get("/v1/public/plans", headers={"Origin": OTHER_ORIGIN})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"
    assert "ETag" in response.headers["access-control-expose-headers"]
    without_origin = await client.get("/v1/public/plans")
    assert without_origin.headers["access-control-allow-origin"] == "*"  # cached copies too
    answered = await client.options(
        "/v1/public/plans", headers=preflight(OTHER_ORIGIN, headers="if-none-match")
    )
    assert answered.status_code == 204
    assert answered.headers["access-control-allow-origin"] == "*"
    assert answered.headers["access-control-allow-methods"] == "GET"
    asks_authorization = await client.options(
        "/v1/public/plans", headers=preflight(OTHER_ORIGIN, headers="authorization")
    )
    assert_refused(asks_authorization)
