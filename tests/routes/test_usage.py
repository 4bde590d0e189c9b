"""Entitlements and usage quotas: exact under concurrency, periods, credits, tokens."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from billing_service.catalog_spec import CatalogSpec, MeteredLimit
from billing_service.config import Settings
from billing_service.services.api_keys import Scope
from tests.conftest import app_client, issue_key
from tests.routes.test_checkout import bearer
from tests.services.test_catalog import apply, example
from tests.test_openapi import assert_matches_schema


def with_free_allowance(
    spec: CatalogSpec, feature: str, allowance: MeteredLimit | bool
) -> CatalogSpec:
    free = spec.plans["free"]
    plan = free.model_copy(update={"features": free.features | {feature: allowance}})
    return spec.model_copy(update={"plans": spec.plans | {"free": plan}})


async def catalog_with(pool: asyncpg.Pool, **allowance: Any) -> None:
    """The example catalog with the free plan's ai_calls allowance replaced."""
    await apply(pool, None, with_free_allowance(example(), "ai_calls", MeteredLimit(**allowance)))


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


async def track(
    client: httpx.AsyncClient, key: str, *, amount: int = 1, idempotency_key: str | None = None,
    customer: str = "user_1", feature: str = "ai_calls", **extra: Any,
) -> httpx.Response:  # fmt: skip
    body = {
        "customer_id": customer,
        "feature": feature,
        "amount": amount,
        "idempotency_key": idempotency_key or f"k-{random.getrandbits(64)}",
        **extra,
    }
    return await client.post("/v1/usage/track", headers=bearer(key), json=body)


async def check(
    client: httpx.AsyncClient, key: str, *, amount: int = 1, customer: str = "user_1",
    feature: str = "ai_calls",
) -> httpx.Response:  # fmt: skip
    body = {"customer_id": customer, "feature": feature, "amount": amount}
    return await client.post("/v1/usage/check", headers=bearer(key), json=body)


@pytest.fixture
async def usage_key(pool: asyncpg.Pool) -> str:
    return await issue_key(pool, Scope.USAGE)


