"""Every error is an RFC 9457 problem with a stable type and the request id, never a trace."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import httpx

from billing_service import errors
from billing_service.config import Settings
from tests.conftest import app_client
from tests.doc_examples import ROOT

PROBLEM = "application/problem+json"


def _assert_problem(response: httpx.Response, status: int, slug: str) -> dict[str, object]:
    assert response.status_code == status
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, object] = response.json()
    assert body["type"] == f"urn:billing-service:problem:{slug}"
    assert body["status"] == status
    assert body["title"]
    assert body["detail"]
    assert body["instance"] == response.request.url.path
    assert body["request_id"] == response.headers["x-request-id"]
    return body


async def test_unknown_route_is_a_404_problem(client: httpx.AsyncClient) -> None:
    """An unmatched path answers a not-found problem."""
    _assert_problem(await client.get("/v1/nothing-here"), 404, "not-found")


async def test_wrong_method_is_a_405_problem_with_allow(client: httpx.AsyncClient) -> None:
    """A known path with the wrong method lists the allowed methods."""
    response = await client.put("/healthz")
    _assert_problem(response, 405, "method-not-allowed")
    assert response.headers["allow"] == "GET, HEAD"
    several = await client.options("/v1/customers/user_1")
    _assert_problem(several, 405, "method-not-allowed")
    assert several.headers["allow"] == "GET, HEAD, PUT"


async def test_body_over_the_limit_by_content_length_is_413(
    client: httpx.AsyncClient, admin_key: str
) -> None:
    """A declared length over BILLING_MAX_BODY_BYTES is refused before it is read."""
    response = await client.post(
        "/v1/api-keys",
        headers={"Authorization": f"Bearer {admin_key}", "Content-Type": "application/json"},
        content=b'{"name": "' + b"x" * 20_000 + b'", "scopes": ["usage"]}',
    )
    _assert_problem(response, 413, "payload-too-large")


async def test_chunked_body_over_the_limit_is_413_and_creates_nothing(
    client: httpx.AsyncClient, admin_key: str, pool: asyncpg.Pool
) -> None:
    """A body with no length is counted as it streams and cut off at the limit."""

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"name": "'
        for _ in range(10):
            yield b"x" * 4096
        yield b'", "scopes": ["usage"]}'

    response = await client.post(
        "/v1/api-keys",
        headers={"Authorization": f"Bearer {admin_key}", "Content-Type": "application/json"},
        content=chunks(),
    )
    assert "content-length" not in response.request.headers
    _assert_problem(response, 413, "payload-too-large")
    assert await pool.fetchval("SELECT count(*) FROM api_keys") == 1


async def test_malformed_json_is_a_400_problem(client: httpx.AsyncClient, admin_key: str) -> None:
    """Bytes that are not JSON get a malformed-request problem, not a validation one."""
    for raw in (b'{"name": "x", ', b"", b"\xff\xfe"):
        response = await client.post(
            "/v1/api-keys",
            headers={"Authorization": f"Bearer {admin_key}", "Content-Type": "application/json"},
            content=raw,
        )
        _assert_problem(response, 400, "malformed-request")


async def test_non_json_content_type_is_a_415_problem(
    client: httpx.AsyncClient, admin_key: str
) -> None:
    """Form or text bodies are refused with unsupported-media-type."""
    response = await client.post(
        "/v1/api-keys",
        headers={"Authorization": f"Bearer {admin_key}", "Content-Type": "text/plain"},
        content=b'{"name": "x", "scopes": ["usage"]}',
    )
    _assert_problem(response, 415, "unsupported-media-type")


async def test_json_content_type_with_charset_is_accepted(
    client: httpx.AsyncClient, admin_key: str
) -> None:
    """`application/json; charset=utf-8` is JSON."""
    response = await client.post(
        "/v1/api-keys",
        headers={
            "Authorization": f"Bearer {admin_key}",
            "Content-Type": "application/json; charset=utf-8",
        },
        content=b'{"name": "x", "scopes": ["usage"]}',
    )
    assert response.status_code == 201


async def test_unexpected_failure_is_a_500_problem_that_reveals_nothing(
    settings: Settings, pool: asyncpg.Pool, admin_key: str
) -> None:
    """A real internal failure (a missing table) answers a bare 500 problem with no internals."""
    async with app_client(settings, raise_app_exceptions=False) as client:
        await pool.execute("ALTER TABLE api_keys RENAME TO api_keys_away")
        try:
            response = await client.get(
                "/v1/api-keys", headers={"Authorization": f"Bearer {admin_key}"}
            )
        finally:
            await pool.execute("ALTER TABLE api_keys_away RENAME TO api_keys")
    body = _assert_problem(response, 500, "internal")
    text = response.text
    for leak in ("api_keys", "Traceback", "asyncpg", "relation", ".py"):
        assert leak not in text
    assert set(body) == {"type", "title", "status", "detail", "instance", "request_id"}


async def test_request_id_is_echoed_when_well_formed_and_minted_otherwise(
    client: httpx.AsyncClient,
) -> None:
    """A caller's X-Request-ID is reused; a malformed one is replaced."""
    given = await client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    replaced = await client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
    assert replaced.headers["x-request-id"] != "bad id\twith spaces"
    assert len(replaced.headers["x-request-id"]) == 32


