"""The framework floors: a fixed JSON body the size of a usage decision, with nothing else.

A  (`app`): bare Starlette, one route returning `JSONResponse(BODY)`.
A0 (`raw`): the same body from a raw ASGI callable, serialised the same way per request; the
gap between A0 and A is what Starlette itself costs.
"""

from __future__ import annotations

import json

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

BODY = {
    "allowed": True,
    "feature": "ai_calls",
    "used": 1,
    "limit": 500,
    "remaining": 499,
    "soft_limit_reached": False,
    "resets_at": "2027-01-01T00:00:00+00:00",
}


async def fixed(request: Request) -> JSONResponse:
    """A: the body through Starlette's routing and JSONResponse."""
    return JSONResponse(BODY)


app = Starlette(routes=[Route("/bare", fixed, methods=["GET", "POST"])])


async def raw(scope: Scope, receive: Receive, send: Send) -> None:
    """A0: the body straight onto the ASGI `send`, for any path; lifespan acknowledged."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    body = json.dumps(
        BODY, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-length", str(len(body)).encode()),
                (b"content-type", b"application/json"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
