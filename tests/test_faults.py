"""Faults: a database connection killed mid-request, or the database down for a while; the
request fails cleanly, nothing partial is saved, and the app recovers without a restart."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from pydantic import SecretStr

from billing_service.config import Settings
from billing_service.db.migrations import apply_migrations, discover_migrations
from billing_service.embedded_db import embedded_postgres
from billing_service.resources import migrations_dir
from tests.conftest import WEBHOOK_SECRETS, app_client
from tests.routes.test_checkout import bearer
from tests.routes.test_usage import catalog_with
from tests.routes.test_webhooks import post_event
from tests.stripe_fakes import stripe_event
from tests.support import free_port, start_service


async def _backend_waiting_on_a_lock(pool: asyncpg.Pool) -> int:
    for _ in range(200):
        pid = await pool.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'billing-service' "
            "AND wait_event_type = 'Lock' AND datname = current_database()"
        )
        if pid is not None:
            return int(pid)
        await asyncio.sleep(0.01)
    raise AssertionError("the request never reached the lock")


async def test_a_track_whose_connection_is_killed_fails_cleanly_and_retries_once(
    client: httpx.AsyncClient, pool: asyncpg.Pool, billing_key: str
) -> None:
    """pg_terminate_backend mid-track: a 503 with Retry-After, nothing recorded; the retry with
    the same idempotency key counts once, and the app keeps serving without a restart."""
    await catalog_with(pool, limit=100, reset="month")
    body = {"customer_id": "user_1", "feature": "ai_calls", "idempotency_key": "k-1"}
    first = await client.post("/v1/usage/track", headers=bearer(billing_key), json=body)
    assert first.json()["used"] == 1
    second = body | {"idempotency_key": "k-2"}

    async with pool.acquire() as blocker, blocker.transaction():
        await blocker.execute("SELECT * FROM usage_counters FOR UPDATE")  # the track will wait
        request = asyncio.create_task(
            client.post("/v1/usage/track", headers=bearer(billing_key), json=second)
        )
        victim = await _backend_waiting_on_a_lock(pool)
        assert await blocker.fetchval("SELECT pg_terminate_backend($1)", victim)
    failed = await request

    assert failed.status_code == 503
    assert failed.json()["type"] == "urn:billing-service:problem:database-unavailable"
    assert int(failed.headers["retry-after"]) > 0
    assert await pool.fetchval("SELECT sum(used) FROM usage_counters") == 1
    assert await pool.fetchval("SELECT count(*) FROM usage_events") == 1

    retried = await client.post("/v1/usage/track", headers=bearer(billing_key), json=second)
    again = await client.post("/v1/usage/track", headers=bearer(billing_key), json=second)
    assert retried.status_code == again.status_code == 200
    assert retried.json() == again.json()
    assert retried.json()["used"] == 2
    assert await pool.fetchval("SELECT sum(used) FROM usage_counters") == 2
    assert (await client.get("/readyz")).status_code == 200


async def test_a_webhook_whose_connection_is_killed_is_refused_then_stored_once(
    stripe_client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    """pg_terminate_backend while the event is being stored: a 503 (so Stripe retries), no row;
    Stripe's retry is stored once, and a duplicate after it changes nothing."""
    event = stripe_event("customer.updated", {"id": "cus_1"})
    async with pool.acquire() as blocker, blocker.transaction():
        await blocker.execute("LOCK TABLE stripe_events IN SHARE MODE")  # the insert will wait
        request = asyncio.create_task(post_event(stripe_client, event))
        victim = await _backend_waiting_on_a_lock(pool)
        assert await blocker.fetchval("SELECT pg_terminate_backend($1)", victim)
    failed = await request

    assert failed.status_code == 503
    assert failed.json()["type"] == "urn:billing-service:problem:database-unavailable"
    assert await pool.fetchval("SELECT count(*) FROM stripe_events") == 0

    retried = await post_event(stripe_client, event)
    duplicate = await post_event(stripe_client, event)
    assert retried.status_code == duplicate.status_code == 200
    assert await pool.fetchval("SELECT count(*) FROM stripe_events") == 1
    assert (await stripe_client.get("/readyz")).status_code == 200


OUTAGE_SECONDS = 5


