"""The request middleware's own duties: minted request ids and the handlers it applies."""

from __future__ import annotations

import asyncio
import re

import httpx

from billing_service.middleware import mint_request_id


async def test_minted_request_ids_are_distinct_128_bit_hex_across_batches(
    client: httpx.AsyncClient,
) -> None:
    """Ids are drawn 256 at a time; across several draws every one is 32 lower-case hex digits
    and none repeats, whether minted directly or for requests that brought none."""
    minted = [mint_request_id() for _ in range(1_000)]
    responses = await asyncio.gather(*(client.get("/healthz") for _ in range(50)))
    echoed = [response.headers["x-request-id"] for response in responses]
    every = minted + echoed
    assert all(re.fullmatch(r"[0-9a-f]{32}", value) for value in every)
    assert len(set(every)) == len(every)


async def test_a_handled_error_from_a_route_keeps_its_request_id_and_path(
    client: httpx.AsyncClient,
) -> None:
    """A route's own error (401 here) is rendered by the handler table in the middleware: the
    problem names the path and the request id the caller sent, which is echoed once."""
    response = await client.get("/v1/api-keys", headers={"X-Request-ID": "trace-401"})
    assert response.status_code == 401
    assert response.headers.get_list("x-request-id") == ["trace-401"]
    body = response.json()
    assert (body["instance"], body["request_id"]) == ("/v1/api-keys", "trace-401")
