"""Liveness, readiness, metrics and the served OpenAPI document."""

from __future__ import annotations

import asyncpg
import httpx

from billing_service.resources import openapi_path


async def test_healthz_answers_without_credentials(client: httpx.AsyncClient) -> None:
    """Liveness needs no key and says ok."""
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_is_ready_on_a_migrated_database(client: httpx.AsyncClient) -> None:
    """With every migration applied and the database up, readiness is 200."""
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready"}


async def test_readyz_is_503_when_a_migration_is_missing(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """A schema behind the code is not ready, and the problem says which migration is missing."""
    version = await pool.fetchval("SELECT max(version) FROM schema_migrations")
    row = await pool.fetchrow("SELECT * FROM schema_migrations WHERE version = $1", version)
    assert row is not None
    await pool.execute("DELETE FROM schema_migrations WHERE version = $1", version)
    try:
        response = await client.get("/readyz")
    finally:
        await pool.execute(
            "INSERT INTO schema_migrations (version, name, checksum, applied_at) "
            "VALUES ($1, $2, $3, $4)",
            row["version"],
            row["name"],
            row["checksum"],
            row["applied_at"],
        )
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == "urn:billing-service:problem:database-unavailable"
    assert f"{version:04d}_{row['name']}" in body["detail"]


async def test_metrics_count_requests_by_route_template(client: httpx.AsyncClient) -> None:
    """Requests are counted under their route template and status, and pool gauges are exported."""
    await client.get("/healthz")
    await client.get("/healthz")
    await client.get("/no/such/route")
    response = await client.get("/metrics")
    assert response.status_code == 200
    text = response.text
    assert 'billing_http_requests_total{method="GET",route="/healthz",status="200"} 2.0' in text
    assert 'billing_http_requests_total{method="GET",route="unmatched",status="404"} 1.0' in text
    assert "billing_http_request_duration_seconds_bucket" in text
    assert "billing_db_pool_size" in text
    assert "billing_db_pool_max 5.0" in text


async def test_openapi_document_is_served_from_the_repository_file(
    client: httpx.AsyncClient,
) -> None:
    """GET /openapi.yaml returns the contract file byte for byte."""
    response = await client.get("/openapi.yaml")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/yaml")
    assert response.content == openapi_path().read_bytes()
