"""The operator console: server-rendered pages under /console, another face of the same
services the API routes call (docs/console.md).

Its routes are plain `Route`s with methods, like the API's, so the router's index keeps
working; `create_app` adds them when `BILLING_CONSOLE_ENABLED` is on.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from billing_service.console import actions, pages, signing_in
from billing_service.console._web import STATIC
from billing_service.errors import NotFound

_STATIC_FILES = {"console.css": "text/css", "console.js": "text/javascript"}


async def static_file(request: Request) -> Response:
    """The stylesheet and the script: public, cacheable for an hour."""
    name = request.path_params["name"]
    if name not in _STATIC_FILES:
        raise NotFound(f"No console file is named '{name}'.")
    return FileResponse(
        STATIC / name,
        media_type=_STATIC_FILES[name],
        headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )


routes = [
    Route("/console", pages.overview, methods=["GET"]),
    Route("/console/sign-in", signing_in.sign_in_page, methods=["GET"]),
    Route("/console/sign-in", signing_in.sign_in, methods=["POST"]),
    Route("/console/sign-out", signing_in.sign_out, methods=["POST"]),
    Route("/console/customers", pages.customer_list, methods=["GET"]),
    Route("/console/customers/{customer_id}", pages.customer_detail, methods=["GET"]),
    Route("/console/customers/{customer_id}/credits", actions.grant_credits, methods=["POST"]),
    Route("/console/customers/{customer_id}/sync", actions.resync, methods=["POST"]),
    Route("/console/customers/{customer_id}/portal", actions.portal_link, methods=["POST"]),
    Route("/console/events", pages.event_list, methods=["GET"]),
    Route("/console/events/replay-failed", actions.replay_failed, methods=["POST"]),
    Route("/console/events/{event_id}", pages.event_detail, methods=["GET"]),
    Route("/console/events/{event_id}/replay", actions.replay_event, methods=["POST"]),
    Route("/console/catalog", pages.catalog_page, methods=["GET"]),
    Route("/console/deliveries", pages.deliveries, methods=["GET"]),
    Route("/console/deliveries/{delivery_id}/redeliver", actions.redeliver, methods=["POST"]),
    Route("/console/static/{name}", static_file, methods=["GET"]),
]
