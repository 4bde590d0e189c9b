"""Bearer-key authentication for routes: `@requires(Scope.X, ...)` guards an endpoint.

Every credential failure looks the same to the caller (401, one fixed body), so the response
never tells an attacker whether a key exists, was revoked or has expired.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

import structlog
from starlette.requests import Request
from starlette.responses import Response

from billing_service.db.api_keys import ApiKey
from billing_service.errors import Forbidden, Unauthenticated
from billing_service.services import api_keys
from billing_service.services.api_keys import Scope
from billing_service.state import app_state

Endpoint = Callable[[Request], Awaitable[Response]]

_UNAUTHENTICATED_DETAIL = "A valid API key is required in the Authorization: Bearer header."


def bearer_token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def authenticated_key(request: Request) -> ApiKey:
    token = bearer_token(request)
    key = None if token is None else await api_keys.authenticate(app_state(request)["pool"], token)
    if key is None:
        raise Unauthenticated(_UNAUTHENTICATED_DETAIL)
    structlog.contextvars.bind_contextvars(key_id=str(key.id))
    return key


def requires(*accepted: Scope) -> Callable[[Endpoint], Endpoint]:
    """Guard an endpoint: a usable key holding one of `accepted` (or admin) is needed."""
    needed = " or ".join(f"'{scope.value}'" for scope in accepted)

    def decorate(endpoint: Endpoint) -> Endpoint:
        @functools.wraps(endpoint)
        async def guarded(request: Request) -> Response:
            key = await authenticated_key(request)
            if not api_keys.key_allows(key, accepted):
                raise Forbidden(f"This route needs an API key with the {needed} scope.")
            request.scope["api_key"] = key
            return await endpoint(request)

        return guarded

    return decorate


def current_key(request: Request) -> ApiKey:
    """The key `requires` authenticated for this request."""
    key = request.scope["api_key"]
    assert isinstance(key, ApiKey)
    return key
