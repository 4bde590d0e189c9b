"""Per-customer grants and overrides (admin scope): granted credits count until they expire,
an override changes one customer's limit only, every change is audited, and every process's
entitlement cache hears of each change."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from billing_service.config import Settings
from billing_service.services.api_keys import Scope
from tests.conftest import app_client, issue_key
from tests.routes.test_checkout import bearer
from tests.routes.test_usage import Clock, catalog_with, check, track
from tests.support import free_port, start_service


@pytest.fixture
async def usage_key(pool: asyncpg.Pool) -> str:
    return await issue_key(pool, Scope.USAGE)


async def grant(
    client: httpx.AsyncClient, key: str, *, customer: str = "user_1", **body: Any
) -> httpx.Response:
    payload = {"feature": "ai_calls", "reason": "support ticket 4711", **body}
    return await client.post(f"/v1/customers/{customer}/credits", headers=bearer(key), json=payload)


async def override(
    client: httpx.AsyncClient, key: str, limit: int | None, *, customer: str = "user_1",
    feature: str = "ai_calls",
) -> httpx.Response:  # fmt: skip
    return await client.put(
        f"/v1/customers/{customer}/overrides/{feature}",
        headers=bearer(key),
        json={"limit": limit, "reason": "pilot customer"},
    )


async def ai_calls(client: httpx.AsyncClient, key: str, customer: str = "user_1") -> Any:
    response = await client.get(f"/v1/customers/{customer}/entitlements", headers=bearer(key))
    assert response.status_code == 200
    return next(f for f in response.json()["features"] if f["feature"] == "ai_calls")


async def test_granted_credits_stop_counting_at_their_expiry(
    settings: Settings, pool: asyncpg.Pool, admin_key: str, usage_key: str
) -> None:
    """Three credits granted for an hour lift a limit of 2: while they last, check, track and
    the entitlements count them (and track spends them); at their expiry, the unspent one stops
    counting everywhere, in the same process that cached the entitlements before."""
    await catalog_with(pool, limit=2, reset="month")
    clock = Clock(datetime(2027, 3, 10, 12, 0, tzinfo=UTC))
    expiry = clock.now + timedelta(hours=1)
    async with app_client(settings, clock=clock) as client:
        granted = await grant(client, admin_key, amount=3, expires_at=expiry.isoformat())
        assert granted.status_code == 201, granted.text
        assert granted.json()["amount"] == 3
        assert (await ai_calls(client, usage_key))["credits"] == 3
        assert (await track(client, usage_key, amount=4)).json()["allowed"] is True  # 2 + 2
        before = await ai_calls(client, usage_key)
        assert (before["used"], before["credits"], before["remaining"]) == (4, 1, 1)
        assert (await check(client, usage_key)).json()["allowed"] is True

        clock.now = expiry
        after = await ai_calls(client, usage_key)
        assert (after["used"], after["credits"], after["remaining"]) == (4, 0, 0)
        assert (await check(client, usage_key)).json()["allowed"] is False
        refused = (await track(client, usage_key)).json()
        assert (refused["allowed"], refused["reason"]) == (False, "limit_reached")

        audit = await client.get("/v1/customers/user_1/adjustments", headers=bearer(admin_key))
    assert await pool.fetchval("SELECT sum(used) FROM usage_counters") == 4
    assert await pool.fetchval("SELECT spent FROM credit_lots") == 2
    [entry] = audit.json()["data"]
    assert entry["action"] == "credits.granted"
    assert entry["reason"] == "support ticket 4711"
    assert entry["details"]["amount"] == 3
    admin_id = await pool.fetchval("SELECT id FROM api_keys WHERE 'admin' = ANY (scopes)")
    assert entry["actor"] == {"key_id": str(admin_id), "name": "test"}
    row = await pool.fetchrow(
        "SELECT action, actor_key_id, actor_name, created_at FROM grant_audit"
    )
    assert row is not None
    assert (row["action"], row["actor_key_id"], row["actor_name"]) == (
        "credits.granted",
        admin_id,
        "test",
    )
    assert row["created_at"] == datetime(2027, 3, 10, 12, 0, tzinfo=UTC)


async def test_expiring_credits_are_spent_before_bought_ones(
    client: httpx.AsyncClient, pool: asyncpg.Pool, admin_key: str, usage_key: str
) -> None:
    """Past the allowance, track spends granted credits that expire first, then bought ones,
    then granted ones that never expire."""
    await catalog_with(pool, limit=0, reset="month")
    customer = await pool.fetchval(
        "INSERT INTO customers (external_id) VALUES ('user_1') RETURNING id"
    )
    await pool.execute(
        "INSERT INTO credit_balances (customer_id, feature_id, granted) "
        "SELECT $1, id, 5 FROM features WHERE key = 'ai_calls'",
        customer,
    )
    later = datetime.now(UTC) + timedelta(days=30)
    assert (await grant(client, admin_key, amount=4)).status_code == 201
    assert (
        await grant(client, admin_key, amount=3, expires_at=later.isoformat())
    ).status_code == 201
    assert (await track(client, usage_key, amount=6)).json()["allowed"] is True
    lots = await pool.fetch("SELECT granted, spent FROM credit_lots ORDER BY expires_at NULLS LAST")
    assert [(r["granted"], r["spent"]) for r in lots] == [(3, 3), (4, 0)]
    assert await pool.fetchval("SELECT spent FROM credit_balances") == 3
    assert (await track(client, usage_key, amount=5)).json()["allowed"] is True
    lots = await pool.fetch("SELECT granted, spent FROM credit_lots ORDER BY expires_at NULLS LAST")
    assert [(r["granted"], r["spent"]) for r in lots] == [(3, 3), (4, 3)]
    assert await pool.fetchval("SELECT spent FROM credit_balances") == 5


async def test_an_override_raises_one_customers_limit_and_no_one_elses(
    client: httpx.AsyncClient, pool: asyncpg.Pool, admin_key: str, usage_key: str
) -> None:
    """With the plan's limit at 2 and user_1's own at 5, user_1 may use 5 and user_2 still 2;
    entitlements say where each limit comes from; removing the override puts user_1 back on
    the plan; the set and the removal are both audited with who and why."""
    await catalog_with(pool, limit=2, reset="month")
    put = await override(client, admin_key, 5)
    assert put.status_code == 200, put.text
    assert put.json()["limit"] == 5
    first = [await track(client, usage_key) for _ in range(6)]
    second = [await track(client, usage_key, customer="user_2") for _ in range(3)]
    assert [r.json()["allowed"] for r in first] == [True] * 5 + [False]
    assert [r.json()["allowed"] for r in second] == [True, True, False]
    mine, theirs = await ai_calls(client, usage_key), await ai_calls(client, usage_key, "user_2")
    assert (mine["limit"], mine["source"], mine["remaining"]) == (5, "override", 0)
    assert (theirs["limit"], theirs["source"], theirs["remaining"]) == (2, "plan", 0)

    removed = await client.delete(
        "/v1/customers/user_1/overrides/ai_calls",
        headers=bearer(admin_key),
        params={"reason": "pilot over"},
    )
    assert removed.status_code == 204
    back = await ai_calls(client, usage_key)
    assert (back["limit"], back["source"]) == (2, "plan")
    again = await client.delete(
        "/v1/customers/user_1/overrides/ai_calls",
        headers=bearer(admin_key),
        params={"reason": "pilot over"},
    )
    assert again.status_code == 404
    rows = await pool.fetch(
        "SELECT action, details, reason, actor_name FROM grant_audit ORDER BY created_at"
    )
    assert [(r["action"], r["details"], r["reason"]) for r in rows] == [
        ("override.set", {"limit": 5}, "pilot customer"),
        ("override.removed", {"limit": 5}, "pilot over"),
    ]
    assert all(r["actor_name"] for r in rows)


async def test_an_override_enables_a_feature_the_plan_leaves_out(
    client: httpx.AsyncClient, pool: asyncpg.Pool, admin_key: str, usage_key: str
) -> None:
    """A boolean feature the free plan leaves out is enabled for the one customer overridden."""
    await catalog_with(pool, limit=2, reset="month")
    assert (await override(client, admin_key, None, feature="export_csv")).status_code == 200
    allowed = await check(client, usage_key, feature="export_csv")
    other = await check(client, usage_key, feature="export_csv", customer="user_2")
    assert allowed.json()["allowed"] is True
    assert other.json()["allowed"] is False


async def test_bad_grants_and_overrides_are_422s_naming_the_field(
    client: httpx.AsyncClient, pool: asyncpg.Pool, admin_key: str, usage_key: str
) -> None:
    """An unknown feature, a limit for a boolean feature, a past expiry and a missing reason
    are refused naming the field; a key without the admin scope is refused; nothing is
    written."""
    await catalog_with(pool, limit=2, reset="month")
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    cases = [
        (await grant(client, admin_key, amount=1, feature="nope"), "feature"),
        (await grant(client, admin_key, amount=1, feature="export_csv"), "feature"),
        (await grant(client, admin_key, amount=1, expires_at=past), "expires_at"),
        (await grant(client, admin_key, amount=0), "amount"),
        (await override(client, admin_key, 5, feature="nope"), "feature"),
        (await override(client, admin_key, 5, feature="export_csv"), "limit"),
        (
            await client.put(
                "/v1/customers/user_1/overrides/ai_calls",
                headers=bearer(admin_key),
                json={"limit": 5},
            ),
            "reason",
        ),
    ]
    for response, field in cases:
        assert response.status_code == 422, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert [e["field"] for e in response.json()["errors"]] == [field], response.text
    assert (await grant(client, usage_key, amount=1)).status_code == 403
    assert (await override(client, usage_key, 9)).status_code == 403
    written = await pool.fetchval(
        "SELECT (SELECT count(*) FROM credit_lots) + (SELECT count(*) FROM feature_overrides)"
        " + (SELECT count(*) FROM grant_audit)"
    )
    assert written == 0


async def test_concurrent_tracks_at_an_overridden_limit_and_granted_credits_stay_exact(
    client: httpx.AsyncClient, pool: asyncpg.Pool, admin_key: str, usage_key: str
) -> None:
    """400 simultaneous track(1) calls against an override of 150 plus 50 granted credits
    (expiring) allow exactly 200; the counter, the lot and the events agree."""
    await catalog_with(pool, limit=2, reset="month")
    later = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert (await override(client, admin_key, 150)).status_code == 200
    assert (await grant(client, admin_key, amount=50, expires_at=later)).status_code == 201
    responses = await asyncio.gather(*(track(client, usage_key) for _ in range(400)))
    assert {r.status_code for r in responses} == {200}
    assert sum(r.json()["allowed"] for r in responses) == 200
    assert await pool.fetchval("SELECT sum(used) FROM usage_counters") == 200
    assert await pool.fetchval("SELECT spent FROM credit_lots") == 50
    assert await pool.fetchval("SELECT count(*) FROM usage_events WHERE recorded") == 200


@pytest.fixture
async def two_services(cli_env: dict[str, str]) -> AsyncIterator[list[str]]:
    services, bases = [], []
    for _ in range(2):
        port = free_port()
        bases.append(f"http://127.0.0.1:{port}")
        env = cli_env | {
            "BILLING_PORT": str(port),
            "BILLING_LOG_LEVEL": "warning",
            "BILLING_WORKER_ENABLED": "false",
        }
        services.append(await start_service(env, bases[-1]))
    try:
        yield bases
    finally:
        for service in services:
            service.terminate()
            await service.wait()


async def _eventually(read: Any, expected: Any) -> Any:
    """What `read()` returns once it equals `expected`, within 5 s (a notification's trip)."""
    for _ in range(50):
        found = await read()
        if found == expected:
            return found
        await asyncio.sleep(0.1)
    return found


async def test_grants_and_overrides_reach_the_cache_of_every_serve_process(
    pool: asyncpg.Pool, two_services: list[str], admin_key: str, usage_key: str
) -> None:
    """A second `serve` process that cached a customer's entitlements answers with a credit
    grant, an override and its removal made through the first process."""
    await catalog_with(pool, limit=2, reset="month")
    async with (
        httpx.AsyncClient(base_url=two_services[0], timeout=30) as first,
        httpx.AsyncClient(base_url=two_services[1], timeout=30) as second,
    ):

        async def seen() -> tuple[Any, ...]:
            found = await ai_calls(second, usage_key)
            return (found["limit"], found["source"], found["credits"])

        assert await seen() == (2, "plan", 0)
        assert await seen() == (2, "plan", 0)  # cached now
        assert (await grant(first, admin_key, amount=7)).status_code == 201
        assert await _eventually(seen, (2, "plan", 7)) == (2, "plan", 7)
        assert (await override(first, admin_key, 40)).status_code == 200
        assert await _eventually(seen, (40, "override", 7)) == (40, "override", 7)
        removed = await first.delete(
            "/v1/customers/user_1/overrides/ai_calls",
            headers=bearer(admin_key),
            params={"reason": "done"},
        )
        assert removed.status_code == 204
        assert await _eventually(seen, (2, "plan", 7)) == (2, "plan", 7)
        allowed = await check(second, usage_key, amount=9)
        assert allowed.json()["allowed"] is True


async def test_two_serve_processes_stay_exact_at_an_overridden_limit_with_granted_credits(
    pool: asyncpg.Pool, two_services: list[str], admin_key: str, usage_key: str
) -> None:
    """An override of 150 and 50 expiring credits granted through one `serve` process, then
    600 simultaneous track(1) calls split between two processes: exactly 200 are allowed, and
    the counter, the credit lot and the recorded events agree."""
    await catalog_with(pool, limit=2, reset="month")
    later = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    limits = httpx.Limits(max_connections=50)
    async with (
        httpx.AsyncClient(base_url=two_services[0], limits=limits, timeout=60) as first,
        httpx.AsyncClient(base_url=two_services[1], limits=limits, timeout=60) as second,
    ):
        assert (await ai_calls(second, usage_key))["limit"] == 2  # cached before the changes
        assert (await override(first, admin_key, 150)).status_code == 200
        assert (await grant(first, admin_key, amount=50, expires_at=later)).status_code == 201
        responses = await asyncio.gather(
            *(track(http, usage_key) for http in (first, second) for _ in range(300))
        )
    assert {r.status_code for r in responses} == {200}
    assert sum(r.json()["allowed"] for r in responses) == 200
    assert await pool.fetchval("SELECT sum(used) FROM usage_counters") == 200
    assert await pool.fetchval("SELECT spent FROM credit_lots") == 50
    assert await pool.fetchval("SELECT count(*) FROM usage_events WHERE recorded") == 200
