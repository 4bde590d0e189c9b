"""The one pure-ASGI middleware every request passes: request id, body limit, exception
handlers and the last-resort 500, and one summary log line and metrics per request.

One layer instead of a stack (Starlette's server-error and exception middleware, ours, and an
exception layer around each endpoint): each layer costs a call, a `send` wrapper and a closure
per request, which on a cheap route such as `/healthz` was most of the service's own time.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Mapping

import structlog
from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from billing_service import logs
from billing_service.cors import RESPONSE_HEADERS
from billing_service.errors import BillingError, MalformedRequest, PayloadTooLarge
from billing_service.metrics import Metrics
from billing_service.problems import ExceptionHandler, problem_response

REQUEST_ID_HEADER = b"x-request-id"
CLIENT_CLOSED_REQUEST = 499
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Methods whose requests carry no body unless a header announces one.
_BODILESS_METHODS = frozenset({"GET", "HEAD"})

logger = structlog.get_logger("billing_service.http")


_minted: list[str] = []
os.register_at_fork(after_in_child=_minted.clear)  # a forked child draws its own


def mint_request_id() -> str:
    """128 random bits as 32 hex digits, like `secrets.token_hex(16)`, but drawn from one
    `os.urandom` call per 256 ids instead of a system call per request."""
    if not _minted:
        digits = os.urandom(16 * 256).hex()
        _minted.extend(digits[start : start + 32] for start in range(0, len(digits), 32))
    return _minted.pop()


def _accepted_request_id(value: bytes) -> str:
    candidate = value.decode("latin-1")
    return candidate if _VALID_REQUEST_ID.fullmatch(candidate) else mint_request_id()


def _read_headers(scope: Scope) -> tuple[str, bytes | None, bool]:
    """The request id, the declared Content-Length and whether a body may follow, in one pass
    over the raw header list."""
    request_id: str | None = None
    declared: bytes | None = None
    may_have_body = scope["method"] not in _BODILESS_METHODS
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER:
            if request_id is None:
                request_id = _accepted_request_id(value)
        elif name == b"content-length":
            declared = value if declared is None else declared
            may_have_body = True
        elif name == b"transfer-encoding":
            may_have_body = True
    return request_id or mint_request_id(), declared, may_have_body


class RequestMiddleware:
    """Tags each request with an id and echoes it; refuses NUL in the URL and bodies over the
    limit (at once by Content-Length, or while streaming if chunked); answers an exception with
    the handler registered for its class (looked up along the MRO) and anything else with a bare
    500 problem; logs and measures the request once."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics,
        route_of: Callable[[Scope], str],
        max_bytes: int,
        handlers: Mapping[type[Exception], ExceptionHandler],
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.route_of = route_of
        self.max_bytes = max_bytes
        self.handlers = handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = time.perf_counter()
        request_id, declared, may_have_body = _read_headers(scope)
        scope["request_id"] = request_id
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        echoed = (b"x-request-id", request_id.encode("latin-1"))
        status: int | None = None  # set once the response has started

        async def send_with_request_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                # with any headers an inner layer set for every answer (CORS, on error answers too)
                message["headers"] = [
                    *message.get("headers", ()),
                    echoed,
                    *scope.get(RESPONSE_HEADERS, ()),
                ]
            await send(message)

        try:
            try:
                refusal = self._refusal(scope, declared)
                if refusal is not None:
                    await _problem(scope, receive, send_with_request_id, refusal, request_id)
                    return
                if may_have_body:
                    receive = self._limited(receive)
                await self.app(scope, receive, send_with_request_id)
            except Exception as exc:
                handler = self._handler_for(exc)
                if handler is None or status is not None:
                    raise
                response = await handler(Request(scope, receive), exc)
                exc.__traceback__ = None  # an exception kept for reuse gathers no tracebacks
                await response(scope, receive, send_with_request_id)
        except ClientDisconnect:
            # The client left mid-request (or was cut off for sending its body too slowly):
            # nobody to answer, and not our failure. Recorded as nginx's 499.
            logger.info("http.client_disconnected", path=scope["path"])
            status = status or CLIENT_CLOSED_REQUEST
        except Exception:
            # The last line of defence: log the failure, tell the caller nothing internal.
            logger.exception("http.unhandled_error", path=scope["path"])
            if status is None:
                unexpected = BillingError("An unexpected error occurred; it has been logged.")
                await _problem(scope, receive, send_with_request_id, unexpected, request_id)
        finally:
            self._record(scope, 500 if status is None else status, time.perf_counter() - started)

    def _record(self, scope: Scope, status: int, elapsed: float) -> None:
        """The request's metrics and summary line, then a clean logging context."""
        route = self.route_of(scope)
        self.metrics.observe_request(scope["method"], route, status, elapsed)
        logs.request_line(scope["method"], scope["path"], route, status, elapsed)
        structlog.contextvars.clear_contextvars()

    def _handler_for(self, exc: Exception) -> ExceptionHandler | None:
        for cls in type(exc).__mro__:
            if cls in self.handlers:
                return self.handlers[cls]
        return None

    def _refusal(self, scope: Scope, declared: bytes | None) -> BillingError | None:
        """What refuses the request before the app sees it, if anything."""
        if "\x00" in scope["path"] or b"%00" in scope.get("query_string", b""):
            # PostgreSQL cannot store NUL; refuse it at the edge rather than fail deep inside.
            return MalformedRequest("The URL must not contain NUL characters.")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return self._too_large()
        return None

    def _limited(self, receive: Receive) -> Receive:
        """`receive`, raising 413 once the body streamed in passes the limit."""
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._too_large()
            return message

        return limited_receive

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"The request body exceeds {self.max_bytes} bytes.")


async def _problem(
    scope: Scope, receive: Receive, send: Send, error: BillingError, request_id: str
) -> None:
    response = problem_response(error, instance=scope["path"], request_id=request_id)
    await response(scope, receive, send)


def route_template_lookup(templates: Mapping[object, str]) -> Callable[[Scope], str]:
    """Label metrics with the route template, never the raw path, to bound cardinality."""

    def route_of(scope: Scope) -> str:
        return templates.get(scope.get("endpoint"), "unmatched")

    return route_of
