"""Pure ASGI middleware: request id, one summary log line and metrics per request, body limit."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping

import structlog
from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from billing_service.errors import BillingError, MalformedRequest, PayloadTooLarge
from billing_service.metrics import Metrics
from billing_service.problems import problem_response

REQUEST_ID_HEADER = b"x-request-id"
CLIENT_CLOSED_REQUEST = 499
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

logger = structlog.get_logger("billing_service.http")


def request_id_from(raw_headers: Iterable[tuple[bytes, bytes]]) -> str:
    """Accept a caller's well-formed request id so traces join up; otherwise mint one.

    Reads the ASGI header list (names arrive lower-cased) directly: a `Headers` mapping
    costs several percent of a usage check."""
    for name, value in raw_headers:
        if name == REQUEST_ID_HEADER:
            candidate = value.decode("latin-1")
            if _VALID_REQUEST_ID.fullmatch(candidate):
                return candidate
            break
    return secrets.token_hex(16)


class RequestContextMiddleware:
    """Tags each request with an id, echoes it, and logs and measures the request once."""

    def __init__(self, app: ASGIApp, metrics: Metrics, route_of: Callable[[Scope], str]) -> None:
        self.app = app
        self.metrics = metrics
        self.route_of = route_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        request_id = request_id_from(scope["headers"])
        scope["request_id"] = request_id
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status: int | None = None  # set once the response has started

        async def send_with_request_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).append("X-Request-ID", request_id)
            await send(message)

        try:
            await self.app(scope, receive, send_with_request_id)
        except ClientDisconnect:
            # The client left mid-request (or was cut off for sending its body too slowly):
            # nobody to answer, and not our failure. Recorded as nginx's 499.
            logger.info("http.client_disconnected", path=scope["path"])
            status = status or CLIENT_CLOSED_REQUEST
        except Exception:
            # The last line of defence: log the failure, tell the caller nothing internal.
            logger.exception("http.unhandled_error", path=scope["path"])
            if status is None:
                response = problem_response(
                    BillingError("An unexpected error occurred; it has been logged."),
                    instance=scope["path"],
                    request_id=request_id,
                )
                await response(scope, receive, send_with_request_id)
        finally:
            elapsed = time.perf_counter() - started
            route = self.route_of(scope)
            final_status = 500 if status is None else status
            self.metrics.observe_request(scope["method"], route, final_status, elapsed)
            logger.info(
                "http.request",
                method=scope["method"],
                path=scope["path"],
                route=route,
                status=final_status,
                duration_ms=round(elapsed * 1000, 2),
            )
            structlog.contextvars.clear_contextvars()


def route_template_lookup(templates: Mapping[object, str]) -> Callable[[Scope], str]:
    """Label metrics with the route template, never the raw path, to bound cardinality."""

    def route_of(scope: Scope) -> str:
        return templates.get(scope.get("endpoint"), "unmatched")

    return route_of


class BodyLimitMiddleware:
    """Refuses bodies over the limit (at once by Content-Length, or while streaming if
    chunked), and URLs carrying NUL characters."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        if "\x00" in scope["path"] or b"%00" in scope.get("query_string", b""):
            # PostgreSQL cannot store NUL; refuse it at the edge rather than fail deep inside.
            response = problem_response(
                MalformedRequest("The URL must not contain NUL characters."),
                instance=scope["path"],
                request_id=scope.get("request_id"),
            )
            await response(scope, receive, send)
            return

        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            response = problem_response(
                self._error(), instance=scope["path"], request_id=scope.get("request_id")
            )
            await response(scope, receive, send)
            return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._error()
            return message

        await self.app(scope, limited_receive, send)

    def _error(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"The request body exceeds {self.max_bytes} bytes.")
