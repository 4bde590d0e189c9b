"""Pagination of list routes: `?limit=&cursor=` in, `data`, `has_more` and `next_cursor` out.

A cursor is the sort key of the last item of a page, opaque to callers (URL-safe base64 of a JSON
array). The next page starts strictly after it, so walking a list never repeats an item and never
skips one that existed when the walk began, however many are added meanwhile.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import orjson
from starlette.requests import Request

from billing_service.db.pages import After
from billing_service.errors import FieldError, ValidationFailed

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_CURSOR_LENGTH = 512

ItemT = TypeVar("ItemT")

_BAD_CURSOR = "must be a next_cursor this list returned"


@dataclass(frozen=True, slots=True)
class PageRequest:
    """What a caller asked for: at most `limit` items after `cursor` (None: the first page)."""

    limit: int
    cursor: tuple[Any, ...] | None


def page_request(request: Request) -> PageRequest:
    """Read `limit` (1 to 1000, default 100) and `cursor`; a 422 names whichever is wrong."""
    raw_limit = request.query_params.get("limit", str(DEFAULT_LIMIT))
    digits = raw_limit.isascii() and raw_limit.isdigit() and len(raw_limit) <= len(str(MAX_LIMIT))
    limit = int(raw_limit) if digits else 0
    if not 1 <= limit <= MAX_LIMIT:
        raise ValidationFailed([FieldError("limit", f"must be an integer from 1 to {MAX_LIMIT}")])
    raw_cursor = request.query_params.get("cursor")
    return PageRequest(limit, None if raw_cursor is None else _decode(raw_cursor))


def encode_cursor(*parts: str | int) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(parts)).decode().rstrip("=")


_CURSOR = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_CURSOR_LENGTH}}}")


def _decode(raw: str) -> tuple[Any, ...]:
    if not _CURSOR.fullmatch(raw):
        raise ValidationFailed([FieldError("cursor", _BAD_CURSOR)])
    try:
        parts = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (binascii.Error, ValueError):
        raise ValidationFailed([FieldError("cursor", _BAD_CURSOR)]) from None
    if not isinstance(parts, list) or not parts:
        raise ValidationFailed([FieldError("cursor", _BAD_CURSOR)])
    return tuple(parts)


def after(page: PageRequest) -> After | None:
    """The `(created_at, id)` a page of a time-ordered list starts after."""
    if page.cursor is None:
        return None
    try:
        created_at, item_id = page.cursor
        moment = datetime.fromisoformat(created_at)
        key = After(moment.astimezone(UTC), uuid.UUID(item_id))
    except (TypeError, ValueError, AttributeError, OverflowError):
        key = None
    if key is None or moment.tzinfo is None:
        raise ValidationFailed([FieldError("cursor", _BAD_CURSOR)])
    return key


class Timed(Protocol):
    """A row of a time-ordered list: its sort key is `(created_at, id)`."""

    @property
    def created_at(self) -> datetime: ...

    @property
    def id(self) -> uuid.UUID: ...


def time_cursor(item: Timed) -> str:
    """The cursor of a page that ends with `item` (the reverse of `after`)."""
    return encode_cursor(item.created_at.isoformat(), str(item.id))


def page_body(
    rows: Sequence[ItemT],
    page: PageRequest,
    *,
    serialize: Callable[[ItemT], object],
    cursor_of: Callable[[ItemT], str],
) -> dict[str, object]:
    """The response of a page read with `limit + 1` rows: the extra row only says more follow."""
    shown = rows[: page.limit]
    has_more = len(rows) > page.limit
    return {
        "data": [serialize(row) for row in shown],
        "has_more": has_more,
        "next_cursor": cursor_of(shown[-1]) if has_more else None,
    }
