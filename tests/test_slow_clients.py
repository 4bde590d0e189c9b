"""Slow and idle clients against a real `billing-service serve`: each is cut off within its
deadline, and however many there are, the service keeps answering and its connections stay
bounded; a client cut off mid-body is no server error."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import time
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager
from starlette.types import Message

from billing_service.app import create_app
from billing_service.config import Settings
from billing_service.services.api_keys import Scope
from tests.conftest import issue_key
from tests.routes.test_checkout import bearer
from tests.support import free_port, start_service

HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 2.0
MAX_CONNECTIONS = 250
MAX_HEADER_BYTES = 8192
# Generous: the deadline, plus time for a loaded machine to notice and for the close to arrive.
SLACK = 4.0


@pytest.fixture(scope="module")
async def service(database_url: str) -> AsyncIterator[tuple[str, int]]:
    """One `serve` process with short deadlines; yields its host and port."""
    port = free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("BILLING_")}
    env |= {
        "BILLING_DATABASE_URL": database_url,
        "BILLING_ENV": "test",
        "BILLING_PORT": str(port),
        "BILLING_LOG_LEVEL": "warning",
        "BILLING_WORKER_ENABLED": "false",
        "BILLING_HTTP_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
        "BILLING_HTTP_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
        "BILLING_HTTP_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
        "BILLING_HTTP_MAX_HEADER_BYTES": str(MAX_HEADER_BYTES),
    }
    process = await start_service(env, f"http://127.0.0.1:{port}")
    try:
        yield "127.0.0.1", port
    finally:
        process.terminate()
        await process.wait()


async def _until_closed(reader: asyncio.StreamReader, bound: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and when it closed; fails
    if it is still open after `bound` seconds."""
    started, received = time.monotonic(), b""
    async with asyncio.timeout(bound):
        while chunk := await reader.read(4096):
            received += chunk
    return received, time.monotonic() - started


async def _drip_headers(host: str, port: int, bound: float) -> tuple[bytes, float]:
    """A client that sends one header line a second and never ends its headers."""
    reader, writer = await asyncio.open_connection(host, port)
    started = time.monotonic()

    async def drip() -> None:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: billing.test\r\n")
        for n in range(1000):
            await asyncio.sleep(1)
            writer.write(b"X-Drip-%d: still here\r\n" % n)
            with contextlib.suppress(ConnectionError):
                await writer.drain()

    dripping = asyncio.create_task(drip())
    try:
        received, _ = await _until_closed(reader, bound)
    finally:
        dripping.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await dripping
        writer.close()
    return received, time.monotonic() - started


async def test_a_client_dripping_headers_is_cut_off_with_408_within_the_header_timeout(
    service: tuple[str, int],
) -> None:
    """A header line every second, never finishing: 408 and closed within the deadline."""
    received, took = await _drip_headers(*service, bound=HEADER_TIMEOUT + SLACK)
    assert received.startswith(b"HTTP/1.1 408 ")
    assert b"urn:billing-service:problem:request-timeout" in received
    assert took >= HEADER_TIMEOUT - 0.5


async def test_200_dripping_clients_are_all_cut_off_and_never_stop_normal_requests(
    service: tuple[str, int],
) -> None:
    """While 200 clients drip headers, a normal request is answered; all 200 are closed
    within the deadline."""
    host, port = service
    drippers = [
        asyncio.create_task(_drip_headers(host, port, bound=HEADER_TIMEOUT + SLACK))
        for _ in range(200)
    ]
    await asyncio.sleep(HEADER_TIMEOUT / 2)
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=5) as http:
        assert (await http.get("/healthz")).status_code == 200
    results = await asyncio.gather(*drippers)
    assert all(received.startswith(b"HTTP/1.1 408 ") for received, _ in results)


async def test_a_silent_connection_is_closed_within_the_header_timeout(
    service: tuple[str, int],
) -> None:
    """A connection that never sends a byte is closed, without a response."""
    reader, writer = await asyncio.open_connection(*service)
    try:
        received, took = await _until_closed(reader, HEADER_TIMEOUT + SLACK)
    finally:
        writer.close()
    assert received == b""
    assert took >= HEADER_TIMEOUT - 0.5


