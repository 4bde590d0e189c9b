"""What the Python client's tests call: a live `billing-service serve` (Stripe answered by the fake
Stripe server, the example catalog applied and synced), real keys, and a proxy that fails on cue."""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import h11
import httpx
import pytest
from billing_client import AsyncBillingClient, BillingClient
from pydantic import SecretStr

from billing_service.config import Settings
from billing_service.services.api_keys import Scope
from tests.conftest import issue_key
from tests.live_service import LiveService
from tests.live_service import live_service as serve_live
from tests.stripe_server import (
    _read_request,
    _reset,
    sync_example_catalog,
)

AnyClient = BillingClient | AsyncBillingClient


@pytest.fixture(scope="module")
async def live_service(database_url: str) -> AsyncIterator[LiveService]:
    """One `billing-service serve` for the module; tables are emptied between tests, so no
    background worker runs in it."""
    async with serve_live(database_url) as service:
        yield service


async def apply_example_catalog(
    service: LiveService, settings: Settings, pool: asyncpg.Pool
) -> None:
    """The example catalog (free: 5 ai_calls a month; pro; credit packs), synced to the fake
    Stripe the service talks to."""
    await sync_example_catalog(
        pool,
        settings.model_copy(
            update={
                "stripe_secret_key": SecretStr("sk_test_fake"),
                "stripe_api_base": service.stripe.url,
            }
        ),
    )


@dataclass(frozen=True)
class Keys:
    usage: str
    billing: str
    admin: str


@pytest.fixture
async def keys(live_service: LiveService, settings: Settings, pool: asyncpg.Pool) -> Keys:
    """The example catalog live, and a key of each scope."""
    await apply_example_catalog(live_service, settings, pool)
    return Keys(
        usage=await issue_key(pool, Scope.USAGE),
        billing=await issue_key(pool, Scope.BILLING),
        admin=await issue_key(pool, Scope.ADMIN),
    )


async def run(method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a client method, sync or async alike. A blocking call runs in a thread, so the fake
    Stripe and the proxy (on this event loop) keep answering meanwhile."""
    if inspect.iscoroutinefunction(method):
        return await method(*args, **kwargs)
    return await asyncio.to_thread(functools.partial(method, *args, **kwargs))


async def close(client: AnyClient) -> None:
    if isinstance(client, AsyncBillingClient):
        await client.aclose()
    else:
        client.close()


Factory = Callable[..., AnyClient]


@pytest.fixture(params=["sync", "async"])
async def make_client(request: pytest.FixtureRequest) -> AsyncIterator[Factory]:
    """Builds `BillingClient`s or `AsyncBillingClient`s (the test runs once with each), and
    closes every one it built at the end."""
    cls = BillingClient if request.param == "sync" else AsyncBillingClient
    made: list[AnyClient] = []

    def make(base_url: str, api_key: str, **options: Any) -> AnyClient:
        made.append(cls(base_url, api_key, **options))
        return made[-1]

    yield make
    for client in made:
        await close(client)


@dataclass(frozen=True)
class Answer:
    """Answer with this status and `Retry-After` instead of forwarding."""

    status: int
    retry_after: str | None = None


@dataclass(frozen=True)
class Drop:
    """Reset the connection, before forwarding the request or after the service answered it."""

    after_forwarding: bool


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


FORWARDED = ("authorization", "content-type", "idempotency-key", "x-request-id", "user-agent")
PROBLEMS = {
    429: ("rate-limited", "Too many requests"),
    503: ("service-unavailable", "Service unavailable"),
}


@dataclass
class FaultyProxy:
    """A real HTTP proxy to the service that fails the next requests as scripted, then forwards."""

    upstream: str
    url: str = ""
    script: list[Answer | Drop] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    http: httpx.AsyncClient = field(default_factory=httpx.AsyncClient)

    def to(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.path == path]

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
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
            pass
        finally:
            writer.close()

    async def _answer(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, request: h11.Request, body: bytes
    ) -> bool:
        headers = {name.decode().lower(): value.decode() for name, value in request.headers}
        target = request.target.decode()
        method = request.method.decode()
        self.seen.append(Seen(method, target.split("?")[0], headers, body))
        fault = self.script.pop(0) if self.script else None
        if isinstance(fault, Drop) and not fault.after_forwarding:
            _reset(writer)
            return False
        if isinstance(fault, Answer):
            slug, title = PROBLEMS[fault.status]
            status = fault.status
            content = json.dumps({
                "type": f"urn:billing-service:problem:{slug}", "title": title, "status": status,
                "detail": "Injected by the test proxy.", "instance": target,
                "request_id": f"req_proxy_{len(self.seen)}",
            }).encode()  # fmt: skip
            out = [("content-type", "application/problem+json")]
            if fault.retry_after is not None:
                out.append(("retry-after", fault.retry_after))
        else:
            response = await self.http.request(
                method, self.upstream + target, content=body,
                headers={k: v for k, v in headers.items() if k in FORWARDED},
            )  # fmt: skip
            if isinstance(fault, Drop):
                _reset(writer)  # the service did the work; the client never hears of it
                return False
            status, content = response.status_code, response.content
            out = [
                (name, value)
                for name, value in response.headers.items()
                if name in ("content-type", "x-request-id", "retry-after")
            ]
        out.append(("content-length", str(len(content))))
        writer.write(conn.send(h11.Response(status_code=status, headers=out)))
        writer.write(conn.send(h11.Data(data=content)))
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()
        return True


@pytest.fixture
async def proxy(live_service: LiveService) -> AsyncIterator[FaultyProxy]:
    """A `FaultyProxy` in front of the live service on a port of its own."""
    state = FaultyProxy(upstream=live_service.base)
    connections: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        connections.add(task)
        try:
            await state.serve(reader, writer)
        except asyncio.CancelledError:
            pass
        finally:
            connections.discard(task)

    listener = await asyncio.start_server(serve, "127.0.0.1", 0)
    state.url = f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}"
    try:
        yield state
    finally:
        listener.close()
        for task in list(connections):
            task.cancel()
        await asyncio.gather(*connections, return_exceptions=True)
        await listener.wait_closed()
        await state.http.aclose()
