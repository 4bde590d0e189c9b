"""The window of a usage history: its granularity, its range aligned to whole buckets, and the
longest range each granularity may span, so that every answer stays small and cheap however long
a customer's history grows.

Each bounds two things: the rows of the answer and the counters read to sum them. Counters are
at finest hourly, so a range of 31 days reads at most 744 counters per feature, and one of 366
days at most 8,784 (a leap year of hours) while answering with at most 366 rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from billing_service.errors import FieldError, ValidationFailed

FIRST = datetime(1, 1, 1, tzinfo=UTC)
LAST = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Granularity:
    """How the history is cut: `bucket` is PostgreSQL's date_trunc unit, None for one row per
    counter period."""

    name: str
    bucket: str | None
    max_days: int


LONGEST_DAYS = 366
GRANULARITIES = {
    g.name: g
    for g in (
        Granularity("hour", "hour", 31),
        Granularity("day", "day", LONGEST_DAYS),
        Granularity("week", "week", LONGEST_DAYS),
        Granularity("month", "month", LONGEST_DAYS),
        Granularity("period", None, 31),
    )
}
DEFAULT_GRANULARITY: Final = "month"


@dataclass(frozen=True, slots=True)
class HistoryWindow:
    """Counters whose period starts in [start, end) are summed per bucket of `granularity`."""

    granularity: Granularity
    start: datetime
    end: datetime


def history_window(
    granularity: str, *, since: datetime | None, until: datetime | None, now: datetime
) -> HistoryWindow:
    """The window asked for: `until` defaults to now (included) and `since` to the longest range
    before it; both then widen to whole buckets. A range longer than the granularity allows, or
    an empty one, is a 422 naming the bound."""
    rule = GRANULARITIES[granularity]
    longest = timedelta(days=rule.max_days)
    end = (until or now).astimezone(UTC)
    start = since.astimezone(UTC) if since is not None else _minus(end, longest)
    if end <= start:
        field, message = (
            ("to", "must be later than from")
            if until is not None
            else ("from", "must be earlier than to (now, when to is not given)")
        )
        raise ValidationFailed([FieldError(field, message)])
    if end - start > longest:
        field, message = (
            ("to", f"must be at most {rule.max_days} days after from")
            if until is not None
            else ("from", f"must be at most {rule.max_days} days before now when to is not given")
        )
        coarser = " or a coarser granularity" if rule.max_days < LONGEST_DAYS else ""
        raise ValidationFailed(
            [FieldError(field, f"{message} (granularity={rule.name})")],
            f"A usage history spans at most {rule.max_days} days at granularity={rule.name} "
            f"(hour and period: 31 days; day, week and month: {LONGEST_DAYS} days). Ask for a "
            f"shorter range{coarser}, or for several ranges one after another.",
        )
    if until is None:  # up to now, included: the bucket or period that holds it
        end = _after_moment(end)
    if rule.bucket is None:
        return HistoryWindow(rule, start, end)
    floor = _floor(end, rule.bucket)
    return HistoryWindow(
        rule, _floor(start, rule.bucket), end if floor == end else _next(floor, rule.bucket)
    )


def _after_moment(moment: datetime) -> datetime:
    try:
        return moment + timedelta(microseconds=1)
    except OverflowError:
        return LAST


def _minus(moment: datetime, span: timedelta) -> datetime:
    try:
        return moment - span
    except OverflowError:
        return FIRST


def _floor(moment: datetime, bucket: str) -> datetime:
    """The start of the bucket that holds `moment` (UTC, weeks from Monday)."""
    hour = moment.replace(minute=0, second=0, microsecond=0)
    if bucket == "hour":
        return hour
    day = hour.replace(hour=0)
    if bucket == "day":
        return day
    if bucket == "week":
        return day - timedelta(days=day.weekday())  # 0001-01-01 was a Monday
    return day.replace(day=1)


def _next(start: datetime, bucket: str) -> datetime:
    """The start of the bucket after the one starting at `start`, or LAST past the calendar."""
    try:
        if bucket == "month":
            if start.month == 12:
                return start.replace(year=start.year + 1, month=1)
            return start.replace(month=start.month + 1)
        return start + {"hour": timedelta(hours=1), "day": timedelta(days=1)}.get(
            bucket, timedelta(weeks=1)
        )
    except (OverflowError, ValueError):
        return LAST
