"""The indexed route lookup picks exactly the route Starlette's scan would, for every route."""

from __future__ import annotations

import re

from starlette.routing import BaseRoute, Match, Route

from billing_service.app import create_app
from billing_service.config import Settings
from billing_service.routing import IndexedRouter


def _scan(routes: list[BaseRoute], scope: dict[str, object]) -> BaseRoute | None:
    """Starlette's own rule: the first route that fully matches."""
    for route in routes:
        if route.matches(scope)[0] is Match.FULL:
            return route
    return None


def _scope(method: str, path: str) -> dict[str, object]:
    return {"type": "http", "method": method, "path": path, "root_path": "", "headers": []}


def _sample_paths(template: str) -> list[str]:
    """Paths the template matches, and near misses (a parameter that looks like another
    route's literal segment, an extra or missing segment, a trailing slash)."""
    filled = re.sub(r"{[^}]+}", "x1", template)
    literal = re.sub(r"{[^}]+}", "sync", template)
    return [filled, literal, filled + "/", filled + "/extra", filled.rsplit("/", 1)[0] or "/"]


def test_indexed_lookup_agrees_with_the_scan_on_every_route_method_and_near_miss(
    settings: Settings,
) -> None:
    """For each route of the real table, each method and paths around its template, the
    indexed router fully matches the same route as the scan, or defers to the scan when it
    finds none."""
    app = create_app(settings)
    router = app.router
    assert isinstance(router, IndexedRouter)
    routes = router.routes
    templates = [route.path for route in routes if isinstance(route, Route)]
    methods = {m for route in routes if isinstance(route, Route) for m in route.methods or ()}
    checked = 0
    for template in templates:
        for path in _sample_paths(template):
            for method in sorted(methods | {"PATCH", "OPTIONS"}):
                scope = _scope(method, path)
                found = router.lookup(scope)
                expected = _scan(routes, scope)
                assert (found[0] if found else None) is expected, (method, path)
                if found is not None:
                    assert found[1] == found[0].matches(scope)[1]  # same endpoint and params
                checked += 1
    assert checked > 500
