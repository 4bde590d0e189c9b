"""Bearer-key authentication for routes: `@requires(Scope.X, ...)` guards an endpoint.

Every credential failure looks the same to the caller (401, one fixed body), so the response
never tells an attacker whether a key exists, was revoked or has expired.

Failed attempts are limited per client address (`FailureWindows`), and only failed ones: a valid
API key or customer token is always served (subject to the key's own rate). Each attempt whose
credential this process does not recognise is charged to the address before the lookup, and
refunded if the credential proves valid. Once the address has used its allowance, a credential
unknown to the in-memory index is refused (429) without a query; a recognised one is looked up
and served. While the index is not trusted (its listener is reconnecting), the database decides.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
from starlette.requests import Request
from starlette.responses import Response

from billing_service.db.api_keys import ApiKey
from billing_service.errors import BillingError, Forbidden, RateLimited, Unauthenticated
from billing_service.ratelimit import client_group, retry_after_seconds
from billing_service.services import api_keys, customer_tokens
from billing_service.services.api_keys import Scope
from billing_service.state import app_state

Endpoint = Callable[[Request], Awaitable[Response]]
Found = TypeVar("Found")

_UNAUTHENTICATED_DETAIL = "A valid API key is required in the Authorization: Bearer header."
_LIMITED_DETAIL = "Too many failed authentications from this address; try again later."


def bearer_token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _client_address(request: Request) -> str:
    """Who failed attempts are counted against: the client uvicorn reports (behind a trusted
    proxy, the address it forwarded; see docs/operations.md), grouped by `client_group`."""
    return client_group(request.client.host) if request.client else "unknown"


def limit_by_address(request: Request) -> None:
    """Routes that take no credential: each client address (as failed attempts are counted)
    may make `BILLING_RATE_LIMIT_PUBLIC_PER_ADDRESS` requests a second, bursts of twice that."""
    per_address = app_state(request)["limits"].per_address
    if per_address is not None and (wait := per_address.take(_client_address(request))) is not None:
        raise RateLimited(
            "Too many requests from this address; try again later.",
            retry_after=retry_after_seconds(wait),
        )


def _refused(request: Request, wait: float | None) -> BillingError:
    """401, or 429 when the address has to wait: the one place refusals are counted."""
    reason = "unauthenticated" if wait is None else "limited"
    app_state(request)["metrics"].auth_refused.labels(reason).inc()
    if wait is None:
        return Unauthenticated(_UNAUTHENTICATED_DETAIL)
    return RateLimited(_LIMITED_DETAIL, retry_after=retry_after_seconds(wait))


def _failed_attempt(request: Request) -> BillingError:
    """A credential known to be bad: charge it to the address; 401, or 429 once limited."""
    wait = app_state(request)["limits"].failures.charge(_client_address(request))
    return _refused(request, wait)


async def _verified_within_limit(
    request: Request, recognised: bool | None, lookup: Callable[[], Awaitable[Found | None]]
) -> Found:
    """Look a credential up under the failed-attempt limit of the caller's address.

    `recognised`: True when the in-memory index holds it, False when the index (complete and
    current) does not, None when the index cannot be trusted right now.
    """
    if recognised:
        found = await lookup()
        if found is None:  # revoked or expired since the index last heard
            raise _failed_attempt(request)
        return found
    failures = app_state(request)["limits"].failures
    address = _client_address(request)
    wait = failures.charge(address)  # before any await: concurrent guesses are all counted
    if wait is None:
        found, refund = None, True  # refunded if the lookup fails for reasons of its own
        try:
            found = await lookup()
            refund = found is not None
        finally:
            if refund:
                failures.refund(address)
        if found is None:
            raise _refused(request, None)
        return found
    if recognised is False:  # a guess, and this address is out of guesses: no query
        raise _refused(request, wait)
    found = await lookup()  # no trusted index: only the database can tell a key from a guess
    if found is None:
        raise _refused(request, wait)
    return found


async def authenticated_key(request: Request) -> ApiKey:
    return await verified_key(request, bearer_token(request))


async def verified_key(request: Request, token: str | None) -> ApiKey:
    """The usable key `token` is, under the failed-attempt limit of the caller's address and
    the key's own rate: the Authorization header's, or a key typed into the console's sign-in."""
    if token is None or not api_keys.looks_like_key(token):
        raise _failed_attempt(request)
    state = app_state(request)
    cache = state["key_cache"]
    key_hash = api_keys.hash_key(token)
    key = cache.get(key_hash)
    if key is None:
        key = await _verified_within_limit(
            request,
            cache.recognises(key_hash),
            functools.partial(api_keys.read_key, state["pool"], key_hash, cache),
        )
    structlog.contextvars.bind_contextvars(key_id=str(key.id))
    per_key = state["limits"].per_key
    if per_key is not None and (wait := per_key.take(key.id)) is not None:
        raise RateLimited(
            "This API key is over its request rate.", retry_after=retry_after_seconds(wait)
        )
    return key


async def _admit_customer_token(request: Request, token: str, *, allowed: bool) -> None:
    """A customer token passes only where allowed, and only for its own customer."""
    state = app_state(request)
    holder = await _verified_within_limit(
        request,
        state["token_index"].recognises(customer_tokens.hash_token(token)),
        functools.partial(customer_tokens.token_customer, state["pool"], token),
    )
    if not allowed or request.path_params.get("customer_id") != holder.customer:
        raise Forbidden("A customer token can only read its own customer's entitlements.")
    if holder.member is not None and request.path_params.get("member_id") != holder.member:
        raise Forbidden("A member's token can only read that member's entitlements.")
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

        guarded.accepts_customer_token = customer_token  # type: ignore[attr-defined]
        return guarded

    return decorate


def accepts_customer_token(endpoint: object) -> bool:
    """Whether `requires` lets a customer token through: such routes may be called from a
    browser (see cors.py)."""
    return getattr(endpoint, "accepts_customer_token", False) is True


def current_key(request: Request) -> ApiKey:
    """The key `requires` authenticated for this request."""
    key = request.scope["api_key"]
    assert isinstance(key, ApiKey)
    return key
