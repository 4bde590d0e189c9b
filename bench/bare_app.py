"""The baseline: a bare Starlette endpoint returning a fixed JSON body, nothing else."""

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

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
    return JSONResponse(BODY)


app = Starlette(routes=[Route("/bare", fixed, methods=["GET", "POST"])])
