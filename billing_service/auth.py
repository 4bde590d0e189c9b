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
from billing_service.errors import Forbidden, RateLimited, Unauthenticated
from billing_service.ratelimit import retry_after_seconds
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


def _client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _refuse_if_blocked(request: Request) -> None:
    """Too many failed logins from this address: wait, whatever is presented now."""
    wait = app_state(request)["limits"].failures.blocked_for(_client_address(request))
    if wait is not None:
        raise RateLimited(
            "Too many failed authentications from this address; try again later.",
            retry_after=retry_after_seconds(wait),
        )


def _unauthenticated(request: Request) -> Unauthenticated:
    app_state(request)["limits"].failures.record_failure(_client_address(request))
    return Unauthenticated(_UNAUTHENTICATED_DETAIL)


async def authenticated_key(request: Request) -> ApiKey:
    _refuse_if_blocked(request)
    token = bearer_token(request)
    state = app_state(request)
    key = (
        None
        if token is None
        else await api_keys.authenticate(state["pool"], token, state["key_cache"])
    )
    if key is None:
        raise _unauthenticated(request)
    structlog.contextvars.bind_contextvars(key_id=str(key.id))
    per_key = state["limits"].per_key
    if per_key is not None and (wait := per_key.take(key.id)) is not None:
        raise RateLimited(
            "This API key is over its request rate.", retry_after=retry_after_seconds(wait)
        )
    return key


async def _admit_customer_token(request: Request, token: str, *, allowed: bool) -> None:
    """A customer token passes only where allowed, and only for its own customer."""
    _refuse_if_blocked(request)
    customer = await customer_tokens.token_customer(app_state(request)["pool"], token)
    if customer is None:
        raise _unauthenticated(request)
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