async def test_a_body_sent_too_slowly_is_cut_off_within_the_body_timeout(
    service: tuple[str, int], pool: asyncpg.Pool
) -> None:
    """Headers promise 1000 bytes of body to a route that reads it, 10 arrive: the connection
    is closed within the deadline, and the service answers the next caller."""
    key = await issue_key(pool, Scope.BILLING)
    reader, writer = await asyncio.open_connection(*service)
    try:
        writer.write(
            b"POST /v1/usage/track HTTP/1.1\r\nHost: billing.test\r\n"
            b"Authorization: Bearer " + key.encode() + b"\r\n"
            b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"a": 1, '
        )
        await writer.drain()
        _, took = await _until_closed(reader, BODY_TIMEOUT + SLACK)
    finally:
        writer.close()
    assert took >= BODY_TIMEOUT - 0.5
    host, port = service
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=5) as http:
        assert (await http.get("/v1/plans", headers=bearer(key))).status_code == 200


async def test_oversized_headers_get_431_and_the_connection_closed(
    service: tuple[str, int],
) -> None:
    """Headers past the cap, still unfinished: 431 at once, without waiting for the end."""
    reader, writer = await asyncio.open_connection(*service)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: billing.test\r\n")
        writer.write(b"X-Padding: " + b"a" * (MAX_HEADER_BYTES + 1024))
        await writer.drain()
        received, took = await _until_closed(reader, SLACK)
    finally:
        writer.close()
    assert received.startswith(b"HTTP/1.1 431 ")
    assert took < HEADER_TIMEOUT


async def test_connections_past_the_cap_are_refused_at_once_and_the_service_recovers(
    service: tuple[str, int],
) -> None:
    """With the cap's worth of idle connections open, the next ones get 503 immediately; once
    the idle ones time out, requests are served again."""
    host, port = service
    idle = [await asyncio.open_connection(host, port) for _ in range(MAX_CONNECTIONS)]
    try:
        extra = [await asyncio.open_connection(host, port) for _ in range(20)]
        refusals = await asyncio.gather(*(_until_closed(reader, SLACK) for reader, _ in extra))
        for _, writer in extra:
            writer.close()
        assert all(received.startswith(b"HTTP/1.1 503 ") for received, _ in refusals)
        assert all(b"retry-after: 1" in received for received, _ in refusals)
        assert all(took < HEADER_TIMEOUT for _, took in refusals)
        await asyncio.gather(*(_until_closed(reader, HEADER_TIMEOUT + SLACK) for reader, _ in idle))
    finally:
        for _, writer in idle:
            writer.close()
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=5) as http:
        assert (await http.get("/healthz")).status_code == 200


async def test_a_client_gone_mid_body_is_logged_as_499_not_as_a_failure(
    settings: Settings, pool: asyncpg.Pool, captured_logs: io.StringIO
) -> None:
    """A client that disconnects (or is cut off) while its body is read is no server error:
    one info line, status 499 in the request line and the metrics, no 500."""
    key = await issue_key(pool, Scope.BILLING)
    app = create_app(settings.model_copy(update={"worker_enabled": False}))
    messages: list[Message] = [
        {"type": "http.request", "body": b'{"customer_id": ', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        return messages.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    async with LifespanManager(app) as manager:
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": "/v1/usage/track", "raw_path": b"/v1/usage/track",
            "query_string": b"", "root_path": "", "client": ("192.0.2.1", 40000),
            "server": ("billing.test", 80),
            "headers": [
                (b"authorization", b"Bearer " + key.encode()),
                (b"content-type", b"application/json"),
                (b"content-length", b"100"),
            ],
        }  # fmt: skip
        await manager.app(scope, receive, send)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://billing.test"
        ) as http:
            metrics = (await http.get("/metrics")).text
    assert sent == []
    lines = [json.loads(line) for line in captured_logs.getvalue().splitlines()]
    assert not [line for line in lines if line["level"] == "error"]
    assert [line["event"] for line in lines if line.get("status") == 499] == ["http.request"]
    assert "http.client_disconnected" in [line["event"] for line in lines]
    counted = 'billing_http_requests_total{method="POST",route="/v1/usage/track",status="499"} 1.0'
    assert counted in metrics
