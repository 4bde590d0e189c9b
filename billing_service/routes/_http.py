"""JSON in and out for routes: strict body parsing into pydantic models, fast JSON responses."""

from __future__ import annotations

import re
import uuid
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from billing_service.errors import (
    FieldError,
    MalformedRequest,
    UnsupportedMediaType,
    ValidationFailed,
)

ModelT = TypeVar("ModelT", bound=BaseModel)


def _encode_other(value: object) -> str:
    """orjson only knows the exact `uuid.UUID`; asyncpg returns its own subclass."""
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class JSONResponse(Response):
    """orjson renders datetimes and dataclasses natively, and faster than json."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, default=_encode_other)


def field_errors(exc: ValidationError) -> list[FieldError]:
    return [
        FieldError(".".join(str(part) for part in error["loc"]) or "body", error["msg"])
        for error in exc.errors(include_url=False, include_input=False)
    ]


async def parse_json(request: Request, model: type[ModelT]) -> ModelT:
    """Parse the body as `model`: 415 if not JSON, 400 if unparsable, 422 listing bad fields."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        raise UnsupportedMediaType("Send the request body as application/json.")
    body = await request.body()
    try:
        parsed = model.model_validate_json(body)
    except ValidationError as exc:
        if any(error["type"] == "json_invalid" for error in exc.errors()):
            raise MalformedRequest("The request body is not valid JSON.") from None
        raise ValidationFailed(field_errors(exc)) from None
    unstorable = _unstorable_text(parsed.model_dump(mode="json"))
    if unstorable is not None:
        raise ValidationFailed(
            [FieldError(unstorable or "body", "must not contain NUL characters or lone surrogates")]
        )
    return parsed


def _unstorable_text(value: Any, path: str = "") -> str | None:
    """The path of the first string PostgreSQL cannot store (NUL, invalid UTF-8), if any."""
    if isinstance(value, str):
        if "\x00" in value:
            return path
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _unstorable_text(key, path) if isinstance(key, str) else None
            found = (
                found if found is not None else _unstorable_text(item, f"{path}.{key}".lstrip("."))
            )
            if found is not None:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = _unstorable_text(item, f"{path}.{index}".lstrip("."))
            if found is not None:
                return found
    return None


CUSTOMER_ID_PATTERN = r"^[A-Za-z0-9_.:@-]{1,255}$"
_CUSTOMER_ID = re.compile(CUSTOMER_ID_PATTERN)


def customer_id_param(request: Request) -> str:
    """The `{customer_id}` path segment, checked against the customer id rules."""
    customer_id: str = request.path_params["customer_id"]
    if not _CUSTOMER_ID.fullmatch(customer_id):
        raise ValidationFailed([FieldError("customer_id", f"must match {CUSTOMER_ID_PATTERN}")])
    return customer_id
