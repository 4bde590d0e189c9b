"""Usage periods: which window a moment falls in, for each kind of reset.

Calendar periods are UTC: hours, days, ISO weeks (from Monday), months and years.
`billing_period` follows the subscription's current period (a calendar month without one), and
`never` is a single window from the beginning of time. Counters roll over lazily: a new period
simply has a new counter row.

When the mirrored billing period has ended but the renewal has not reached the mirror yet (a
late webhook), the period is advanced locally by the price's interval, as Stripe will have
done, so usage in the gap already counts in the new period. Stripe anchors monthly periods on
the billing cycle anchor's day, clamped to short months (Jan 31 → Feb 28 → Mar 31). The anchor
day is read off the period: the end's day, or the start's when the end falls on the last day of
its month and the start's day is later (a period clamped by a short month). Migration 0015
computes the same windows in SQL (`usage_window`); tests/db/test_usage_windows.py compares them.
"""

from __future__ import annotations

import calendar
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


def _days_in_month(year: int, month: int) -> int:
    return calendar.monthrange(year, month)[1]


def _boundary(end: datetime, anchor_day: int, months: int) -> datetime:
    """The period boundary `months` after `end`: the anchor day (clamped to the month's
    length) at `end`'s time of day."""
    years, month0 = divmod(end.month - 1 + months, 12)
    year, month = end.year + years, month0 + 1
    return end.replace(year=year, month=month, day=min(anchor_day, _days_in_month(year, month)))


def renewed_period(start: datetime, end: datetime, now: datetime, interval: str) -> Period:
    """The billing period containing `now` (at or after `end`), had Stripe renewed the period
    [start, end) every `interval` (month or year) since."""
    start, end, now = start.astimezone(UTC), end.astimezone(UTC), now.astimezone(UTC)
    clamped = end.day == _days_in_month(end.year, end.month) and start.day > end.day
    anchor_day = start.day if clamped else end.day
    step = 12 if interval == "year" else 1
    months = ((now.year - end.year) * 12 + now.month - end.month) // step * step
    first = _boundary(end, anchor_day, months)
    if first > now:
        return Period(_boundary(end, anchor_day, months - step), first)
    return Period(first, _boundary(end, anchor_day, months + step))


def period_for(  # noqa: PLR0911 - one return per kind of period
    reset: str,
    now: datetime,
    *,
    billing_period: tuple[datetime, datetime] | None = None,
    interval: str | None = None,
) -> Period:
    """The window of `reset` that contains `now` (an aware datetime). `interval` is the
    subscription price's (month or year): without it, a billing period that has ended falls
    back to calendar months."""
    now = now.astimezone(UTC)
    if reset == "never":
        return Period(BEGINNING, None)
    if reset == "billing_period":
        if billing_period is not None and billing_period[0] <= now < billing_period[1]:
            return Period(*billing_period)
        if billing_period is not None and interval is not None and now >= billing_period[1]:
            return renewed_period(*billing_period, now, interval)
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
