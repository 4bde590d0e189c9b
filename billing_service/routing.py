"""Routing without per-request overhead: routes looked up by method and path shape, endpoints
called without an exception layer of their own.

Starlette tries each route's regular expression in order, so a request to a route near the end
of the table pays for all the others (~20 µs on ours). `IndexedRouter` first tries the few
routes that could match: the one with exactly this path when it has no parameters, else those
serving the method with the same number of path segments, in table order. The first that
matches is the one the scan would have found; anything else (405, 404, a redirect) is left to
Starlette's own lookup, so answers are unchanged.

Starlette also wraps each endpoint in an exception-handling layer and a second `Request`; ours
raise straight to `RequestMiddleware`, which holds the one table of exception handlers.
"""

from __future__ import annotations

import copy
import inspect
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from starlette._utils import get_route_path
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route, Router
from starlette.types import ASGIApp, Lifespan, Receive, Scope, Send

_PATH_CONVERTOR = re.compile(r"{[^}:]+:path}")


def endpoint_app(endpoint: Callable[[Request], Awaitable[Response]]) -> ASGIApp:
    """`endpoint` as an ASGI app whose errors propagate to the middleware's handlers."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        response = await endpoint(Request(scope, receive, send))
        await response(scope, receive, send)

    return app


def _direct(route: BaseRoute) -> BaseRoute:
    """A copy of `route` calling its endpoint through `endpoint_app` (the route tables are
    shared between apps, so they are not changed in place)."""
    if not isinstance(route, Route) or not inspect.iscoroutinefunction(route.endpoint):
        return route
    direct = copy.copy(route)
    direct.app = endpoint_app(route.endpoint)
    return direct


def _segments(path: str) -> int:
    return path.count("/")


class IndexedRouter(Router):
    """Starlette's `Router` with candidate routes indexed by (method, segment count)."""

    def __init__(self, routes: Sequence[BaseRoute], *, lifespan: Lifespan[Any]) -> None:
        super().__init__([_direct(route) for route in routes], lifespan=lifespan)
        self._candidates: dict[tuple[str, int], list[Route]] = {}
        # A route that is not a plain `Route`, serves any method, or whose parameter may span
        # segments could match paths of any length: then only the scan is exact.
        self._indexed = all(
            isinstance(route, Route) and route.methods and not _PATH_CONVERTOR.search(route.path)
            for route in self.routes
        )
        # Paths without parameters, when no route before them in the table matches them too.
        self._static: dict[tuple[str, str], Route] = {}
        for route in self.routes:
            if isinstance(route, Route):
                for method in route.methods or ():
                    earlier = self._candidates.setdefault((method, _segments(route.path)), [])
                    if not route.param_convertors and not any(
                        other.path_regex.match(route.path) for other in earlier
                    ):
                        self._static.setdefault((method, route.path), route)
                    earlier.append(route)

    def lookup(self, scope: Scope) -> tuple[Route, Scope] | None:
        """The route Starlette's scan would fully match for this HTTP request, and its child
        scope; None when it would not fully match any (or the table cannot be indexed)."""
        if not self._indexed:
            return None
        path = get_route_path(scope)
        static = self._static.get((scope["method"], path))
        if static is not None:
            return static, {"endpoint": static.endpoint, "path_params": {}}
        for route in self._candidates.get((scope["method"], _segments(path)), ()):
            match, child_scope = route.matches(scope)
            if match is Match.FULL:
                return route, child_scope
        return None

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = self.lookup(scope) if scope["type"] == "http" else None
        if found is None:
            await super().app(scope, receive, send)
            return
        route, child_scope = found
        scope.setdefault("router", self)
        scope["route"] = route
        scope.update(child_scope)
        await route.handle(scope, receive, send)
