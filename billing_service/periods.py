"""Usage periods: which window a moment falls in, for each kind of reset.

Calendar periods are UTC: hours, days, ISO weeks (from Monday), months and years.
`billing_period` follows the subscription's current period (a calendar month without one), and
`never` is a single window from the beginning of time. Counters roll over lazily: a new period
simply has a new counter row.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

BEGINNING = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Period:
    start: datetime
    end: datetime | None  # None for `never`


def _next_month(moment: datetime) -> datetime:
    return (
        moment.replace(year=moment.year + 1, month=1)
        if moment.month == 12
        else (moment.replace(month=moment.month + 1))
    )


def period_for(  # noqa: PLR0911 - one return per kind of period
    reset: str,
    now: datetime,
    *,
    billing_period: tuple[datetime, datetime] | None = None,
) -> Period:
    """The window of `reset` that contains `now` (an aware datetime)."""
    now = now.astimezone(UTC)
    if reset == "never":
        return Period(BEGINNING, None)
    if reset == "billing_period":
        if billing_period is not None and billing_period[0] <= now < billing_period[1]:
            return Period(*billing_period)
        reset = "month"
    if reset == "hour":
        start = now.replace(minute=0, second=0, microsecond=0)
        return Period(start, start + timedelta(hours=1))
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if reset == "day":
        return Period(midnight, midnight + timedelta(days=1))
    if reset == "week":
        start = midnight - timedelta(days=midnight.weekday())
        return Period(start, start + timedelta(weeks=1))
    if reset == "month":
        start = midnight.replace(day=1)
        return Period(start, _next_month(start))
    if reset == "year":
        start = midnight.replace(month=1, day=1)
        return Period(start, start.replace(year=start.year + 1))
    raise ValueError(f"unknown reset {reset!r}")
