"""The usage history: summed in SQL into a bounded number of buckets, exact, and refused past the
longest range its granularity allows."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
import pytest

from billing_service.config import Settings
from billing_service.services.api_keys import Scope
from tests.conftest import app_client, issue_key
from tests.routes.test_checkout import bearer
from tests.routes.test_usage import Clock

NOW = datetime(2027, 3, 10, 15, 30, tzinfo=UTC)
HOURS = 366 * 24  # a leap year of hourly periods, the last one holding NOW
Counters = dict[datetime, tuple[int, Decimal]]


@pytest.fixture
async def history_client(
    settings: Settings, pool: asyncpg.Pool
) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its clock at NOW."""
    async with app_client(settings, clock=Clock(NOW)) as client:
        yield client


@pytest.fixture
async def usage_key(pool: asyncpg.Pool) -> str:
    return await issue_key(pool, Scope.USAGE)


async def feature_with_counters(
    pool: asyncpg.Pool, key: str, counters: Counters, *, length: timedelta | None
) -> None:
    """Counters of customer `heavy` for a new feature `key`, written directly: period start →
    (used, cost); each period lasts `length` (None: the all-time counter of a never-reset)."""
    customer = await pool.fetchval(
        "INSERT INTO customers (external_id) VALUES ('heavy') ON CONFLICT (external_id) "
        "DO UPDATE SET external_id = EXCLUDED.external_id RETURNING id"
    )
    feature = await pool.fetchval(
        "INSERT INTO features (key, name, kind) VALUES ($1, $1, 'metered') RETURNING id", key
    )
    await pool.copy_records_to_table(
        "usage_counters",
        records=[
            (customer, feature, start, None if length is None else start + length, used, cost)
            for start, (used, cost) in counters.items()
        ],
        columns=["customer_id", "feature_id", "period_start", "period_end", "used", "cost"],
    )


def hourly_year() -> Counters:
    """A year of hourly usage ending with the hour that holds NOW, of varied units and costs."""
    rng = random.Random(13)
    last = NOW.replace(minute=0)
    return {
        last - timedelta(hours=n): (rng.randrange(10_000), Decimal(rng.randrange(10**9)) / 10**9)
        for n in range(HOURS)
    }


def sums(
    counters: Counters, start_of: Callable[[datetime], datetime]
) -> dict[str, tuple[int, str]]:
    """What each bucket must hold, added up in Python from the counters as written."""
    totals: dict[datetime, tuple[int, Decimal]] = {}
    for start, (used, cost) in counters.items():
        bucket = start_of(start)
        before_used, before_cost = totals.get(bucket, (0, Decimal(0)))
        totals[bucket] = (before_used + used, before_cost + cost)
    return {
        bucket.isoformat(): (used, format(cost.quantize(Decimal(10) ** -12), "f"))
        for bucket, (used, cost) in totals.items()
    }


def answered(response: httpx.Response) -> dict[str, tuple[int, str]]:
    assert response.status_code == 200, response.text
    return {row["period_start"]: (row["used"], row["cost"]) for row in response.json()["data"]}


def month_of(moment: datetime) -> datetime:
    return moment.replace(day=1, hour=0, minute=0)


def day_of(moment: datetime) -> datetime:
    return moment.replace(hour=0, minute=0)


async def history(client: httpx.AsyncClient, key: str, **params: Any) -> httpx.Response:
    return await client.get("/v1/customers/heavy/usage", headers=bearer(key), params=params)


async def test_a_year_of_hourly_usage_comes_back_in_a_few_buckets_with_exact_sums(
    history_client: httpx.AsyncClient, pool: asyncpg.Pool, usage_key: str
) -> None:
    """8,784 hourly counters: by default 13 monthly buckets, by day at most 367, by hour at most
    745; each bucket's units and cost are exactly the sum of the counters it covers."""
    counters = hourly_year()
    await feature_with_counters(pool, "api_requests", counters, length=timedelta(hours=1))

    default = await history(history_client, usage_key, feature="api_requests")
    body = default.json()
    assert (body["granularity"], body["from"], body["to"]) == (
        "month", "2026-03-01T00:00:00+00:00", "2027-04-01T00:00:00+00:00",
    )  # fmt: skip
    in_range = {s: c for s, c in counters.items() if s >= datetime(2026, 3, 1, tzinfo=UTC)}
    assert answered(default) == sums(in_range, month_of)
    assert len(body["data"]) == 13
    march = body["data"][-1]
    assert (march["period_start"], march["period_end"]) == (
        "2027-03-01T00:00:00+00:00", "2027-04-01T00:00:00+00:00",
    )  # fmt: skip

    by_day = await history(
        history_client, usage_key, feature="api_requests", granularity="day",
        **{"from": "2026-03-10T15:30:00Z", "to": "2027-03-11T00:00:00Z"},
    )  # fmt: skip
    assert len(by_day.json()["data"]) <= 367
    in_range = {s: c for s, c in counters.items() if s >= datetime(2026, 3, 10, tzinfo=UTC)}
    assert answered(by_day) == sums(in_range, day_of)

    by_hour = await history(history_client, usage_key, feature="api_requests", granularity="hour")
    assert len(by_hour.json()["data"]) == 31 * 24 + 1  # 31 days back from NOW, and NOW's hour
    since = NOW.replace(minute=0) - timedelta(days=31)
    assert answered(by_hour) == sums({s: c for s, c in counters.items() if s >= since}, lambda s: s)