async def _counter(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT coalesce(sum(used), 0) FROM usage_counters"))


async def test_1000_concurrent_tracks_never_pass_a_hard_limit_of_500(
    client: httpx.AsyncClient, pool: asyncpg.Pool, usage_key: str
) -> None:
    """Exactly 500 of 1,000 simultaneous track(1) calls are allowed; nothing else is counted."""
    await catalog_with(pool, limit=500, reset="month")
    responses = await asyncio.gather(*(track(client, usage_key) for _ in range(1000)))
    assert {r.status_code for r in responses} == {200}
    allowed = [r for r in responses if r.json()["allowed"]]
    assert len(allowed) == 500
    assert await _counter(pool) == 500
    assert await pool.fetchval("SELECT count(*) FROM usage_events WHERE recorded") == 500
    assert all(r.json()["reason"] == "limit_reached" for r in responses if not r.json()["allowed"])


async def test_two_app_instances_share_the_limit_exactly(
    settings: Settings, pool: asyncpg.Pool, usage_key: str
) -> None:
    """Two instances with their own pools, 500 calls each, one limit of 500 between them."""
    await catalog_with(pool, limit=500, reset="month")
    async with app_client(settings) as first, app_client(settings) as second:
        responses = await asyncio.gather(
            *(track(client, usage_key) for client in (first, second) for _ in range(500))
        )
    assert {r.status_code for r in responses} == {200}
    assert sum(r.json()["allowed"] for r in responses) == 500
    assert await _counter(pool) == 500
    assert await pool.fetchval("SELECT count(*) FROM usage_events WHERE recorded") == 500


async def test_random_amounts_grant_exactly_what_is_counted(
    client: httpx.AsyncClient, pool: asyncpg.Pool, usage_key: str
) -> None:
    """200 concurrent tracks of 1..10 units against 1,000: granted sum = counter ≤ 1,000."""
    await catalog_with(pool, limit=1000, reset="month")
    amounts = [random.randint(1, 10) for _ in range(200)]
    responses = await asyncio.gather(*(track(client, usage_key, amount=a) for a in amounts))
    granted = sum(a for a, r in zip(amounts, responses, strict=True) if r.json()["allowed"])
    assert granted == await _counter(pool)
    assert granted <= 1000
    assert granted > 1000 - 10  # a refusal only happens when the next amount no longer fits


async def test_one_idempotency_key_sent_20_times_counts_once(
    client: httpx.AsyncClient, pool: asyncpg.Pool, usage_key: str
) -> None:
    """Concurrent retries of one call: 20 identical responses, one unit counted."""
    await catalog_with(pool, limit=50, reset="month")
    responses = await asyncio.gather(
        *(track(client, usage_key, amount=3, idempotency_key="call-1") for _ in range(20))
    )
    assert {r.status_code for r in responses} == {200}
    assert len({r.content for r in responses}) == 1
    assert responses[0].json()["used"] == 3
    assert await _counter(pool) == 3
    reused = await track(client, usage_key, amount=4, idempotency_key="call-1")
    assert reused.status_code == 409
    assert reused.json()["type"] == "urn:billing-service:problem:idempotency-key-reused"


async def test_increments_straddling_a_month_boundary_land_in_their_periods(
    settings: Settings, pool: asyncpg.Pool, usage_key: str
) -> None:
    """Usage just before and just after midnight UTC on the 1st counts in two months."""
    await catalog_with(pool, limit=5, reset="month")
    clock = Clock(datetime(2027, 1, 31, 23, 59, 59, tzinfo=UTC))
    async with app_client(settings, clock=clock) as client:
        for _ in range(5):
            assert (await track(client, usage_key)).json()["allowed"]
        full = await track(client, usage_key)
        assert full.json()["allowed"] is False
        assert full.json()["resets_at"] == "2027-02-01T00:00:00+00:00"
        clock.now = datetime(2027, 2, 1, 0, 0, 0, tzinfo=UTC)
        fresh = await track(client, usage_key, amount=2)
        assert (fresh.json()["allowed"], fresh.json()["used"]) == (True, 2)
        history = await client.get(
            "/v1/customers/user_1/usage?feature=ai_calls", headers=bearer(usage_key)
        )
    assert [(p["period_start"][:10], p["used"]) for p in history.json()["data"]] == [
        ("2027-01-01", 5),
        ("2027-02-01", 2),
    ]


@pytest.mark.parametrize(
    ("reset", "later", "same_period"),
    [
        ("hour", timedelta(minutes=59), True),
        ("hour", timedelta(hours=1), False),
        ("day", timedelta(hours=13), True),
        ("day", timedelta(days=1), False),
        ("week", timedelta(days=4), True),  # Monday 10:00 + 4 days is still that ISO week
        ("week", timedelta(days=7), False),
        ("month", timedelta(days=20), True),
        ("month", timedelta(days=40), False),
        ("year", timedelta(days=300), True),
        ("year", timedelta(days=400), False),
        ("never", timedelta(days=4000), True),
        ("billing_period", timedelta(days=20), True),  # no subscription: calendar months
        ("billing_period", timedelta(days=40), False),
    ],
)
async def test_each_period_kind_rolls_over_lazily(
    settings: Settings, pool: asyncpg.Pool, usage_key: str, reset: str, later: timedelta,
    same_period: bool,
) -> None:  # fmt: skip
    """A second call counts in the same window or starts a new one, per the reset kind."""
    await catalog_with(pool, limit=100, reset=reset)
    clock = Clock(datetime(2027, 3, 1, 10, 0, tzinfo=UTC))  # a Monday
    async with app_client(settings, clock=clock) as client:
        await track(client, usage_key, amount=3)
        clock.now += later
        second = await track(client, usage_key, amount=2)
    assert second.json()["used"] == (5 if same_period else 2)
    periods = await pool.fetchval("SELECT count(*) FROM usage_counters")
    assert periods == (1 if same_period else 2)


async def test_credits_are_spent_after_the_plan_allowance(
    client: httpx.AsyncClient, pool: asyncpg.Pool, usage_key: str
) -> None:
    """Allowance 5, credits 10: 15 units pass (allowance first), the 16th does not."""
    await catalog_with(pool, limit=5, reset="month")
    await track(client, usage_key, amount=1)  # the customer now exists
    await pool.execute(
        "INSERT INTO credit_balances (customer_id, feature_id, granted) "
        "SELECT c.id, f.id, 10 FROM customers c, features f WHERE f.key = 'ai_calls'"
    )
    within = await track(client, usage_key, amount=4)
    assert within.json()["remaining"] == 10
    assert await pool.fetchval("SELECT spent FROM credit_balances") == 0
    spill = await track(client, usage_key, amount=7)
    assert (spill.json()["allowed"], spill.json()["used"], spill.json()["remaining"]) == (
        True,
        12,
        3,
    )
    assert await pool.fetchval("SELECT spent FROM credit_balances") == 7
    too_much = await track(client, usage_key, amount=4)
    assert too_much.json()["allowed"] is False
    last = await track(client, usage_key, amount=3)
    assert (last.json()["allowed"], last.json()["remaining"]) == (True, 0)
    assert await pool.fetchval("SELECT spent FROM credit_balances") == 10


async def test_overage_allowed_records_past_the_limit_and_flags_it(
    client: httpx.AsyncClient, pool: asyncpg.Pool, usage_key: str
) -> None:
    """With overage `allow`, calls past the hard limit are recorded and marked as overage."""
    await catalog_with(pool, limit=2, reset="month", overage="allow")
    results = [(await track(client, usage_key)).json() for _ in range(3)]
    assert [r["allowed"] for r in results] == [True, True, True]
    assert "overage" not in results[1]
    assert results[2]["overage"] is True
    assert results[2]["used"] == 3
    assert (await check(client, usage_key)).json()["allowed"] is True


async def test_check_records_nothing_and_suggests_an_upgrade(
    client: httpx.AsyncClient, pool: asyncpg.Pool, usage_key: str
) -> None:
    """Denials say why and name the cheapest plan that would allow the call."""
    await catalog_with(pool, limit=5, reset="month", soft_limit=3)
    ok = await check(client, usage_key, amount=5)
    assert ok.json() == {
        "allowed": True, "feature": "ai_calls", "used": 0, "limit": 5, "remaining": 5,
        "soft_limit_reached": False, "resets_at": ok.json()["resets_at"],
    }  # fmt: skip
    denied = await check(client, usage_key, amount=6)
    assert denied.json()["reason"] == "limit_reached"
    assert denied.json()["upgrade"] == {"plan": "pro", "price": "pro_monthly"}
    not_in_plan = await check(client, usage_key, feature="export_csv")
    assert not_in_plan.json()["allowed"] is False
    assert not_in_plan.json()["reason"] == "feature_not_in_plan"
    assert not_in_plan.json()["upgrade"] == {"plan": "pro", "price": "pro_monthly"}
    assert await _counter(pool) == 0
    for _ in range(3):
        await track(client, usage_key)
    assert (await check(client, usage_key)).json()["soft_limit_reached"] is True


async def test_refunds_unknown_features_and_unknown_customers(
    client: httpx.AsyncClient, pool: asyncpg.Pool, usage_key: str
) -> None:
    """Negative amounts give units back; unknown features are 404; new customers get the
    default plan without being created first."""
    await catalog_with(pool, limit=5, reset="month")
    await track(client, usage_key, amount=5, customer="brand-new")
    refund = await track(client, usage_key, amount=-2, customer="brand-new")
    assert (refund.json()["allowed"], refund.json()["used"]) == (True, 3)
    unknown = await track(client, usage_key, feature="teleport")
    assert unknown.status_code == 404
    zero = await track(client, usage_key, amount=0)
    assert zero.status_code == 422
    view = await client.get("/v1/customers/brand-new/entitlements", headers=bearer(usage_key))
    assert view.json()["plan"] == "free"


async def test_entitlements_describe_every_feature(
    client: httpx.AsyncClient, pool: asyncpg.Pool, usage_key: str
) -> None:
    """Used, remaining, cost and reset for metered features; on/off for boolean ones."""
    await catalog_with(pool, limit=5, reset="month")
    await track(client, usage_key, amount=2, cost="0.0125")
    await track(client, usage_key, amount=1, cost="0.0100")
    body = (await client.get("/v1/customers/user_1/entitlements", headers=bearer(usage_key))).json()
    assert (body["customer_id"], body["plan"], body["subscription_status"]) == (
        "user_1",
        "free",
        None,
    )
    features = {f["feature"]: f for f in body["features"]}
    ai = features["ai_calls"]
    assert (ai["used"], ai["remaining"], ai["limit"], ai["cost"]) == (3, 2, 5, "0.022500000000")
    assert ai["reset"] == "month"
    assert ai["resets_at"] is not None
    assert features["export_csv"]["enabled"] is False
    assert features["projects"]["limit"] == 3


async def test_a_plan_change_mid_period_keeps_the_usage_counted(
    client: httpx.AsyncClient, pool: asyncpg.Pool, usage_key: str
) -> None:
    """The new plan's limits apply at once; what was used this month still counts."""
    await catalog_with(pool, limit=5, reset="month")
    for _ in range(5):
        await track(client, usage_key)
    assert (await track(client, usage_key)).json()["allowed"] is False
    await pool.execute(
        """
        INSERT INTO subscriptions (customer_id, stripe_subscription_id, status, stripe_price_id,
                                   price_id, stripe_created_at)
        SELECT c.id, 'sub_x', 'active', 'price_x', p.id, now()
        FROM customers c, prices p WHERE p.lookup_key = 'pro_monthly'
        """
    )
    upgraded = await track(client, usage_key)
    assert (upgraded.json()["allowed"], upgraded.json()["used"], upgraded.json()["limit"]) == (
        True, 6, 500,
    )  # fmt: skip


async def test_customer_tokens_reach_only_their_customers_entitlements(
    settings: Settings, pool: asyncpg.Pool, usage_key: str, billing_key: str
) -> None:
    """A token reads its customer's entitlements until it expires, and nothing else."""
    await catalog_with(pool, limit=5, reset="month")
    clock = Clock(datetime.now(UTC))
    async with app_client(settings, clock=clock) as client:
        issued = await client.post("/v1/customers/user_1/tokens", headers=bearer(usage_key))
        assert issued.status_code == 201
        token = issued.json()["token"]
        own = await client.get("/v1/customers/user_1/entitlements", headers=bearer(token))
        assert own.status_code == 200
        other = await client.get("/v1/customers/user_2/entitlements", headers=bearer(token))
        assert other.status_code == 403
        for method, path in (
            ("GET", "/v1/plans"),
            ("GET", "/v1/customers/user_1"),
            ("GET", "/v1/customers/user_1/usage"),
            ("POST", "/v1/usage/check"),
        ):
            response = await client.request(method, path, headers=bearer(token), json={})
            assert response.status_code == 403, path
        assert (await client.post(
            "/v1/customers/user_1/tokens", headers=bearer(billing_key)
        )).status_code == 403  # fmt: skip
        await pool.execute("UPDATE customer_tokens SET expires_at = now() - interval '1 second'")
        expired = await client.get("/v1/customers/user_1/entitlements", headers=bearer(token))
        assert expired.status_code == 401


async def test_a_refused_track_says_recorded_false_as_the_contract_requires(
    client: httpx.AsyncClient, pool: asyncpg.Pool, usage_key: str
) -> None:
    """Refusals (limit reached, feature not in the plan) answer `recorded: false`, also replayed."""
    await catalog_with(pool, limit=1, reset="month")
    allowed = await track(client, usage_key)
    full = await track(client, usage_key, idempotency_key="over-the-limit")
    not_in_plan = await track(client, usage_key, feature="export_csv")
    replayed = await track(client, usage_key, idempotency_key="over-the-limit")
    assert (allowed.json()["allowed"], allowed.json()["recorded"]) == (True, True)
    for refused, reason in ((full, "limit_reached"), (not_in_plan, "feature_not_in_plan")):
        assert refused.status_code == 200, refused.text
        assert (refused.json()["allowed"], refused.json()["reason"]) == (False, reason)
        assert refused.json()["recorded"] is False
        assert_matches_schema(refused.json(), "TrackedUsage")
    assert replayed.content == full.content
    assert await _counter(pool) == 1


async def test_a_refusal_stored_without_recorded_replays_with_it(
    client: httpx.AsyncClient, pool: asyncpg.Pool, usage_key: str
) -> None:
    """A refusal kept from before `recorded` was always answered replays `recorded: false`."""
    await catalog_with(pool, limit=0, reset="month")
    first = await track(client, usage_key, idempotency_key="old-refusal")
    await pool.execute("UPDATE usage_events SET response = (response::jsonb - 'recorded')::json")
    replayed = await track(client, usage_key, idempotency_key="old-refusal")
    assert replayed.json() == first.json()
    assert replayed.json()["recorded"] is False
