"""CORS (pure ASGI): which web pages may call which routes from the browser.

- Public routes (the pricing list) need no credential: any origin may read them (`*`).
- Customer-token routes (a customer's entitlements) answer the origins in
  `BILLING_CORS_ORIGINS`, and only when the bearer is a customer token: a response to an API key
  never carries CORS headers, so a page cannot use one even on these routes.
- Every other route is for API keys, which belong on servers: no CORS headers, and a preflight
  is refused (403 `cross-origin-refused`), so the browser never sends the request.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from starlette.responses import Response
from starlette.routing import compile_path
from starlette.types import ASGIApp, Receive, Scope, Send

from billing_service.errors import CrossOriginRefused
from billing_service.problems import problem_response
from billing_service.services.customer_tokens import TOKEN_PREFIX

MAX_AGE_SECONDS = 600  # how long a browser may reuse a preflight's answer
# What a page may send besides the CORS-safelisted headers, and read besides the safelisted ones.
TOKEN_HEADERS = ("authorization", "if-none-match", "x-request-id")
PUBLIC_HEADERS = ("if-none-match", "x-request-id")
EXPOSED_HEADERS = "ETag, Retry-After, X-Request-ID"
_VARY_PREFLIGHT = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"


RESPONSE_HEADERS = "billing.response_headers"
"""Scope key of the headers the request middleware adds to whatever answers the request."""


@dataclass(frozen=True, slots=True)
class CorsRoute:
    """A path template a browser may call, with its methods; `public` ones need no credential."""

    pattern: re.Pattern[str]
    methods: frozenset[str]
    public: bool

    @classmethod
    def of(cls, path: str, methods: Iterable[str], *, public: bool) -> CorsRoute:
        regex, _format, _convertors = compile_path(path)
        return cls(regex, frozenset(m.upper() for m in methods) - {"HEAD"}, public)


class CorsMiddleware:
    """Answers preflights and labels responses; requests to other routes pass untouched."""

    def __init__(
        self, app: ASGIApp, *, origins: Collection[str], routes: Iterable[CorsRoute]
    ) -> None:
        self.app = app
        self.any_origin = "*" in origins  # refused in production (config.unsafe_settings)
        self.origins = frozenset(origins)
        self.routes = tuple(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = self._route(scope["path"])
        headers = _cors_headers(scope) if route is not None or scope["method"] == "OPTIONS" else {}
        if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            await self._preflight(scope, receive, send, route, headers)
            return
        if route is None:
            await self.app(scope, receive, send)
            return
        extra = self._response_headers(route, headers.get("origin"), headers.get("authorization"))
        # Every answer carries them, problems the request middleware renders included.
        scope[RESPONSE_HEADERS] = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in extra.items()
        ]
        await self.app(scope, receive, send)

    def _route(self, path: str) -> CorsRoute | None:
        return next((r for r in self.routes if r.pattern.match(path)), None)

    def _allows(self, origin: str | None) -> bool:
        return origin is not None and (self.any_origin or origin in self.origins)

    def _response_headers(
        self, route: CorsRoute, origin: str | None, authorization: str | None
    ) -> dict[str, str]:
        """`*` on public routes; the origin itself on token routes, for a customer token only.
        Token routes always say `Vary: Origin`, so no cache hands one origin's answer to another."""
        if route.public:
            return {
                "Access-Control-Allow-Origin": "*",
                "Access-Control-Expose-Headers": EXPOSED_HEADERS,
            }
        headers = {"Vary": "Origin"}
        if self._allows(origin) and _is_customer_token(authorization):
            assert origin is not None
            headers["Access-Control-Allow-Origin"] = origin
            headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        return headers

    async def _preflight(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        route: CorsRoute | None,
        headers: dict[str, str],
    ) -> None:
        """204 with what may be sent, or 403 (no CORS headers) when anything asked is not."""
        method = headers["access-control-request-method"].upper()
        asked = {
            h.strip().lower() for h in headers.get("access-control-request-headers", "").split(",")
        }
        asked.discard("")
        if route is None:
            reason = "This route takes an API key, which must not be used from a browser."
        elif not route.public and not self._allows(headers.get("origin")):
            reason = "This origin is not in BILLING_CORS_ORIGINS."
        elif method not in route.methods:
            reason = f"{method} is not allowed from a browser here."
        elif not asked <= set(PUBLIC_HEADERS if route.public else TOKEN_HEADERS):
            reason = "A requested header is not allowed from a browser here."
        else:
            allowed = PUBLIC_HEADERS if route.public else TOKEN_HEADERS
            answer = Response(
                status_code=204,
                headers={
                    "Access-Control-Allow-Origin": "*" if route.public else headers["origin"],
                    "Access-Control-Allow-Methods": ", ".join(sorted(route.methods)),
                    "Access-Control-Allow-Headers": ", ".join(_title(h) for h in allowed),
                    "Access-Control-Max-Age": str(MAX_AGE_SECONDS),
                    "Vary": _VARY_PREFLIGHT,
                },
            )
            await answer(scope, receive, send)
            return
        refusal = problem_response(
            CrossOriginRefused(reason), instance=scope["path"], request_id=scope.get("request_id")
        )
        refusal.headers["Vary"] = _VARY_PREFLIGHT
        await refusal(scope, receive, send)


def _cors_headers(scope: Scope) -> dict[str, str]:
    """The few request headers CORS decides by, read from the raw ASGI list."""
    wanted = {
        b"origin",
        b"authorization",
        b"access-control-request-method",
        b"access-control-request-headers",
    }
    return {
        name.decode("latin-1"): value.decode("latin-1")
        for name, value in scope["headers"]
        if name in wanted
    }


def _is_customer_token(authorization: str | None) -> bool:
    """The bearer as `auth.bearer_token` reads it is a customer token (not an API key)."""
    scheme, _, credential = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and credential.strip().startswith(TOKEN_PREFIX)


def _title(header: str) -> str:
    return "X-Request-ID" if header == "x-request-id" else header.title()
