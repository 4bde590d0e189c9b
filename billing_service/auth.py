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
from billing_service.services import api_keys, customer_tokens
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
    state = app_state(request)
    key = (
        None
        if token is None
        else await api_keys.authenticate(state["pool"], token, state["key_cache"])
    )
    if key is None:
        raise Unauthenticated(_UNAUTHENTICATED_DETAIL)
    structlog.contextvars.bind_contextvars(key_id=str(key.id))
    return key


async def _admit_customer_token(request: Request, token: str, *, allowed: bool) -> None:
    """A customer token passes only where allowed, and only for its own customer."""
    customer = await customer_tokens.token_customer(app_state(request)["pool"], token)
    if customer is None:
        raise Unauthenticated(_UNAUTHENTICATED_DETAIL)
    if not allowed or request.path_params.get("customer_id") != customer:
        raise Forbidden("A customer token can only read its own customer's entitlements.")
    structlog.contextvars.bind_contextvars(caller="customer-token")


def requires(*accepted: Scope, customer_token: bool = False) -> Callable[[Endpoint], Endpoint]:
    """Guard an endpoint: a usable key holding one of `accepted` (or admin) is needed; with
    `customer_token`, a customer token for the customer in the path is enough."""
    needed = " or ".join(f"'{scope.value}'" for scope in accepted)

    def decorate(endpoint: Endpoint) -> Endpoint:
        @functools.wraps(endpoint)
        async def guarded(request: Request) -> Response:
            token = bearer_token(request)
            if token is not None and customer_tokens.is_customer_token(token):
                await _admit_customer_token(request, token, allowed=customer_token)
                return await endpoint(request)
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
