"""Admin routes for API keys: mint, list and revoke the credentials of calling services."""

from __future__ import annotations

import uuid

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from billing_service.auth import requires
from billing_service.db.api_keys import ApiKey
from billing_service.errors import NotFound
from billing_service.routes._http import JSONResponse, Timestamp, parse_json
from billing_service.routes._pagination import after, page_body, page_request, time_cursor
from billing_service.services import api_keys
from billing_service.services.api_keys import Scope
from billing_service.state import app_state, lag_tolerant


class CreateApiKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    scopes: list[Scope] = Field(min_length=1)
    expires_at: Timestamp | None = None


def serialize(key: ApiKey) -> dict[str, object]:
    return {
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "scopes": sorted(key.scopes),
        "expires_at": key.expires_at,
        "revoked_at": key.revoked_at,
        "last_used_at": key.last_used_at,
        "created_at": key.created_at,
    }


@requires(Scope.ADMIN)
async def list_api_keys(request: Request) -> Response:
    """Keys oldest first, a page at a time."""
    page = page_request(request)
    keys = await lag_tolerant(
        request, lambda pool: api_keys.list_keys(pool, after=after(page), limit=page.limit + 1)
    )
    return JSONResponse(page_body(keys, page, serialize=serialize, cursor_of=time_cursor))


@requires(Scope.ADMIN)
async def create_api_key(request: Request) -> Response:
    body = await parse_json(request, CreateApiKey)
    issued = await api_keys.create_key(
        app_state(request)["pool"], name=body.name, scopes=body.scopes, expires_at=body.expires_at
    )
    return JSONResponse(serialize(issued.key) | {"key": issued.plaintext}, status_code=201)


@requires(Scope.ADMIN)
async def revoke_api_key(request: Request) -> Response:
    raw_id = request.path_params["key_id"]
    try:
        key_id = uuid.UUID(raw_id)
    except ValueError:
        raise NotFound(f"No API key has id {raw_id}.") from None
    state = app_state(request)
    key = await api_keys.revoke_key(state["pool"], key_id)
    state["key_cache"].forget(key.id)
    return JSONResponse(serialize(key))


routes = [
    Route("/v1/api-keys", list_api_keys, methods=["GET"]),
    Route("/v1/api-keys", create_api_key, methods=["POST"]),
    Route("/v1/api-keys/{key_id}", revoke_api_key, methods=["DELETE"]),
]