async def test_the_database_down_for_a_while_then_back(settings: Settings, tmp_path: Path) -> None:
    """With PostgreSQL stopped for 5 s, readiness is 503 and webhooks get a 5xx (so Stripe
    retries) all along; once it is back, the same app recovers without a restart."""
    with embedded_postgres(tmp_path) as url:
        conn = await asyncpg.connect(url)
        await apply_migrations(conn, discover_migrations(migrations_dir()))
        await conn.close()
        own = settings.model_copy(
            update={
                "database_url": SecretStr(url),
                "stripe_webhook_secrets": [SecretStr(WEBHOOK_SECRETS[0])],
            }
        )
        pgdata = str(tmp_path / "postgres")
        async with app_client(own) as client:
            assert (await client.get("/readyz")).status_code == 200
            socket_dir = url.split("host=", 1)[1]
            _pg_ctl(pgdata, "stop")
            event = stripe_event("customer.updated", {"id": "cus_1"})
            try:
                outage_ends = time.monotonic() + OUTAGE_SECONDS
                while True:  # throughout the outage, not just at its start
                    down = await client.get("/readyz")
                    assert down.status_code == 503
                    problem = down.json()["type"]
                    assert problem == "urn:billing-service:problem:database-unavailable"
                    assert (await post_event(client, event)).status_code >= 500
                    if time.monotonic() >= outage_ends:
                        break
                    await asyncio.sleep(1)
            finally:
                _pg_ctl(pgdata, "start", socket_dir=socket_dir)
            for _ in range(50):
                if (await client.get("/readyz")).status_code == 200:
                    break
                await asyncio.sleep(0.1)
            assert (await client.get("/readyz")).status_code == 200
            accepted = await post_event(client, event)
            assert accepted.status_code == 200
            assert accepted.json()["duplicate"] is False


def _pg_ctl(pgdata: str, action: str, *, socket_dir: str = "") -> None:
    """Stop or start the embedded server as it was started: on its unix socket only, as its
    own system user when we are root."""
    with warnings.catch_warnings():  # importing it warns when XDG_RUNTIME_DIR is unset
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    command = [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", pgdata, "-w", "-m", "fast"]
    if action == "start":
        command += ["-o", '-h ""', "-o", f"-k {socket_dir}", "-l", f"{pgdata}/log"]
    command.append(action)
    user = "embedded_postgres" if os.geteuid() == 0 else None
    subprocess.run(command, check=True, capture_output=True, user=user, timeout=60)  # noqa: S603


async def test_sigkill_under_load_loses_no_acknowledged_write_and_doubles_none(
    cli_env: dict[str, str], pool: asyncpg.Pool, billing_key: str
) -> None:
    """`kill -9` on a serving process in the middle of webhooks and tracks: after a restart,
    every acknowledged event and usage record is there once; resending everything then
    completes the set, still once each."""
    await catalog_with(pool, limit=10**9, reset="month")
    port = free_port()
    env = cli_env | {
        "BILLING_PORT": str(port),
        "BILLING_LOG_LEVEL": "warning",
        "BILLING_WORKER_ENABLED": "false",
        "BILLING_STRIPE_WEBHOOK_SECRETS": WEBHOOK_SECRETS[0],
    }
    events = [stripe_event("customer.updated", {"id": f"cus_{n}"}) for n in range(150)]
    tracks = [
        {"customer_id": f"user_{n % 10}", "feature": "ai_calls", "idempotency_key": f"kill-{n}"}
        for n in range(150)
    ]
    base = f"http://127.0.0.1:{port}"

    acked: set[str] = set()
    enough = asyncio.Event()
    server = await start_service(env, base)
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        load = asyncio.create_task(_send_all(http, events, tracks, billing_key, acked, enough))
        await asyncio.wait_for(enough.wait(), 30)
        server.kill()  # SIGKILL: no shutdown, no cleanup
        await server.wait()
        await load
    assert 60 <= len(acked) < 300

    server = await start_service(env, base)
    try:
        stored_events = {r["stripe_event_id"] for r in await pool.fetch(
            "SELECT stripe_event_id FROM stripe_events")}  # fmt: skip
        stored_tracks = {r["idempotency_key"] for r in await pool.fetch(
            "SELECT idempotency_key FROM usage_events WHERE recorded")}  # fmt: skip
        assert acked <= stored_events | stored_tracks
        counted = await pool.fetchval("SELECT coalesce(sum(used), 0) FROM usage_counters")
        assert counted == len(stored_tracks)  # no counter moved without its usage record

        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            resent: set[str] = set()
            await _send_all(http, events, tracks, billing_key, resent)
        assert len(resent) == 300
        assert await pool.fetchval("SELECT count(*) FROM stripe_events") == 150
        assert await pool.fetchval("SELECT count(*) FROM usage_events") == 150
        assert await pool.fetchval("SELECT sum(used) FROM usage_counters") == 150
    finally:
        server.terminate()
        await server.wait()


async def _send_all(
    http: httpx.AsyncClient,
    events: list[dict[str, Any]],
    tracks: list[dict[str, Any]],
    key: str,
    acked: set[str],
    enough: asyncio.Event | None = None,
) -> None:
    """Send every event and track, 16 at a time, noting the ones answered 2xx; `enough` is set
    once 60 are acknowledged."""
    gate = asyncio.Semaphore(16)

    async def one(kind: str, payload: dict[str, Any]) -> None:
        async with gate:
            try:
                if kind == "event":
                    response = await post_event(http, payload)
                else:
                    response = await http.post("/v1/usage/track", headers=bearer(key), json=payload)
            except httpx.TransportError:
                return
            if response.is_success:
                acked.add(payload["id"] if kind == "event" else payload["idempotency_key"])
                if enough is not None and len(acked) >= 60:
                    enough.set()

    jobs = [job for pair in zip(events, tracks, strict=True) for job in (
        one("event", pair[0]), one("track", pair[1]))]  # fmt: skip
    await asyncio.gather(*jobs)
