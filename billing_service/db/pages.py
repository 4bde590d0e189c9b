"""Keyset pages for lists that grow: a page resumes strictly after the sort key of the last row
the previous page returned, so it is one index range scan however deep the walk goes.

Lists sort on `(created_at, id)`, a total order that never changes for a stored row. A first page
starts after a sentinel that lies beyond every real row, so each list is one SQL statement.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True, slots=True)
class After:
    """Where a page starts: strictly after this `(created_at, id)`."""

    created_at: datetime
    id: uuid.UUID


# Newest-first lists start after the end of the calendar, oldest-first ones before its start.
NEWEST_FIRST = After(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC), uuid.UUID(int=2**128 - 1))
OLDEST_FIRST = After(datetime(1, 1, 1, tzinfo=UTC), uuid.UUID(int=0))
