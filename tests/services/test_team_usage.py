"""Member limits in track: both limits exact across real `serve` processes, and a member's
track still one statement."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest
from asyncpg.connection import LoggedQuery

from billing_service.catalog_spec import load_catalog_yaml
from billing_service.db.pool import create_pool
from billing_service.errors import NotFound
from billing_service.services import customers, teams, usage
from billing_service.services.api_keys import Scope
from billing_service.services.usage import TrackRequest
from tests.conftest import issue_key
from tests.routes.test_checkout import bearer
from tests.services.test_catalog import apply
from tests.support import free_port, start_service

GRACE = timedelta(days=7)
MEMBERS = ("m1", "m2", "m3", "m4", "m5")
TEAM_YAML = """
features:
  ai_calls: {name: AI calls, kind: metered, unit: call}
plans:
  free:
    name: Free
    default: true
    features:
      ai_calls: {limit: 0, reset: month}
  team:
    name: Team
    display_order: 1
    max_seats: 10
    features:
      ai_calls: {limit: 80, per_seat: true, reset: month, per_member: {limit: 100}}
    prices:
      team_monthly: {amount: 1000, currency: usd, interval: month, per_seat: true}
"""


async def team_of_five(pool: asyncpg.Pool) -> None:
    """`acme` on the Team plan with 5 seats (a team limit of 5 x 80 = 400), members m1…m5."""
    await apply(pool, None, load_catalog_yaml(TEAM_YAML))
    await pool.execute(
        """
        INSERT INTO customers (external_id) VALUES ('acme');
        INSERT INTO subscriptions (customer_id, stripe_subscription_id, status, stripe_price_id,
                                   price_id, stripe_item_id, quantity, current_period_start,
                                   current_period_end, stripe_created_at)
        SELECT c.id, 'sub_team', 'active', 'price_team', p.id, 'si_team', 5,
               now() - interval '1 day', now() + interval '29 days', now()
        FROM customers c, prices p WHERE c.external_id = 'acme' AND p.lookup_key = 'team_monthly'
        """
    )
    customer = await customers.get_customer(pool, "acme")
    for member in MEMBERS:
        await teams.assign_member(pool, customer, member)


async def test_1000_tracks_from_5_members_across_two_serve_processes_stop_at_both_limits(
    cli_env: dict[str, str], pool: asyncpg.Pool
) -> None:
    """Two `serve` processes on one database, 1,000 simultaneous track(1) calls from 5 members
    (200 each, half through each process) against a member limit of 100 and a team limit of
    400: exactly 400 are allowed, no member passes 100, and every counter equals the usage
    events recorded for it."""
    await team_of_five(pool)
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

            async def track(http: httpx.AsyncClient, member: str) -> httpx.Response:
                body = {
                    "customer_id": "acme",
                    "feature": "ai_calls",
                    "amount": 1,
                    "member": member,
                    "idempotency_key": f"k-{random.getrandbits(64)}",
                }
                return await http.post("/v1/usage/track", headers=bearer(key), json=body)

            calls = [(http, m) for http in (first, second) for m in MEMBERS for _ in range(100)]
            random.shuffle(calls)
            responses = await asyncio.gather(*(track(http, m) for http, m in calls))
    finally:
        for service in services:
            service.terminate()
            await service.wait()
    assert {r.status_code for r in responses} == {200}
    assert sum(r.json()["allowed"] for r in responses) == 400
    reasons = {r.json().get("reason") for r in responses if not r.json()["allowed"]}
    assert reasons <= {"limit_reached", "member_limit_reached"}
    team_used = await pool.fetchval("SELECT sum(used) FROM usage_counters")
    assert team_used == 400
    per_member = {
        row["member_id"]: row["used"]
        for row in await pool.fetch("SELECT member_id, used FROM member_usage_counters")
    }
    assert max(per_member.values()) <= 100
    assert sum(per_member.values()) == 400
    recorded = {
        row["member_id"]: row["amount"]
        for row in await pool.fetch(
            "SELECT member_id, sum(amount) AS amount FROM usage_events WHERE recorded "
            "GROUP BY member_id"
        )
    }
    assert recorded == {m: used for m, used in per_member.items() if used}
    assert await pool.fetchval("SELECT count(*) FROM usage_events") == 1000


@pytest.fixture
async def single(database_url: str, pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Pool]:
    """A pool of one connection, so that every statement the service sends is seen."""
    one = await create_pool(database_url, min_size=1, max_size=1)
    try:
        yield one
    finally:
        await one.close()


async def test_a_members_track_is_one_statement_too(
    pool: asyncpg.Pool, single: asyncpg.Pool
) -> None:
    """A member's first track, its replay, a refusal at the member's limit and a member with no
    seat each reach PostgreSQL as exactly one statement."""
    await team_of_five(pool)
    sent: list[str] = []

    def record(logged: LoggedQuery) -> None:
        sent.append(" ".join(logged.query.split()))

    async with single.acquire() as conn:
        conn.add_query_logger(record)
    now = datetime.now(UTC)

    def request(key: str, amount: int, member: str) -> TrackRequest:
        return TrackRequest("acme", "ai_calls", amount, None, key, {}, member)

    answers = []
    for call in (request("a", 60, "m1"), request("a", 60, "m1"), request("b", 50, "m1")):
        sent.clear()
        answers.append(await usage.track(single, call, now=now, grace=GRACE))
        await asyncio.sleep(0)
        assert len(sent) == 1, sent
    sent.clear()
    with pytest.raises(NotFound):
        await usage.track(single, request("c", 1, "nobody"), now=now, grace=GRACE)
    await asyncio.sleep(0)
    assert len(sent) == 1, sent
    async with single.acquire() as conn:
        conn.remove_query_logger(record)
    assert answers[0] == answers[1]
    assert answers[0]["member"] == {"id": "m1", "used": 60, "limit": 100, "remaining": 40}
    assert (answers[0]["limit"], answers[0]["used"]) == (400, 60)
    assert answers[2]["reason"] == "member_limit_reached"
    assert answers[2]["upgrade"] is None
