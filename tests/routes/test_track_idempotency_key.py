"""POST /v1/usage/track takes its idempotency key as the Idempotency-Key header or in the body."""

from __future__ import annotations

import asyncpg
import httpx
import pytest

from billing_service.services.api_keys import Scope
from tests.conftest import issue_key
from tests.routes.test_checkout import bearer
from tests.services.test_catalog import apply, example

PROBLEM = "application/problem+json"
BODY = {"customer_id": "user_1", "feature": "ai_calls", "amount": 1}


@pytest.fixture
async def usage_key(pool: asyncpg.Pool) -> str:
    await apply(pool, None, example())
    return await issue_key(pool, Scope.USAGE)


async def _used(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT coalesce(sum(used), 0) FROM usage_counters"))


async def test_the_header_alone_makes_a_retry_count_once(
    client: httpx.AsyncClient, pool: asyncpg.Pool, usage_key: str
) -> None:
    """Two sends with the same Idempotency-Key: the same answer, one unit used."""
    headers = bearer(usage_key) | {"Idempotency-Key": "req-1"}
    first = await client.post("/v1/usage/track", headers=headers, json=BODY)
    retry = await client.post("/v1/usage/track", headers=headers, json=BODY)
    assert first.status_code == retry.status_code == 200
    assert first.json() == retry.json()
    assert await _used(pool) == 1


async def test_header_and_body_that_agree_are_one_key(
    client: httpx.AsyncClient, pool: asyncpg.Pool, usage_key: str
) -> None:
    """The header and the same key in the body are the same request as either alone."""
    both = await client.post(
        "/v1/usage/track",
        headers=bearer(usage_key) | {"Idempotency-Key": "req-2"},
        json=BODY | {"idempotency_key": "req-2"},
    )
    body_only = await client.post(
        "/v1/usage/track", headers=bearer(usage_key), json=BODY | {"idempotency_key": "req-2"}
    )
    assert both.status_code == body_only.status_code == 200
    assert both.json() == body_only.json()
    assert await _used(pool) == 1


async def test_header_and_body_that_disagree_are_a_422_and_count_nothing(
    client: httpx.AsyncClient, pool: asyncpg.Pool, usage_key: str
) -> None:
    """A stable `idempotency-key-mismatch` problem naming the header; nothing is recorded."""
    response = await client.post(
        "/v1/usage/track",
        headers=bearer(usage_key) | {"Idempotency-Key": "req-3"},
        json=BODY | {"idempotency_key": "req-4"},
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM
    problem = response.json()
    assert problem["type"] == "urn:billing-service:problem:idempotency-key-mismatch"
    assert problem["errors"] == [
        {"field": "Idempotency-Key", "message": "must equal the body's idempotency_key"}
    ]
    assert problem["request_id"] == response.headers["x-request-id"]
    assert await _used(pool) == 0


async def test_a_track_without_any_key_is_a_422(
    client: httpx.AsyncClient, pool: asyncpg.Pool, usage_key: str
) -> None:
    """Neither header nor body field: validation-failed naming idempotency_key."""
    response = await client.post("/v1/usage/track", headers=bearer(usage_key), json=BODY)
    assert response.status_code == 422
    assert response.json()["type"] == "urn:billing-service:problem:validation-failed"
    assert response.json()["errors"][0]["field"] == "idempotency_key"
    assert await _used(pool) == 0


@pytest.mark.parametrize("key", ["", " spaced", "x" * 256])
async def test_an_unusable_header_is_a_422(
    client: httpx.AsyncClient, pool: asyncpg.Pool, usage_key: str, key: str
) -> None:
    """1 to 255 printable ASCII characters, as on checkout."""
    response = await client.post(
        "/v1/usage/track", headers=bearer(usage_key) | {"Idempotency-Key": key}, json=BODY
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "Idempotency-Key"
    assert await _used(pool) == 0


async def test_the_same_header_with_another_body_is_a_409(
    client: httpx.AsyncClient, pool: asyncpg.Pool, usage_key: str
) -> None:
    """A reused key keeps its meaning whichever way it is sent."""
    headers = bearer(usage_key) | {"Idempotency-Key": "req-5"}
    assert (await client.post("/v1/usage/track", headers=headers, json=BODY)).status_code == 200
    reused = await client.post("/v1/usage/track", headers=headers, json=BODY | {"amount": 2})
    assert reused.status_code == 409
    assert reused.json()["type"] == "urn:billing-service:problem:idempotency-key-reused"
    assert await _used(pool) == 1
