"""The fake Stripe served over real HTTP on 127.0.0.1, with a switch for how Stripe fails.

The service under test talks to it through its ordinary Stripe client (`BILLING_STRIPE_API_BASE`),
so timeouts, retries and broken connections happen on real sockets. Requests are answered by
`FakeStripe`'s routes unless a fault is set: answer slowly, answer 500 or 429, or reset the
connection (an RST, as a crashed proxy would). As Stripe does, a request whose idempotency key
is still being handled for an earlier request is answered 409 `idempotency_key_in_use`, and a
500 is kept under its key and replayed to every later request with that key.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from enum import Enum

import asyncpg
import h11
import httpx
import respx

from billing_service.config import Settings
from billing_service.stripe_gateway import StripeGateway
from tests.services.test_catalog import apply, example
from tests.stripe_fakes import FakeStripe, stripe_error


class Fault(Enum):
    NONE = "none"
    SLOW = "slow"
    SERVER_ERROR = "server-error"
    RATE_LIMITED = "rate-limited"
    RESET = "reset"


@dataclass(frozen=True)
class Attempt:
    """One request as it reached the server, faulty or not (retries show up as more)."""

    method: str
    path: str
    idempotency_key: str | None


@dataclass
class StripeServer:
    fake: FakeStripe
    router: respx.MockRouter
    fault: Fault = Fault.NONE
    fault_path: str = "/v1/"  # only requests whose path starts with this suffer the fault
    delay_seconds: float = 0.0
    attempts: list[Attempt] = field(default_factory=list)
    keys_in_flight: set[str] = field(default_factory=set)
    url: str = ""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while (received := await _read_request(conn, reader)) is not None:
                request, body = received
                if not await self._answer(conn, writer, request, body):
                    return
                if conn.our_state is h11.MUST_CLOSE:
                    break
                conn.start_next_cycle()
        except (ConnectionError, h11.ProtocolError):
            pass  # the client gave up (timed out) and closed its end
        finally:
            writer.close()

    async def _answer(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, request: h11.Request, body: bytes
    ) -> bool:
        """Write the response; False when the connection was reset instead."""
        headers = {name.decode(): value.decode() for name, value in request.headers}
        target = request.target.decode()
        path = target.split("?")[0]
        key = headers.get("idempotency-key")
        self.attempts.append(Attempt(request.method.decode(), path, key))
        fault = self.fault if path.startswith(self.fault_path) else Fault.NONE
        if fault is Fault.RESET:
            _reset(writer)
            return False
        if key is not None and key in self.keys_in_flight:
            # Stripe refuses a request while another with the same key is still being handled.
            response = stripe_error(409, "invalid_request_error", "idempotency_key_in_use")
        else:
            if key is not None:
                self.keys_in_flight.add(key)
            try:
                response = await self._respond(fault, request, target, headers, body)
            finally:
                self.keys_in_flight.discard(key or "")
        content = response.content
        writer.write(conn.send(h11.Response(status_code=response.status_code, headers=[
            ("content-type", "application/json"),
            ("content-length", str(len(content))),
            ("request-id", f"req_fake{len(self.attempts)}"),
        ])))  # fmt: skip
        writer.write(conn.send(h11.Data(data=content)))
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()
        return True

    async def _respond(
        self,
        fault: Fault,
        request: h11.Request,
        target: str,
        headers: dict[str, str],
        body: bytes,
    ) -> httpx.Response:
        if fault is Fault.SLOW:
            await asyncio.sleep(self.delay_seconds)
        if fault is Fault.SERVER_ERROR:
            # A 500 from a request that started to run: Stripe replays it for the same key.
            failure = stripe_error(500, "api_error")
            self.fake.keep_failure(headers.get("idempotency-key"), failure)
            return failure
        if fault is Fault.RATE_LIMITED:
            return stripe_error(429, "invalid_request_error", "rate_limit")
        return self.router.handler(
            httpx.Request(
                request.method.decode(), f"{self.url}{target}", headers=headers, content=body
            )
        )


async def _read_request(
    conn: h11.Connection, reader: asyncio.StreamReader
) -> tuple[h11.Request, bytes] | None:
    """The next request on the connection and its body, or None once the client closed it."""
    request: h11.Request | None = None
    body = b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(65_536))
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert request is not None
            return request, body
        elif isinstance(event, h11.ConnectionClosed):
            return None


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with SO_LINGER 0, so the peer gets an RST instead of an orderly close."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def sync_example_catalog(pool: asyncpg.Pool, settings: Settings) -> None:
    """The example catalog, applied and pushed to the Stripe that `settings` point at."""
    gateway = StripeGateway.from_settings(settings)
    assert gateway is not None
    try:
        await apply(pool, gateway, example())
    finally:
        await gateway.close()


@asynccontextmanager
async def stripe_server() -> AsyncIterator[StripeServer]:
    """A running fake Stripe; `server.url` is its API base."""
    router = respx.MockRouter(assert_all_mocked=True, assert_all_called=False)
    server = StripeServer(fake=FakeStripe(router), router=router)
    connections: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        connections.add(task)
        try:
            await server._serve(reader, writer)
        except asyncio.CancelledError:
            pass  # the server is shutting down
        finally:
            connections.discard(task)

    listener = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    server.url = f"http://127.0.0.1:{port}"
    try:
        yield server
    finally:
        listener.close()
        for task in list(connections):
            task.cancel()
        for task in list(connections):
            with suppress(asyncio.CancelledError):
                await task
        await listener.wait_closed()
