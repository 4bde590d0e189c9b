"""API key authentication and scopes on a guarded route."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest

from billing_service.services import api_keys
from billing_service.services.api_keys import Scope
from tests.conftest import issue_key

GUARDED = "/v1/api-keys"
FIXED_REQUEST_ID = "req-auth-test"


async def _unauthorized_body(client: httpx.AsyncClient, headers: dict[str, str]) -> bytes:
    response = await client.get(GUARDED, headers=headers | {"X-Request-ID": FIXED_REQUEST_ID})
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"].startswith("Bearer")
    return response.content


async def test_every_credential_failure_gets_the_identical_401(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """Missing, malformed, unknown, revoked and expired keys are indistinguishable to the caller."""
    revoked = await api_keys.create_key(pool, name="revoked", scopes=[Scope.ADMIN])
    await api_keys.revoke_key(pool, revoked.key.id)
    expired = await api_keys.create_key(
        pool,
        name="expired",
        scopes=[Scope.ADMIN],
        expires_at=datetime.now(UTC) + timedelta(milliseconds=50),
    )
    await pool.execute(
        "UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = $1",
        expired.key.id,
    )

    bodies = {
        "missing": await _unauthorized_body(client, {}),
        "wrong scheme": await _unauthorized_body(client, {"Authorization": "Basic dXNlcjpwYXNz"}),
        "empty bearer": await _unauthorized_body(client, {"Authorization": "Bearer "}),
        "unknown": await _unauthorized_body(client, {"Authorization": "Bearer bsk_" + "x" * 43}),
        "not our format": await _unauthorized_body(client, {"Authorization": "Bearer hello"}),
        "revoked": await _unauthorized_body(
            client, {"Authorization": f"Bearer {revoked.plaintext}"}
        ),
        "expired": await _unauthorized_body(
            client, {"Authorization": f"Bearer {expired.plaintext}"}
        ),
    }
    assert len(set(bodies.values())) == 1, bodies
    body = httpx.Response(401, content=bodies["missing"]).json()
    assert body["type"] == "urn:billing-service:problem:unauthenticated"
    assert body["status"] == 401
    assert body["request_id"] == FIXED_REQUEST_ID


async def test_key_without_the_scope_gets_403(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """A valid key lacking the route's scope is forbidden, and told which scope is needed."""
    for scope in (Scope.BILLING, Scope.USAGE):
        key = await issue_key(pool, scope)
        response = await client.get(GUARDED, headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 403
        body = response.json()
        assert body["type"] == "urn:billing-service:problem:forbidden"
        assert "'admin'" in body["detail"]


async def test_key_with_the_scope_is_let_through_and_last_use_recorded(
    client: httpx.AsyncClient, pool: asyncpg.Pool, admin_key: str
) -> None:
    """An admin key reaches the admin route, and its last use is stamped."""
    response = await client.get(GUARDED, headers={"Authorization": f"Bearer {admin_key}"})
    assert response.status_code == 200
    [listed] = response.json()["data"]
    assert listed["last_used_at"] is not None
    stamped = await pool.fetchval(
        "SELECT last_used_at FROM api_keys WHERE id = $1::uuid", listed["id"]
    )
    assert stamped is not None


async def test_bearer_scheme_is_case_insensitive(client: httpx.AsyncClient, admin_key: str) -> None:
    """`bearer` and `BEARER` work like `Bearer`, as RFC 6750 allows."""
    for scheme in ("bearer", "BEARER"):
        response = await client.get(GUARDED, headers={"Authorization": f"{scheme} {admin_key}"})
        assert response.status_code == 200


async def test_key_revoked_over_http_stops_working_at_once(
    client: httpx.AsyncClient, pool: asyncpg.Pool, admin_key: str
) -> None:
    """Revocation takes effect on the very next request."""
    victim = await api_keys.create_key(pool, name="victim", scopes=[Scope.ADMIN])
    auth = {"Authorization": f"Bearer {admin_key}"}
    assert (
        await client.get(GUARDED, headers={"Authorization": f"Bearer {victim.plaintext}"})
    ).status_code == 200
    response = await client.delete(f"{GUARDED}/{victim.key.id}", headers=auth)
    assert response.status_code == 200
    assert response.json()["revoked_at"] is not None
    after = await client.get(GUARDED, headers={"Authorization": f"Bearer {victim.plaintext}"})
    assert after.status_code == 401


async def test_created_key_is_shown_once_and_stored_only_as_a_hash(
    client: httpx.AsyncClient, pool: asyncpg.Pool, admin_key: str
) -> None:
    """POST returns the plaintext once; the table holds a hash and a short prefix only."""
    auth = {"Authorization": f"Bearer {admin_key}"}
    response = await client.post(GUARDED, headers=auth, json={"name": "svc", "scopes": ["usage"]})
    assert response.status_code == 201
    created = response.json()
    plaintext = created["key"]
    assert plaintext.startswith("bsk_")
    assert len(plaintext) >= 4 + 43  # 256 random bits, base64url
    assert plaintext.startswith(created["prefix"])
    row = await pool.fetchrow("SELECT * FROM api_keys WHERE id = $1::uuid", created["id"])
    assert row is not None
    assert plaintext not in {str(value) for value in row.values()}
    assert bytes(row["key_hash"]) == api_keys.hash_key(plaintext)

    listed = (await client.get(GUARDED, headers=auth)).json()["data"]
    assert all("key" not in key for key in listed)
    usage = await client.get(GUARDED, headers={"Authorization": f"Bearer {plaintext}"})
    assert usage.status_code == 403


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"name": "", "scopes": ["usage"]}, {"name"}),
        ({"name": "x", "scopes": []}, {"scopes"}),
        ({"name": "x", "scopes": ["root"]}, {"scopes.0"}),
        ({"name": "x", "scopes": ["usage"], "expires_at": "2030-01-01T00:00:00"}, {"expires_at"}),
        ({"scopes": ["usage"], "extra": 1}, {"name", "extra"}),
    ],
)
async def test_invalid_key_request_lists_the_bad_fields(
    client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    admin_key: str,
    body: dict[str, object],
    fields: set[str],
) -> None:
    """422 names every bad field and creates nothing."""
    response = await client.post(
        GUARDED, headers={"Authorization": f"Bearer {admin_key}"}, json=body
    )
    assert response.status_code == 422
    problem = response.json()
    assert problem["type"] == "urn:billing-service:problem:validation-failed"
    assert {error["field"] for error in problem["errors"]} == fields
    assert await pool.fetchval("SELECT count(*) FROM api_keys") == 1


async def test_revoking_an_unknown_key_is_404(client: httpx.AsyncClient, admin_key: str) -> None:
    """Unknown or malformed ids are a 404 problem."""
    auth = {"Authorization": f"Bearer {admin_key}"}
    for key_id in ("00000000-0000-0000-0000-000000000000", "not-a-uuid"):
        response = await client.delete(f"{GUARDED}/{key_id}", headers=auth)
        assert response.status_code == 404
        assert response.json()["type"] == "urn:billing-service:problem:not-found"
