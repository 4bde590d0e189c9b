"""The usage window in SQL (migration 0015) and in Python (periods.py) are the same function."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg

from billing_service.db.pool import Connection
from billing_service.periods import period_for

RESETS = ("hour", "day", "week", "month", "year", "never")

# Moments where calendars turn: month ends of short and long months, leap days (2000 is a leap
# year, 2100 is not), ISO weeks that start in the previous year, and the instants either side.
EDGES = [
    datetime(2024, 2, 28, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2024, 2, 29, 0, 0, tzinfo=UTC),
    datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2024, 3, 1, 0, 0, tzinfo=UTC),
    datetime(2000, 2, 29, 12, 0, tzinfo=UTC),
    datetime(2100, 2, 28, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2100, 3, 1, 0, 0, tzinfo=UTC),
    datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2027, 1, 1, 0, 0, tzinfo=UTC),  # a Friday: its ISO week began on 2026-12-28
    datetime(2027, 1, 4, 0, 0, tzinfo=UTC),  # a Monday
    datetime(2027, 1, 3, 23, 59, 59, 999999, tzinfo=UTC),  # a Sunday
    datetime(2026, 4, 30, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2026, 5, 31, 23, 0, tzinfo=UTC),
    datetime(1970, 1, 1, 0, 0, tzinfo=UTC),
]


def _moments(count: int, seed: int) -> list[datetime]:
    rng = random.Random(seed)
    start = datetime(1999, 1, 1, tzinfo=UTC)
    span = int((datetime(2101, 1, 1, tzinfo=UTC) - start).total_seconds() * 1_000_000)
    return [start + timedelta(microseconds=rng.randrange(span)) for _ in range(count)] + EDGES


def _billing_periods(at: datetime, rng: random.Random) -> list[tuple[datetime, datetime] | None]:
    """A subscription period containing `at`, one ended before it, one starting after it,
    one ending exactly at it, and none."""
    start = at - timedelta(days=rng.randint(0, 30), seconds=rng.randint(0, 86_399))
    return [
        (start, start + timedelta(days=31)),
        (start - timedelta(days=62), start - timedelta(days=31)),
        (at + timedelta(microseconds=1), at + timedelta(days=30)),
        (at - timedelta(days=30), at),
        (at, at + timedelta(days=30)),
        None,
    ]


async def _sql_windows(
    conn: Connection,
    cases: list[tuple[str, datetime, tuple[datetime, datetime] | None]],
) -> list[tuple[datetime, datetime | None]]:
    rows = await conn.fetch(
        """
        SELECT w.window_start, w.window_end
        FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[], $4::timestamptz[])
             WITH ORDINALITY AS a(reset, at, billing_start, billing_end, n)
        CROSS JOIN LATERAL usage_window(a.reset, a.at, a.billing_start, a.billing_end) w
        ORDER BY a.n
        """,
        [reset for reset, _, _ in cases],
        [at for _, at, _ in cases],
        [None if period is None else period[0] for _, _, period in cases],
        [None if period is None else period[1] for _, _, period in cases],
    )
    return [(row["window_start"], row["window_end"]) for row in rows]


async def test_sql_and_python_agree_on_every_window(pool: asyncpg.Pool) -> None:
    """Over 2,000 random moments from 1999 to 2100 plus calendar edges, every reset kind and
    billing periods around each moment, usage_window returns exactly periods.period_for's
    window, whatever the session's time zone."""
    rng = random.Random(18)
    cases: list[tuple[str, datetime, tuple[datetime, datetime] | None]] = []
    for at in _moments(2_000, seed=11):
        cases += [(reset, at, None) for reset in RESETS]
        cases += [("billing_period", at, period) for period in _billing_periods(at, rng)]
    expected = [
        (p.start, p.end)
        for p in (period_for(reset, at, billing_period=period) for reset, at, period in cases)
    ]
    async with pool.acquire() as conn:
        for zone in ("UTC", "Pacific/Chatham", "America/St_Johns"):
            await conn.execute(f"SET TIME ZONE '{zone}'")
            try:
                found = await _sql_windows(conn, cases)
            finally:
                await conn.execute("RESET TIME ZONE")
            mismatches = [
                (case, want, got)
                for case, want, got in zip(cases, expected, found, strict=True)
                if want != got
            ]
            assert mismatches == [], (zone, len(mismatches), mismatches[:3])
    assert len(cases) > 20_000


async def test_the_current_window_counter_is_found_through_the_primary_key(
    pool: asyncpg.Pool,
) -> None:
    """The lookup the entitlement context does (usage_window joined to usage_counters) is
    inlined into one index condition on the full primary key, the window start included: it
    never reads the customer's other periods, however many there are."""
    plan = await pool.fetch(
        """
        EXPLAIN SELECT uc.used FROM usage_window('hour', now(), NULL, NULL) w
        JOIN usage_counters uc ON uc.customer_id = $1 AND uc.feature_id = $2
         AND uc.period_start = w.window_start
        """,
        uuid.uuid4(),
        uuid.uuid4(),
    )
    lines = [row[0] for row in plan]
    conditions = [line for line in lines if "Index Cond" in line]
    assert any("usage_counters_pkey" in line for line in lines), lines
    assert len(conditions) == 1, lines
    for column in ("customer_id", "feature_id", "period_start"):
        assert column in conditions[0], lines
