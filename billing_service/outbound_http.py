"""The HTTP client of outgoing webhooks: it connects only to addresses the policy has checked.

httpcore asks its network backend to open every TCP connection with the URL's host name. Our
backend resolves that name once through the policy, checks every answer, and connects to those
very addresses, so the name is never looked up a second time. TLS still sends the URL's host
name (SNI) and verifies the certificate for it, and the `Host` header names it too. No
connection is kept alive (each request resolves and checks again), no proxy from the
environment is used, redirects are never followed, and the response body is never read.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Self

import httpcore
import httpx

from billing_service.outbound import DestinationRefused, OutboundPolicy

DEFAULT_TIMEOUT_SECONDS = 10.0


class DeliveryFailed(Exception):
    """A request that got no HTTP answer. `summary` is a fixed phrase safe to show any caller
    ("address not allowed", "connection failed", "timed out"); `reason` is for operators."""

    def __init__(self, summary: str, reason: str) -> None:
        super().__init__(summary)
        self.summary = summary
        self.reason = reason


class _CheckedBackend(httpcore.AsyncNetworkBackend):
    """Opens TCP connections only to addresses the policy resolved and allowed."""

    def __init__(self, policy: OutboundPolicy) -> None:
        self._policy = policy
        self._sockets = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Resolve `host` once through the policy, then connect to the first checked address
        that answers; a refused address raises DestinationRefused before any connection."""
        try:
            async with asyncio.timeout(timeout):
                addresses = await self._policy.checked_addresses(host, port)
        except TimeoutError:
            raise httpcore.ConnectTimeout("name resolution timed out") from None
        except (OSError, ValueError) as exc:
            raise httpcore.ConnectError(f"name resolution failed: {exc}") from None
        failure: httpcore.ConnectError | None = None
        for address in addresses:
            try:
                return await self._sockets.connect_tcp(
                    str(address),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except httpcore.ConnectError as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Never: a webhook goes over TCP to a checked address."""
        raise DestinationRefused("unix sockets are not a webhook destination")

    async def sleep(self, seconds: float) -> None:
        """httpcore's retry pause, from the socket backend."""
        await self._sockets.sleep(seconds)


class WebhookClient:
    """POSTs to endpoint URLs through the policy and reports only the status code."""

    def __init__(
        self,
        policy: OutboundPolicy,
        *,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        max_connections: int = 20,
    ) -> None:
        self.policy = policy
        self.timeout = timeout
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context or httpx.create_ssl_context(),
            max_connections=max_connections,
            max_keepalive_connections=0,
            network_backend=_CheckedBackend(policy),
        )

    async def post(self, url: str, *, content: bytes, headers: dict[str, str]) -> int:
        """The status code of the answer, or DeliveryFailed. The whole exchange, from name
        resolution to the status line, must end within the timeout."""
        try:
            target = self.policy.check_url(url)
        except DestinationRefused as exc:
            raise DeliveryFailed("address not allowed", str(exc)) from None
        request_headers = [
            (b"Host", target.netloc),
            (b"User-Agent", b"billing-service"),
            *((name.encode(), value.encode()) for name, value in headers.items()),
        ]
        phase_timeouts = dict.fromkeys(("connect", "read", "write", "pool"), self.timeout)
        try:
            async with asyncio.timeout(self.timeout):
                async with self._pool.stream(
                    "POST",
                    httpcore.URL(
                        scheme=target.raw_scheme,
                        host=target.raw_host,
                        port=target.port,
                        target=target.raw_path,
                    ),
                    headers=request_headers,
                    content=content,
                    extensions={"timeout": phase_timeouts},
                ) as response:
                    return response.status
        except DestinationRefused as exc:
            raise DeliveryFailed("address not allowed", str(exc)) from None
        except (TimeoutError, httpcore.TimeoutException) as exc:
            raise DeliveryFailed("timed out", type(exc).__name__) from None
        except (
            httpcore.NetworkError,
            httpcore.ProtocolError,
            httpcore.UnsupportedProtocol,
            OSError,
        ) as exc:
            raise DeliveryFailed("connection failed", type(exc).__name__) from None

    async def aclose(self) -> None:
        """Close the connection pool (the service's shutdown)."""
        await self._pool.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()
