"""What outgoing-webhook tests deliver to: real HTTP(S) servers on loopback, DNS answers a test
scripts, the real app built with that resolver, and the real delivery worker."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import uvicorn
from asgi_lifespan import LifespanManager
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from billing_service.app import create_app
from billing_service.config import Settings
from billing_service.outbound import AllowList, OutboundPolicy
from billing_service.outbound_http import WebhookClient
from billing_service.services.outgoing_webhooks import DeliveryWorker
from tests.support import free_port

# The policy of the tests' receivers: loopback listed as allowed, as a developer would.
LOCAL_RECEIVERS = OutboundPolicy(AllowList.parse(["127.0.0.1"]))


@dataclass
class Receiver:
    """A real HTTP server standing in for a calling app's webhook endpoint."""

    url: str
    port: int
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    fail_next: int = 0
    # What every answer is, once set: (status, body).
    answer: tuple[int, bytes] | None = None
    delay_seconds: float = 0.0

    def of_type(self, event_type: str) -> list[tuple[dict[str, str], bytes]]:
        return [(h, b) for h, b in self.received if f'"type":"{event_type}"'.encode() in b]


@asynccontextmanager
async def running_receiver(
    *, certfile: Path | None = None, keyfile: Path | None = None
) -> AsyncIterator[Receiver]:
    """A receiver on 127.0.0.1 (https when given a certificate) until the block ends."""
    port = free_port()
    scheme = "https" if certfile else "http"
    state = Receiver(url=f"{scheme}://127.0.0.1:{port}/hooks", port=port)

    async def hooks(request: Request) -> Response:
        state.received.append((dict(request.headers), await request.body()))
        if state.delay_seconds:
            await asyncio.sleep(state.delay_seconds)
        if state.answer is not None:
            return Response(state.answer[1], status_code=state.answer[0])
        if state.fail_next > 0:
            state.fail_next -= 1
            return Response(status_code=500)
        return Response(status_code=204)

    app = Starlette(routes=[Route("/hooks", hooks, methods=["POST"])])
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_config=None,
        ssl_certfile=str(certfile) if certfile else None,
        ssl_keyfile=str(keyfile) if keyfile else None,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event to wait on
        await asyncio.sleep(0.01)
    try:
        yield state
    finally:
        server.should_exit = True
        await task


class ScriptedResolver:
    """DNS whose answers a test writes: per name, one answer per lookup in turn, the last one
    repeating. Unknown names, and empty answers, do not resolve, as with a real resolver."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self.answers = {name: list(turns) for name, turns in answers.items()}
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        turns = self.answers.get(host.lower().removesuffix("."), [[]])
        answer = turns.pop(0) if len(turns) > 1 else turns[0]
        if not answer:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return answer


@asynccontextmanager
async def app_resolving_with(
    settings: Settings, resolver: ScriptedResolver
) -> AsyncIterator[httpx.AsyncClient]:
    """The real app, lifespan run, asking `resolver` about webhook endpoints."""
    app = create_app(settings, resolver=resolver)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://billing.test") as client:
            yield client


async def deliver_all(
    pool: asyncpg.Pool,
    policy: OutboundPolicy = LOCAL_RECEIVERS,
    *,
    ssl_context: ssl.SSLContext | None = None,
    timeout_seconds: float = 10.0,
) -> int:
    """Run the real delivery worker until nothing is due; how many deliveries it attempted."""
    async with WebhookClient(policy, ssl_context=ssl_context, timeout=timeout_seconds) as client:
        worker = DeliveryWorker(pool, client)
        total = 0
        while sent := await worker.deliver_due():
            total += sent
        return total