async def test_nul_characters_are_refused_before_they_reach_the_database(
    client: httpx.AsyncClient, admin_key: str, pool: asyncpg.Pool
) -> None:
    """PostgreSQL cannot store NUL: in a body it is a 422 on that field, in a URL a 400."""
    auth = {"Authorization": f"Bearer {admin_key}"}
    in_body = await client.post(
        "/v1/api-keys", headers=auth, json={"name": "bad\u0000name", "scopes": ["usage"]}
    )
    body = _assert_problem(in_body, 422, "validation-failed")
    assert body["errors"] == [
        {"field": "name", "message": "must not contain NUL characters or lone surrogates"}
    ]
    in_path = await client.get("/v1/plans/pro%00", headers=auth)
    _assert_problem(in_path, 400, "malformed-request")
    in_query = await client.get("/v1/events?status=failed%00", headers=auth)
    assert in_query.status_code == 400
    assert await pool.fetchval("SELECT count(*) FROM api_keys") == 1


def _error_classes(base: type[errors.BillingError]) -> list[type[errors.BillingError]]:
    return [base, *(c for sub in base.__subclasses__() for c in _error_classes(sub))]


def test_every_problem_type_is_documented_with_its_status() -> None:
    """docs/errors.md has a row for each type the service can answer, with that status, so a
    caller branching on `type` finds every value there."""
    rows = (ROOT / "docs" / "errors.md").read_text(encoding="utf-8")
    for error in _error_classes(errors.BillingError):
        assert f"| `{error.slug}` | {error.status} |" in rows, error.slug


async def test_unstorable_text_sent_raw_in_a_body_is_unparsable_json(
    client: httpx.AsyncClient, admin_key: str, pool: asyncpg.Pool
) -> None:
    """A raw NUL byte, invalid UTF-8 or an escaped lone surrogate in a body is unparsable JSON
    (400), so only an escaped NUL (a 422, above) needs looking for in parsed text."""
    auth = {"Authorization": f"Bearer {admin_key}", "Content-Type": "application/json"}
    for raw in (
        b'{"name": "bad\x00name", "scopes": ["usage"]}',
        b'{"name": "bad\xffname", "scopes": ["usage"]}',
        b'{"name": "bad\\ud800name", "scopes": ["usage"]}',
    ):
        response = await client.post("/v1/api-keys", headers=auth, content=raw)
        _assert_problem(response, 400, "malformed-request")
    assert await pool.fetchval("SELECT count(*) FROM api_keys") == 1
