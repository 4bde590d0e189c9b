"""Track in one statement: one round trip per call, replays and refusals included, and exact
limits across real `serve` processes."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest
from asyncpg.connection import LoggedQuery

from billing_service.db.pool import create_pool
from billing_service.errors import IdempotencyKeyReused
from billing_service.services import usage
from billing_service.services.api_keys import Scope
from billing_service.services.usage import TrackRequest
from tests.conftest import issue_key
from tests.routes.test_checkout import bearer
from tests.routes.test_usage import catalog_with
from tests.support import free_port, start_service

GRACE = timedelta(days=7)


@pytest.fixture
async def single(database_url: str, pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Pool]:
    """A pool of one connection, so that every statement the service sends is seen."""
    one = await create_pool(database_url, min_size=1, max_size=1)
    try:
        yield one
    finally:
        await one.close()


def _request(key: str, amount: int = 1, feature: str = "ai_calls") -> TrackRequest:
    return TrackRequest(
        customer_key="user_1",
        feature_key=feature,
        amount=amount,
        cost=None,
        idempotency_key=key,
        metadata={},
    )


async def test_each_track_is_one_statement_without_a_transaction_block(
    pool: asyncpg.Pool, single: asyncpg.Pool
) -> None:
    """A first track (creating the customer), a replay, a key reused for another request, a
    refusal with its upgrade suggestion and a call spending past the allowance each reach
    PostgreSQL as exactly one statement: no BEGIN, no COMMIT, no second query."""
    await catalog_with(pool, limit=2, reset="month")
    sent: list[str] = []

    def record(logged: LoggedQuery) -> None:
        sent.append(" ".join(logged.query.split()))

    async with single.acquire() as conn:
        conn.add_query_logger(record)
    now = datetime.now(UTC)
    calls = [
        _request("first"),
        _request("first"),  # replayed
        _request("second", amount=5),  # refused: past the limit, with an upgrade
        _request("third", feature="export_csv"),  # refused: not in the plan
    ]
    answers = []
    for call in calls:
        sent.clear()
        answers.append(await usage.track(single, call, now=now, grace=GRACE))
        await asyncio.sleep(0)  # asyncpg calls query loggers on the loop's next turn
        assert len(sent) == 1, sent
        assert sent[0].startswith("SELECT outcome, response FROM usage_track("), sent[0]
    sent.clear()
    with pytest.raises(IdempotencyKeyReused):
        await usage.track(single, _request("first", amount=2), now=now, grace=GRACE)
    await asyncio.sleep(0)
    assert len(sent) == 1, sent
    async with single.acquire() as conn:
        conn.remove_query_logger(record)

    assert answers[0] == answers[1]
    assert (answers[0]["allowed"], answers[0]["used"], answers[0]["recorded"]) == (True, 1, True)
    assert answers[2]["reason"] == "limit_reached"
    assert answers[2]["upgrade"] == {"plan": "pro", "price": "pro_monthly"}
    assert answers[3]["reason"] == "feature_not_in_plan"
    assert await pool.fetchval("SELECT count(*) FROM usage_events") == 3


async def test_two_serve_processes_grant_exactly_500_of_1000_concurrent_tracks(
    cli_env: dict[str, str], pool: asyncpg.Pool
) -> None:
    """Two `serve` processes on one database, 1,000 simultaneous track(1) calls split between
    them against a limit of 500: exactly 500 are allowed and counted, and the hard limit is
    announced once."""
    await catalog_with(pool, limit=500, reset="month")
    key = await issue_key(pool, Scope.USAGE)
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
        limits = httpx.Limits(max_connections=50)
        async with (
            httpx.AsyncClient(base_url=bases[0], limits=limits, timeout=60) as first,
            httpx.AsyncClient(base_url=bases[1], limits=limits, timeout=60) as second,
        ):

            async def track(http: httpx.AsyncClient) -> httpx.Response:
                body = {
                    "customer_id": "user_1",
                    "feature": "ai_calls",
                    "amount": 1,
                    "idempotency_key": f"k-{random.getrandbits(64)}",
                }
                return await http.post("/v1/usage/track", headers=bearer(key), json=body)

            responses = await asyncio.gather(
                *(track(http) for http in (first, second) for _ in range(500))
            )
    finally:
        for service in services:
            service.terminate()
            await service.wait()
    assert {r.status_code for r in responses} == {200}
    assert sum(r.json()["allowed"] for r in responses) == 500
    assert await pool.fetchval("SELECT sum(used) FROM usage_counters") == 500
    assert await pool.fetchval("SELECT count(*) FROM usage_events WHERE recorded") == 500
    announced = await pool.fetchval(
        "SELECT count(*) FROM outbox_events WHERE type = 'usage.limit_reached'"
    )
    assert announced == 1


@pytest.mark.parametrize(
    ("status", "past_due_days", "grants_pro"),
    [
        ("active", None, True),
        ("trialing", None, True),
        ("past_due", 1, True),  # within the 7-day grace
        ("past_due", 8, False),
        ("unpaid", None, False),
        ("paused", None, False),
        ("canceled", None, False),
    ],
)
async def test_check_and_track_apply_the_same_access_policy(
    client: httpx.AsyncClient, pool: asyncpg.Pool, status: str, past_due_days: int | None,
    grants_pro: bool,
) -> None:  # fmt: skip
    """track decides in SQL and check in Python: for every subscription status (past due within
    and beyond the grace period included) both grant the same plan's allowance, Pro's 500 calls
    or the free plan's 5."""
    await catalog_with(pool, limit=5, reset="month")
    key = await issue_key(pool, Scope.USAGE)
    await pool.execute(
        """
        WITH c AS (INSERT INTO customers (external_id) VALUES ('user_1') RETURNING id)
        INSERT INTO subscriptions (customer_id, stripe_subscription_id, status, stripe_price_id,
                                   price_id, past_due_since, stripe_created_at)
        SELECT c.id, 'sub_x', $1, 'price_x', p.id, now() - make_interval(days => $2), now()
        FROM c, prices p WHERE p.lookup_key = 'pro_monthly'
        """,
        status,
        past_due_days or 0,
    )
    body = {"customer_id": "user_1", "feature": "ai_calls", "amount": 6}
    checked = (await client.post("/v1/usage/check", headers=bearer(key), json=body)).json()
    tracked = await client.post(
        "/v1/usage/track", headers=bearer(key), json=body | {"idempotency_key": "k-1"}
    )
    assert (checked["allowed"], checked["limit"]) == (grants_pro, 500 if grants_pro else 5)
    assert (tracked.json()["allowed"], tracked.json()["limit"]) == (
        checked["allowed"],
        checked["limit"],
    )
    assert tracked.json()["resets_at"] == checked["resets_at"]
