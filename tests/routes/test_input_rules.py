"""Request input is read as the contract types it: no coercion, RFC 3339 timestamps, bounded
numbers, exact or rounded costs. Each case here was once found by the contract fuzzer."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx
import pytest

from tests.routes.test_catalog import STUDIO_PLAN
from tests.routes.test_checkout import bearer
from tests.routes.test_usage import catalog_with


def _fields(response: httpx.Response) -> set[str]:
    assert response.status_code == 422, response.text
    assert response.json()["type"] == "urn:billing-service:problem:validation-failed"
    return {error["field"] for error in response.json()["errors"]}


@pytest.mark.parametrize("amount", [False, "2", 2.5, [2], 1e20])
async def test_a_value_of_another_json_type_is_refused_not_coerced(
    client: httpx.AsyncClient, pool: asyncpg.Pool, billing_key: str, amount: object
) -> None:
    await catalog_with(pool, limit=10, reset="month")
    body = {"customer_id": "user_1", "feature": "ai_calls", "amount": amount}
    response = await client.post("/v1/usage/check", headers=bearer(billing_key), json=body)
    assert _fields(response) == {"amount"}


async def test_an_integral_number_written_with_a_fraction_is_an_integer(
    client: httpx.AsyncClient, pool: asyncpg.Pool, billing_key: str
) -> None:
    """JSON Schema counts 2.0 as an integer, so the service does too."""
    await catalog_with(pool, limit=10, reset="month")
    body = {"customer_id": "user_1", "feature": "ai_calls", "amount": 2.0}
    response = await client.post("/v1/usage/check", headers=bearer(billing_key), json=body)
    assert response.status_code == 200, response.text
    assert response.json()["remaining"] == 10


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        ("2030-01-01T00:00:00Z", True),
        ("2030-01-01T02:00:00.5+02:00", True),
        ("0.5", False),
        ("1700000000", False),
        ("2030-01-01T00:00:00", False),  # no offset
        ("2030-01-01", False),
    ],
)
async def test_timestamps_are_rfc_3339_with_an_offset(
    client: httpx.AsyncClient, billing_key: str, value: str, accepted: bool
) -> None:
    response = await client.get(
        "/v1/customers/user_1/usage", headers=bearer(billing_key), params={"to": value}
    )
    if accepted:
        assert response.status_code == 200, response.text
    else:
        assert _fields(response) == {"to"}


async def test_costs_are_exact_as_strings_and_kept_to_12_places_as_numbers(
    client: httpx.AsyncClient, pool: asyncpg.Pool, billing_key: str
) -> None:
    await catalog_with(pool, limit=None, reset="month")

    async def track(key: str, cost: Any) -> httpx.Response:
        body = {"customer_id": "user_1", "feature": "ai_calls", "idempotency_key": key}
        return await client.post(
            "/v1/usage/track", headers=bearer(billing_key), json=body | {"cost": cost}
        )

    assert (await track("exact", "0.000000000001")).status_code == 200
    assert (await track("float", 0.1234567890123456)).status_code == 200
    for refused in ("1e5", "0.0000000000001", 1e131, True, "12,5"):
        assert _fields(await track(f"bad-{refused}", refused)) == {"cost"}
    usage = await client.get("/v1/customers/user_1/usage", headers=bearer(billing_key))
    assert [row["cost"] for row in usage.json()["data"]] == ["0.123456789013"]


@pytest.mark.parametrize(
    ("field", "change"),
    [
        ("prices.studio_monthly.amount", {"prices": {"studio_monthly": {
            "amount": 10**8, "currency": "usd", "interval": "month"}}}),
        ("prices.studio_monthly.grants.ai_calls", {"prices": {"studio_monthly": {
            "amount": 100, "currency": "usd", "type": "one_time",
            "grants": {"ai_calls": 10**19}}}}),
        ("features.ai_calls.MeteredLimit.limit", {"features": {"ai_calls": {"limit": 2**63}}}),
        ("display_order", {"display_order": 2**31}),
    ],
)  # fmt: skip
async def test_catalog_numbers_beyond_what_stripe_or_the_database_hold_are_refused(
    client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    admin_key: str,
    field: str,
    change: dict[str, Any],
) -> None:
    """Once a 500 from an integer overflow in PostgreSQL; now a 422 naming the field."""
    await catalog_with(pool, limit=10, reset="month")
    response = await client.put(
        "/v1/plans/studio", headers=bearer(admin_key), json=STUDIO_PLAN | change
    )
    assert field in _fields(response)


@pytest.mark.parametrize(
    ("metadata", "field"),
    [
        ({"prompt": "x" * 501}, "metadata.prompt"),
        ({f"k{n}": "x" * 500 for n in range(9)}, "metadata"),  # each fits, the whole does not
        ({"tokens": 10**30}, "metadata.tokens"),
        ({"tokens": 2**53}, "metadata.tokens"),
        ({"nested": {"a": 1}}, "metadata.nested"),
    ],
)
async def test_usage_metadata_is_capped_per_value_and_in_total(
    client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    billing_key: str,
    metadata: dict[str, Any],
    field: str,
) -> None:
    """Metadata is for short labels: long values, a large whole and inexact numbers are a 422
    and nothing is kept; the same labels within the caps are recorded."""
    await catalog_with(pool, limit=10, reset="month")
    body = {"customer_id": "user_1", "feature": "ai_calls", "idempotency_key": "k1"}
    refused = await client.post(
        "/v1/usage/track", headers=bearer(billing_key), json=body | {"metadata": metadata}
    )
    assert field in _fields(refused)
    assert await pool.fetchval("SELECT count(*) FROM usage_events") == 0
    fitting = {f"k{n}": "x" * 500 for n in range(7)} | {"tokens": 2**53 - 1, "ratio": 0.5}
    kept = await client.post(
        "/v1/usage/track", headers=bearer(billing_key), json=body | {"metadata": fitting}
    )
    assert kept.status_code == 200, kept.text
    assert await pool.fetchval("SELECT metadata FROM usage_events") == fitting
