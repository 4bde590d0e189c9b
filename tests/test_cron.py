"""Cron expressions for job schedules: parsing and the next matching minute."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from billing_service.cron import Cron, CronError


def at(year: int, month: int, day: int, hour: int, minute: int) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        ("0 3 * * *", at(2027, 1, 1, 2, 59), at(2027, 1, 1, 3, 0)),
        ("0 3 * * *", at(2027, 1, 1, 3, 0), at(2027, 1, 2, 3, 0)),
        ("*/15 * * * *", at(2027, 1, 1, 10, 7), at(2027, 1, 1, 10, 15)),
        ("30 4 1 * *", at(2027, 1, 15, 0, 0), at(2027, 2, 1, 4, 30)),
        ("0 0 * * 1", at(2027, 3, 3, 12, 0), at(2027, 3, 8, 0, 0)),  # next Monday
        ("0 0 * * 7", at(2027, 3, 3, 12, 0), at(2027, 3, 7, 0, 0)),  # 7 is Sunday
        ("0 12 29 2 *", at(2027, 1, 1, 0, 0), at(2028, 2, 29, 12, 0)),  # the next leap day
        ("0 9-17/4 * * 1-5", at(2027, 3, 5, 17, 30), at(2027, 3, 8, 9, 0)),  # Friday → Monday
        ("0 0 1 * 1", at(2027, 3, 2, 0, 0), at(2027, 3, 8, 0, 0)),  # either day field
    ],
)
def test_next_run(expression: str, after: datetime, expected: datetime) -> None:
    """The first matching minute strictly after the given moment."""
    assert Cron.parse(expression).next_after(after) == expected


@pytest.mark.parametrize(
    "expression", ["", "* * * *", "60 * * * *", "* 24 * * *", "*/0 * * * *", "a * * * *",
                   "5-1 * * * *", "0 0 31 2 *"],
)  # fmt: skip
def test_invalid_expressions_are_refused(expression: str) -> None:
    """Wrong field counts, out-of-range values, zero steps and impossible dates fail clearly."""
    with pytest.raises(CronError):
        Cron.parse(expression).next_after(at(2027, 1, 1, 0, 0))
