"""JSON in and out for routes: strict body parsing into pydantic models, fast JSON responses."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import orjson
from pydantic import AwareDatetime, BaseModel, BeforeValidator, ValidationError
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
        FieldError(
            ".".join(str(part) for part in error["loc"]) or "body",
            error["msg"].removeprefix("Value error, "),
        )
        for error in exc.errors(include_url=False, include_input=False)
    ]


async def parse_json(request: Request, model: type[ModelT]) -> ModelT:
    """Parse the body as `model`: 415 if not JSON, 400 if unparsable, 422 listing bad fields."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        raise UnsupportedMediaType("Send the request body as application/json.")
    body = await request.body()
    try:
        parsed = _validate(model, body)
    except ValidationError as exc:
        if any(error["type"] == "json_invalid" for error in exc.errors()):
            raise MalformedRequest("The request body is not valid JSON.") from None
        raise ValidationFailed(field_errors(exc)) from None
    # The parser refuses raw NUL bytes and invalid UTF-8, so only an escape (`\u0000`) can put
    # unstorable text in the model: bodies without one skip the walk over it.
    unstorable = _unstorable_text(parsed.model_dump(mode="json")) if b"\\u" in body else None
    if unstorable is not None:
        raise ValidationFailed(
            [FieldError(unstorable or "body", "must not contain NUL characters or lone surrogates")]
        )
    return parsed


def _validate(model: type[ModelT], body: bytes) -> ModelT:
    """Strict, so JSON types count as the contract documents them (`false` is not 0, `"5"` is
    not 5). JSON Schema calls `5.0` an integer, so a body refused only because an integer field
    held such a number is read again with exactly those values as integers (a field that refuses
    fractions on purpose, such as a catalog amount, keeps its error); the usual body is parsed
    once."""
    try:
        return model.model_validate_json(body, strict=True)
    except ValidationError as exc:
        integral = [
            error
            for error in exc.errors()
            if error["type"] == "int_type" and _is_integral_float(error.get("input"))
        ]
        if not integral:
            raise
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:  # pydantic's reader takes a little more than orjson's
            raise exc from None
        for error in integral:
            document = _with_int_at(document, error["loc"], error["input"])
    return model.model_validate_json(orjson.dumps(document), strict=True)


def _is_integral_float(value: object) -> bool:
    return isinstance(value, float) and value.is_integer() and abs(value) < 2**63


def _with_int_at(document: Any, loc: tuple[int | str, ...], value: float) -> Any:
    """`document` with the number at `loc` written as an integer. Parts of `loc` that are not
    in the document (pydantic's names for the members of a union) are stepped over."""
    if not loc:
        return int(value) if document == value and isinstance(document, float) else document
    part, rest = loc[0], loc[1:]
    if isinstance(document, dict) and part in document:
        return document | {part: _with_int_at(document[part], rest, value)}
    if isinstance(document, list) and isinstance(part, int) and 0 <= part < len(document):
        return [*document[:part], _with_int_at(document[part], rest, value), *document[part + 1 :]]
    return _with_int_at(document, rest, value)


_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


def _rfc3339(value: object) -> object:
    """Parsed here, since under a validator pydantic's strict mode takes no text for a datetime.
    The instant must exist in UTC too (`0001-01-01T00:00:00+01:00` is in year 0 there)."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str) and _RFC3339.fullmatch(value):
        parsed = datetime.fromisoformat(value.upper().replace(" ", "T"))
    else:
        raise ValueError("must be an RFC 3339 date-time with an offset, e.g. 2027-01-31T00:00:00Z")
    try:
        parsed.astimezone(UTC)
    except OverflowError:
        raise ValueError(
            "must lie between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z in UTC"
        ) from None
    return parsed


# A `format: date-time` field: RFC 3339 text only, not the Unix timestamps pydantic also reads.
Timestamp = Annotated[AwareDatetime, BeforeValidator(_rfc3339)]


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


IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")


def idempotency_key_header(request: Request) -> str | None:
    """The `Idempotency-Key` header, if sent: 1 to 255 printable ASCII characters."""
    key = request.headers.get("idempotency-key")
    if key is not None and not _IDEMPOTENCY_KEY.fullmatch(key):
        raise ValidationFailed(
            [FieldError(IDEMPOTENCY_KEY_HEADER, "must be 1 to 255 printable ASCII characters")]
        )
    return key
