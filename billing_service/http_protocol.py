"""uvicorn's HTTP protocol with the bounds it lacks, so slow or idle clients cannot pile up.

uvicorn closes a connection idle between requests (`timeout_keep_alive`), but sets no deadline
while a request's headers or body arrive (nor on a new connection that sends nothing), its
httptools parser buffers headers without a size limit, and `limit_concurrency` only answers 503
once a request's headers are complete, so a client that never completes them is never counted.
This subclass of the httptools protocol adds, per worker process:

- a header deadline: from accepting the connection, or from the first byte of a kept-alive
  connection's next request, to the end of the headers (`BILLING_HTTP_HEADER_TIMEOUT_SECONDS`);
  then 408 and close;
- a body deadline: from the end of the headers to the end of the body
  (`BILLING_HTTP_BODY_TIMEOUT_SECONDS`); then the connection is closed;
- a header size cap (`BILLING_HTTP_MAX_HEADER_BYTES`, checked per read, so exceeded by at most
  one read of up to 256 KiB before the 431);
- a connection cap checked on accept (`BILLING_HTTP_MAX_CONNECTIONS`): one more is answered 503
  with `Retry-After` and closed at once, so file descriptors stay bounded whatever clients do.

Answers from this layer are problem+json; after one, the server ends its side and discards what
the client still sends for at most `LINGER_SECONDS` before closing, so the answer is read rather
than lost to a connection reset.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass
from typing import Any

import orjson
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from billing_service.config import load_settings
from billing_service.errors import PROBLEM_TYPE_PREFIX

LINGER_SECONDS = 2.0
_STATUS_LINES = {
    408: b"HTTP/1.1 408 Request Timeout\r\n",
    431: b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
    503: b"HTTP/1.1 503 Service Unavailable\r\n",
}


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    header_timeout: float
    body_timeout: float
    max_header_bytes: int
    max_connections: int


@functools.cache
def connection_limits() -> ConnectionLimits:
    """Read once per worker process, from the same environment its app is built from."""
    settings = load_settings()
    return ConnectionLimits(
        header_timeout=settings.http_header_timeout_seconds,
        body_timeout=settings.http_body_timeout_seconds,
        max_header_bytes=settings.http_max_header_bytes,
        max_connections=settings.http_max_connections,
    )


def problem_reply(status: int, slug: str, title: str, detail: str, **headers: str) -> bytes:
    """A whole HTTP/1.1 response carrying a problem+json body, ending the connection."""
    body = orjson.dumps(
        {"type": PROBLEM_TYPE_PREFIX + slug, "title": title, "status": status, "detail": detail}
    )
    lines = [
        _STATUS_LINES[status],
        b"content-type: application/problem+json\r\n",
        b"content-length: %d\r\n" % len(body),
        b"connection: close\r\n",
        *(f"{name.replace('_', '-')}: {value}\r\n".encode() for name, value in headers.items()),
        b"\r\n",
        body,
    ]
    return b"".join(lines)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """`HttpToolsProtocol` plus header and body deadlines, a header size cap and a connection
    cap; set as uvicorn's `http` by `billing-service serve`."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = connection_limits()
        self._deadline: asyncio.TimerHandle | None = None
        self._awaiting_headers = True  # the next thing the client owes is a request's headers
        self._reading_body = False
        self._header_bytes = 0  # of the request whose headers are awaited
        self._headers_seen = 0
        self._lingering = False  # answered and ending: what arrives now is discarded

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            detail = "The server has too many open connections; try again shortly."
            self._reply_and_close(
                problem_reply(503, "service-unavailable", "Service unavailable", detail,
                              retry_after="1")
            )  # fmt: skip
            return
        self._arm(self.limits.header_timeout, self._headers_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return
        awaited, seen = self._awaiting_headers, self._headers_seen
        super().data_received(data)
        if self.transport.is_closing():
            return
        if awaited and self._awaiting_headers and self._headers_seen == seen:
            self._header_bytes += len(data)  # no headers ended in this read: all of it was header
            if self._header_bytes > self.limits.max_header_bytes:
                detail = f"Request headers must fit in {self.limits.max_header_bytes} bytes."
                self._reply_and_close(
                    problem_reply(431, "headers-too-large", "Request headers too large", detail)
                )
                return
        if self._deadline is None:
            if self._awaiting_headers and self._header_bytes:
                self._arm(self.limits.header_timeout, self._headers_timed_out)
            elif self._reading_body:
                self._arm(self.limits.body_timeout, self._body_timed_out)

    def on_headers_complete(self) -> None:
        if self._deadline is not None:
            self._disarm()
        self._awaiting_headers, self._reading_body = False, True
        self._header_bytes, self._headers_seen = 0, self._headers_seen + 1
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        if self._deadline is not None:
            self._disarm()
        self._awaiting_headers, self._reading_body = True, False
        super().on_message_complete()

    def _headers_timed_out(self) -> None:
        self._deadline = None
        if self._header_bytes == 0 and self._headers_seen == 0:
            self.transport.close()  # connected and said nothing: nobody to answer
            return
        detail = f"Request headers must arrive within {self.limits.header_timeout:g} seconds."
        self._reply_and_close(problem_reply(408, "request-timeout", "Request timeout", detail))

    def _body_timed_out(self) -> None:
        self._deadline = None
        self.transport.close()  # the app sees the client disconnect

    def _reply_and_close(self, reply: bytes) -> None:
        """Answer, end our side, and close once the client has read it: data it still sends
        is discarded for a moment instead of resetting the connection (which could destroy the
        answer before the client reads it), as nginx's lingering close does."""
        self._disarm()
        if self.transport.is_closing():
            return
        self.transport.write(reply)
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self._lingering = True
        self._deadline = self.loop.call_later(LINGER_SECONDS, self.transport.close)

    def _arm(self, seconds: float, callback: Any) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