async def test_adjacent_ranges_add_up_to_the_whole(
    history_client: httpx.AsyncClient, pool: asyncpg.Pool, usage_key: str
) -> None:
    """Each counter is counted once, in the bucket its period starts in: two weeks asked for one
    after the other hold what one request for both holds."""
    counters = hourly_year()
    await feature_with_counters(pool, "api_requests", counters, length=timedelta(hours=1))
    ranges = [("2027-02-01T00:00:00Z", "2027-02-08T00:00:00Z"),
              ("2027-02-08T00:00:00Z", "2027-02-15T00:00:00Z")]  # fmt: skip
    parts = [
        sum(used for used, _ in answered(await history(
            history_client, usage_key, feature="api_requests", granularity="day",
            **{"from": start, "to": end})).values())
        for start, end in ranges
    ]  # fmt: skip
    whole = answered(await history(
        history_client, usage_key, feature="api_requests", granularity="week",
        **{"from": ranges[0][0], "to": ranges[1][1]},
    ))  # fmt: skip
    assert sum(parts) == sum(used for used, _ in whole.values())
    window = [s for s in counters if datetime(2027, 2, 1, tzinfo=UTC) <= s < datetime(
        2027, 2, 15, tzinfo=UTC)]  # fmt: skip
    assert sum(parts) == sum(counters[s][0] for s in window)


@pytest.mark.parametrize(
    ("granularity", "days", "bound"),
    [("hour", 32, 31), ("period", 32, 31), ("day", 367, 366), ("week", 400, 366),
     ("month", 367, 366)],
)  # fmt: skip
async def test_a_range_past_the_granularitys_maximum_is_a_422_naming_it(
    history_client: httpx.AsyncClient, usage_key: str, granularity: str, days: int, bound: int
) -> None:
    """One day more than the granularity allows is refused, the problem saying the maximum; the
    maximum itself is answered."""
    end = datetime(2027, 3, 1, tzinfo=UTC)
    too_long = await history(
        history_client, usage_key, granularity=granularity,
        **{"from": (end - timedelta(days=days)).isoformat(), "to": end.isoformat()},
    )  # fmt: skip
    assert too_long.status_code == 422, too_long.text
    problem = too_long.json()
    assert problem["type"] == "urn:billing-service:problem:validation-failed"
    assert f"at most {bound} days at granularity={granularity}" in problem["detail"]
    assert problem["errors"] == [{
        "field": "to",
        "message": f"must be at most {bound} days after from (granularity={granularity})",
    }]  # fmt: skip
    longest = await history(
        history_client, usage_key, granularity=granularity,
        **{"from": (end - timedelta(days=bound)).isoformat(), "to": end.isoformat()},
    )  # fmt: skip
    assert longest.status_code == 200, longest.text


async def test_a_from_too_far_back_without_to_and_an_empty_range_are_422(
    history_client: httpx.AsyncClient, usage_key: str
) -> None:
    """`to` defaults to now, so an old `from` alone is past the maximum; `to` before `from` is
    refused rather than answered empty; an unknown granularity names the choices."""
    old = await history(history_client, usage_key, **{"from": "2025-01-01T00:00:00Z"})
    assert old.json()["errors"][0]["field"] == "from"
    backwards = await history(
        history_client, usage_key,
        **{"from": "2027-02-01T00:00:00Z", "to": "2027-01-01T00:00:00Z"},
    )  # fmt: skip
    assert backwards.json()["errors"] == [{"field": "to", "message": "must be later than from"}]
    unknown = await history(history_client, usage_key, granularity="year")
    assert unknown.status_code == 422
    assert unknown.json()["errors"][0]["field"] == "granularity"


async def test_period_granularity_keeps_one_row_per_period_and_the_all_time_counter_always_shows(
    history_client: httpx.AsyncClient, pool: asyncpg.Pool, usage_key: str
) -> None:
    """`granularity=period` answers each counter as it is; a never-resetting feature's all-time
    counter (from 1970, no end) appears whatever the range and granularity."""
    months = {datetime(2027, m, 1, tzinfo=UTC): (m, Decimal(m)) for m in (1, 2, 3)}
    await feature_with_counters(pool, "ai_calls", months, length=timedelta(days=28))
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    await feature_with_counters(pool, "projects", {epoch: (3, Decimal(0))}, length=None)

    periods = await history(
        history_client, usage_key, granularity="period",
        **{"from": "2027-02-01T00:00:00Z", "to": "2027-03-01T00:00:00Z"},
    )  # fmt: skip
    assert [(r["feature"], r["period_start"], r["period_end"], r["used"])
            for r in periods.json()["data"]] == [
        ("ai_calls", "2027-02-01T00:00:00+00:00", "2027-03-01T00:00:00+00:00", 2),
        ("projects", "1970-01-01T00:00:00+00:00", None, 3),
    ]  # fmt: skip
    for granularity in ("hour", "day", "week", "month"):
        rows = (await history(history_client, usage_key, granularity=granularity)).json()["data"]
        assert ("projects", None, 3) in [(r["feature"], r["period_end"], r["used"]) for r in rows]
