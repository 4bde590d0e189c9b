"""ETag and If-None-Match on plans and entitlements: 304 with no body until the answer changes."""

from __future__ import annotations

import asyncpg
import httpx
import pytest

from billing_service.services.api_keys import Scope
from tests.conftest import issue_key
from tests.routes.test_checkout import bearer
from tests.routes.test_public_plans import with_plan_fields
from tests.routes.test_usage import track
from tests.services.test_catalog import apply, example

ENTITLEMENTS = "/v1/customers/user_1/entitlements"


@pytest.fixture
async def usage_key(pool: asyncpg.Pool) -> str:
    return await issue_key(pool, Scope.USAGE)


async def test_entitlements_answer_304_until_usage_moves(
    client: httpx.AsyncClient, pool: asyncpg.Pool, usage_key: str
) -> None:
    """The ETag sent back gets a bodiless 304; after a track the body, and its ETag, change."""
    await apply(pool, None, example())
    first = await client.get(ENTITLEMENTS, headers=bearer(usage_key))
    etag = first.headers["etag"]
    assert first.headers["cache-control"] == "private, no-cache"
    unchanged = await client.get(ENTITLEMENTS, headers=bearer(usage_key) | {"If-None-Match": etag})
    assert unchanged.status_code == 304
    assert unchanged.content == b""
    assert unchanged.headers["etag"] == etag
    assert "content-type" not in unchanged.headers
    assert (await track(client, usage_key)).json()["allowed"] is True
    moved = await client.get(ENTITLEMENTS, headers=bearer(usage_key) | {"If-None-Match": etag})
    assert moved.status_code == 200
    assert moved.headers["etag"] != etag
    ai_calls = {f["feature"]: f for f in moved.json()["features"]}["ai_calls"]
    assert ai_calls["used"] == 1


async def test_a_customer_token_gets_304_too(
    client: httpx.AsyncClient, pool: asyncpg.Pool, usage_key: str
) -> None:
    """The browser's poll with a token costs no body either."""
    issued = await client.post("/v1/customers/user_1/tokens", headers=bearer(usage_key))
    token = issued.json()["token"]
    first = await client.get(ENTITLEMENTS, headers=bearer(token))
    again = await client.get(
        ENTITLEMENTS, headers=bearer(token) | {"If-None-Match": first.headers["etag"]}
    )
    assert again.status_code == 304


@pytest.mark.parametrize(
    ("if_none_match", "status"),
    [
        ("{etag}", 304),
        ("W/{etag}", 304),
        ('"other", {etag}', 304),
        ("*", 304),
        ('"other"', 200),
        ("{etag}x", 200),
        ("", 200),
    ],
)
async def test_if_none_match_is_compared_as_rfc_9110_says(
    client: httpx.AsyncClient, pool: asyncpg.Pool, usage_key: str, if_none_match: str, status: int
) -> None:
    """Weak comparison (W/ ignored), lists, and `*`; anything else gets the full answer."""
    await apply(pool, None, example())
    etag = (await client.get("/v1/plans", headers=bearer(usage_key))).headers["etag"]
    response = await client.get(
        "/v1/plans",
        headers=bearer(usage_key) | {"If-None-Match": if_none_match.format(etag=etag)},
    )
    assert response.status_code == status
    assert (response.content == b"") is (status == 304)


async def test_plans_answer_304_until_the_catalog_changes(
    client: httpx.AsyncClient, pool: asyncpg.Pool, usage_key: str
) -> None:
    """GET /v1/plans and GET /v1/plans/{key} both carry ETags that follow the catalog."""
    await apply(pool, None, example())
    auth = bearer(usage_key)
    listed = await client.get("/v1/plans", headers=auth)
    one = await client.get("/v1/plans/pro", headers=auth)
    assert one.headers["etag"] != listed.headers["etag"]
    for path, response in (("/v1/plans", listed), ("/v1/plans/pro", one)):
        again = await client.get(path, headers=auth | {"If-None-Match": response.headers["etag"]})
        assert again.status_code == 304
    await apply(pool, None, with_plan_fields(example(), "pro", description="Now for teams."))
    for path, response in (("/v1/plans", listed), ("/v1/plans/pro", one)):
        after = await client.get(path, headers=auth | {"If-None-Match": response.headers["etag"]})
        assert after.status_code == 200
        assert after.headers["etag"] != response.headers["etag"]


async def test_errors_are_not_conditional(client: httpx.AsyncClient, usage_key: str) -> None:
    """A missing plan is a 404 problem whatever If-None-Match says."""
    response = await client.get(
        "/v1/plans/nope", headers=bearer(usage_key) | {"If-None-Match": "*"}
    )
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert "etag" not in response.headers
