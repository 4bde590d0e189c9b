"""The usage window in SQL (migration 0015) and in Python (periods.py) are the same function."""

from __future__ import annotations

import calendar
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


Case = tuple[str, datetime, tuple[datetime, datetime] | None, str | None]


def _billing_periods(at: datetime, rng: random.Random) -> list[tuple[datetime, datetime] | None]:
    """A subscription period containing `at`, one ended before it, one starting after it,
    one ending exactly at it, one starting at it, and none."""
    start = at - timedelta(days=rng.randint(0, 30), seconds=rng.randint(0, 86_399))
    return [
        (start, start + timedelta(days=31)),
        (start - timedelta(days=62), start - timedelta(days=31)),
        (at + timedelta(microseconds=1), at + timedelta(days=30)),
        (at - timedelta(days=30), at),
        (at, at + timedelta(days=30)),
        None,
    ]


def stripe_boundary(anchor: datetime, interval: str, n: int) -> datetime:
    """The n-th period boundary of a subscription whose billing cycle anchor is `anchor`, as
    Stripe counts them: the anchor's day, clamped to the length of each month."""
    years, month0 = divmod(anchor.month - 1 + n * (12 if interval == "year" else 1), 12)
    year, month = anchor.year + years, month0 + 1
    return anchor.replace(
        year=year, month=month, day=min(anchor.day, calendar.monthrange(year, month)[1])
    )


async def _sql_windows(
    conn: Connection, cases: list[Case]
) -> list[tuple[datetime, datetime | None]]:
    rows = await conn.fetch(
        """
        SELECT w.window_start, w.window_end
        FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[], $4::timestamptz[],
                    $5::text[])
             WITH ORDINALITY AS a(reset, at, billing_start, billing_end, billing_interval, n)
        CROSS JOIN LATERAL usage_window(a.reset, a.at, a.billing_start, a.billing_end,
                                        a.billing_interval) w
        ORDER BY a.n
        """,
        [reset for reset, _, _, _ in cases],
        [at for _, at, _, _ in cases],
        [None if period is None else period[0] for _, _, period, _ in cases],
        [None if period is None else period[1] for _, _, period, _ in cases],
        [interval for _, _, _, interval in cases],
    )
    return [(row["window_start"], row["window_end"]) for row in rows]


def _python_windows(cases: list[Case]) -> list[tuple[datetime, datetime | None]]:
    return [
        (p.start, p.end)
        for p in (
            period_for(reset, at, billing_period=period, interval=interval)
            for reset, at, period, interval in cases
        )
    ]


def _anchor(rng: random.Random) -> datetime:
    """A billing cycle anchor, often on a month's last days."""
    year, month = rng.randint(2000, 2090), rng.randint(1, 12)
    last = calendar.monthrange(year, month)[1]
    day = rng.choice([1, 15, 28, last - 1, last, last, rng.randint(1, last)])
    return datetime(year, month, day, rng.randint(0, 23), rng.randint(0, 59), tzinfo=UTC)


def _renewals(count: int, rng: random.Random) -> list[tuple[Case, tuple[datetime, datetime]]]:
    """Late renewals: a Stripe period sequence from a random anchor, the mirror stuck at one
    period, a moment up to three years past its end; each with the period Stripe has then.

    Left out: a yearly period anchored on Feb 29 and stuck between two Feb 28ths, whose anchor
    day the period alone cannot tell (docs/usage.md, "Renewals")."""
    found: list[tuple[Case, tuple[datetime, datetime]]] = []
    while len(found) < count:
        anchor = _anchor(rng)
        interval = rng.choice(["month", "year"])
        k = rng.randint(0, 30)
        mirrored = (stripe_boundary(anchor, interval, k), stripe_boundary(anchor, interval, k + 1))
        if interval == "year" and (anchor.month, anchor.day, mirrored[0].day) == (2, 29, 28):
            continue
        late = timedelta(microseconds=rng.randrange(3 * 366 * 86_400 * 1_000_000))
        at = mirrored[1] + (late if len(found) % 7 else timedelta(0))
        n = k + 1
        while stripe_boundary(anchor, interval, n + 1) <= at:
            n += 1
        truth = (stripe_boundary(anchor, interval, n), stripe_boundary(anchor, interval, n + 1))
        found.append((("billing_period", at, mirrored, interval), truth))
    return found


async def test_sql_and_python_agree_on_every_window(pool: asyncpg.Pool) -> None:
    """Over 2,000 random moments from 1999 to 2100 plus calendar edges, every reset kind and
    billing periods around each moment (with and without a renewal interval), usage_window
    returns exactly periods.period_for's window, whatever the session's time zone."""
    rng = random.Random(18)
    cases: list[Case] = []
    for at in _moments(2_000, seed=11):
        cases += [(reset, at, None, None) for reset in RESETS]
        cases += [
            ("billing_period", at, period, rng.choice([None, "month", "year"]))
            for period in _billing_periods(at, rng)
        ]
    cases += [case for case, _ in _renewals(2_000, rng)]
    expected = _python_windows(cases)
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


def test_a_late_renewal_is_advanced_to_the_period_stripe_has() -> None:
    """A mirror stuck on an ended period (monthly or yearly, any anchor day, clamped months
    and leap days included): the window is the period Stripe's own anchor gives then."""
    renewals = _renewals(3_000, random.Random(12))
    found = _python_windows([case for case, _ in renewals])
    wrong = [
        (case, truth, got)
        for (case, truth), got in zip(renewals, found, strict=True)
        if got != truth
    ]
    assert wrong == [], (len(wrong), wrong[:3])
    jan31 = (datetime(2027, 1, 31, 10, tzinfo=UTC), datetime(2027, 2, 28, 10, tzinfo=UTC))
    late = period_for(
        "billing_period", datetime(2027, 2, 28, 11, tzinfo=UTC), billing_period=jan31,
        interval="month",
    )  # fmt: skip
    assert (late.start, late.end) == (jan31[1], datetime(2027, 3, 31, 10, tzinfo=UTC))


async def test_the_current_window_counter_is_found_through_the_primary_key(
    pool: asyncpg.Pool,
) -> None:
    """The lookup the entitlement context does (usage_window joined to usage_counters) is
    inlined into one index condition on the full primary key, the window start included: it
    never reads the customer's other periods, however many there are."""
    plan = await pool.fetch(
        """
        EXPLAIN SELECT uc.used FROM usage_window('hour', now(), NULL, NULL, NULL) w
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
