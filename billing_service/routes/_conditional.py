"""Conditional reads: an `ETag` on JSON answers, and `304 Not Modified` for a matching
`If-None-Match`, so pollers and caches pay for the query but not for the body.

The tag is strong: a hash of the exact bytes of the JSON body, so equal tags mean equal bodies.
"""

from __future__ import annotations

import base64
import hashlib

from starlette.requests import Request
from starlette.responses import Response

from billing_service.routes._http import JSONResponse

# Always revalidate: a browser or client may keep the body, and asks with If-None-Match.
REVALIDATE = "private, no-cache"


def etag_of(body: bytes) -> str:
    digest = hashlib.sha256(body).digest()[:16]
    return '"' + base64.urlsafe_b64encode(digest).rstrip(b"=").decode() + '"'


def matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110's weak comparison: `W/` is ignored, `*` matches any current representation."""
    if if_none_match is None:
        return False
    for candidate in if_none_match.split(","):
        tag = candidate.strip().removeprefix("W/")
        if tag in ("*", etag):
            return True
    return False


def conditional_json(
    request: Request, content: object, *, cache_control: str = REVALIDATE
) -> Response:
    """200 with the JSON body and its ETag, or 304 with no body when the caller has it."""
    response = JSONResponse(content)
    etag = etag_of(bytes(response.body))
    headers = {"ETag": etag, "Cache-Control": cache_control}
    if matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    response.headers.update(headers)
    return response
