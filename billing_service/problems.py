"""RFC 9457 problem+json rendering and the exception handlers that use it.

One handler on `BillingError` covers the whole family by MRO lookup; Starlette's own HTTP
exceptions are translated too. `RequestMiddleware` applies these handlers and turns anything
unexpected into a bare 500 problem, so no response is ever HTML or a traceback.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import asyncpg
import orjson
import structlog
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route

from billing_service import errors
from billing_service.errors import BillingError

PROBLEM_MEDIA_TYPE = "application/problem+json"

logger = structlog.get_logger(__name__)

_HTTP_STATUS_ERRORS: dict[int, type[BillingError]] = {
    400: errors.MalformedRequest,
    401: errors.Unauthenticated,
    403: errors.Forbidden,
    404: errors.NotFound,
    405: errors.MethodNotAllowed,
    409: errors.Conflict,
    413: errors.PayloadTooLarge,
    415: errors.UnsupportedMediaType,
    503: errors.ServiceUnavailable,
}


def problem_body(error: BillingError, *, instance: str, request_id: str | None) -> bytes:
    body: dict[str, object] = {
        "type": error.type_uri,
        "title": error.title,
        "status": error.status,
        "detail": error.detail or error.title,
        "instance": instance,
        "request_id": request_id,
    }
    body.update(error.extensions())
    return orjson.dumps(body)


def problem_response(error: BillingError, *, instance: str, request_id: str | None) -> Response:
    return Response(
        problem_body(error, instance=instance, request_id=request_id),
        status_code=error.status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=error.headers(),
    )


def _request_id(request: Request) -> str | None:
    value = request.scope.get("request_id")
    return value if isinstance(value, str) else None


async def handle_billing_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BillingError)
    return problem_response(exc, instance=request.url.path, request_id=_request_id(request))


def _allowed_methods(request: Request) -> str:
    """Every method served at this path: Starlette's own `Allow` names only the first route
    that matched the path, and each of our routes serves one method."""
    methods = {
        method
        for route in request.app.router.routes
        if isinstance(route, Route) and route.matches(request.scope)[0] is not Match.NONE
        for method in route.methods or ()
    }
    return ", ".join(sorted(methods))


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    """Starlette raises these for unmatched routes and methods; render them as problems."""
    assert isinstance(exc, HTTPException)
    error_class = _HTTP_STATUS_ERRORS.get(exc.status_code, BillingError)
    error: BillingError
    if error_class is errors.MethodNotAllowed:
        allow = _allowed_methods(request) or (exc.headers or {}).get("Allow", "")
        error = errors.MethodNotAllowed(f"{request.method} is not allowed here.", allow=allow)
    elif error_class is errors.NotFound:
        error = errors.NotFound(f"No route matches {request.url.path}.")
    else:
        error = error_class()
    return problem_response(error, instance=request.url.path, request_id=_request_id(request))


# Losing the database mid-request is an outage, not a bug: callers (and Stripe) should retry.
DATABASE_CONNECTION_ERRORS: tuple[type[Exception], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.AdminShutdownError,
    asyncpg.CannotConnectNowError,
    ConnectionError,
)


async def handle_database_unavailable(request: Request, exc: Exception) -> Response:
    logger.warning("database.unavailable", path=request.url.path, error=type(exc).__name__)
    error = errors.DatabaseUnavailable(
        "The database connection was lost; nothing was saved. Retry the request.", retry_after=2
    )
    return problem_response(error, instance=request.url.path, request_id=_request_id(request))


ExceptionHandler = Callable[[Request, Exception], Awaitable[Response]]


def exception_handlers() -> dict[type[Exception], ExceptionHandler]:
    handlers: dict[type[Exception], ExceptionHandler] = dict.fromkeys(
        DATABASE_CONNECTION_ERRORS, handle_database_unavailable
    )
    return handlers | {
        BillingError: handle_billing_error,
        HTTPException: handle_http_exception,
    }
