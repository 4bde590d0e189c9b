"""Key revocation reaches every process through LISTEN/NOTIFY, and a process that cannot listen
trusts nothing it holds: real `serve` processes, a real listener killed in PostgreSQL."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import asyncpg
import httpx

from billing_service.config import Settings
from billing_service.invalidation import APPLICATION_NAME
from billing_service.services import api_keys
from billing_service.services.api_keys import Scope
from tests.conftest import issue_key
from tests.routes.test_checkout import bearer
from tests.routes.test_rate_limits import LIMIT, clients, guess
from tests.support import ADMIN_DATABASE, billing_service, free_port, start_service, with_database

CONVERGENCE_BOUND = 2.0  # seconds; generous: the measured p99 is in docs/operations.md


async def _eventually(check: Callable[[], Awaitable[bool]], bound: float) -> float:
    """Poll `check` until it holds; how long that took. Fails after `bound` seconds."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > bound:
            raise AssertionError(f"not true within {bound} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


def _refused(http: httpx.AsyncClient, key: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return (await http.get("/v1/api-keys", headers=bearer(key))).status_code == 401

    return check


async def test_a_key_revoked_on_one_process_is_refused_by_another_on_its_next_requests(
    cli_env: dict[str, str], pool: asyncpg.Pool
) -> None:
    """Two `serve` processes on one database, both having served the key: revoked over HTTP on
    the first (or with `keys revoke`), the second refuses it within moments, not after its
    5-second cache time."""
    admin = await issue_key(pool, Scope.ADMIN)
    victims = [await api_keys.create_key(pool, name=f"v{n}", scopes=[Scope.ADMIN]) for n in (1, 2)]
    services, bases = [], []
    for _ in range(2):
        port = free_port()
        bases.append(f"http://127.0.0.1:{port}")
        env = cli_env | {
            "BILLING_PORT": str(port),
            "BILLING_LOG_LEVEL": "warning",
            "BILLING_WORKER_ENABLED": "false",
        }
        services.append(await start_service(env, bases[-1]))
    try:
        async with (
            httpx.AsyncClient(base_url=bases[0]) as first,
            httpx.AsyncClient(base_url=bases[1]) as second,
        ):
            for victim in victims:
                for http in (first, second):
                    headers = bearer(victim.plaintext)
                    assert (await http.get("/v1/api-keys", headers=headers)).status_code == 200

            deleted = await first.delete(f"/v1/api-keys/{victims[0].key.id}", headers=bearer(admin))
            assert deleted.status_code == 200
            assert await _refused(first, victims[0].plaintext)()
            await _eventually(_refused(second, victims[0].plaintext), CONVERGENCE_BOUND)

            revoked = await billing_service(cli_env, "keys", "revoke", str(victims[1].key.id))
            assert revoked.code == 0, revoked.err
            for http in (first, second):
                await _eventually(_refused(http, victims[1].plaintext), CONVERGENCE_BOUND)
            assert (await second.get("/v1/api-keys", headers=bearer(admin))).status_code == 200
    finally:
        for service in services:
            service.terminate()
            await service.wait()


async def _metric(http: httpx.AsyncClient, name: str) -> float:
    text = (await http.get("/metrics")).text
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert found is not None, name
    return float(found[1])


async def _revoke_in_sql(pool: asyncpg.Pool, key_id: uuid.UUID) -> None:
    await pool.execute("UPDATE api_keys SET revoked_at = now() WHERE id = $1", key_id)


async def _listener_pid(pool: asyncpg.Pool) -> int | None:
    pid = await pool.fetchval(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1 "
        "AND datname = current_database()",
        APPLICATION_NAME,
    )
    return None if pid is None else int(pid)


async def test_a_killed_listener_bypasses_the_key_cache_until_it_reconnects(
    settings: Settings, pool: asyncpg.Pool, server_url: str, database_url: str
) -> None:
    """pg_terminate_backend on the listener while the database takes no new connections: the
    cache is bypassed at once (a key revoked in plain SQL meanwhile is refused on the next
    request, a limited address's valid key is still served), and once connections are allowed
    the listener is back and revocations flow again."""
    admin = await issue_key(pool, Scope.ADMIN)
    victims = [await api_keys.create_key(pool, name=f"v{n}", scopes=[Scope.ADMIN]) for n in (1, 2)]
    # A long cache time: without invalidation a cached key would keep working for minutes.
    patient = settings.model_copy(update={"api_key_cache_seconds": 300, "database_pool_min": 3})
    database = urlsplit(database_url).path.lstrip("/")
    admin_db = await asyncpg.connect(with_database(server_url, ADMIN_DATABASE))
    async with clients(patient, "192.0.2.1", "203.0.113.7") as served:
        client, attacker = served.clients
        for victim in victims:
            assert (await client.get("/v1/api-keys", headers=bearer(victim.plaintext))).is_success
        assert await _metric(client, "billing_invalidation_listener_up") == 1
        first_pid = await _listener_pid(pool)
        assert first_pid is not None
        try:
            await admin_db.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
            assert await pool.fetchval("SELECT pg_terminate_backend($1)", first_pid)

            async def listener_down() -> bool:
                return await _metric(client, "billing_invalidation_listener_up") == 0

            await _eventually(listener_down, 5.0)
            await _revoke_in_sql(pool, victims[0].key.id)
            assert await _refused(client, victims[0].plaintext)()
            assert (await client.get("/v1/api-keys", headers=bearer(admin))).status_code == 200

            for n in range(LIMIT):
                await attacker.get("/v1/api-keys", headers=guess(n))
            assert (await attacker.get("/v1/api-keys", headers=guess(0))).status_code == 429
            assert (await attacker.get("/v1/api-keys", headers=bearer(admin))).status_code == 200
        finally:
            await admin_db.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
            await admin_db.close()

        async def listener_back() -> bool:
            return await _metric(client, "billing_invalidation_listener_up") == 1

        await _eventually(listener_back, 10.0)
        assert await _metric(client, "billing_invalidation_listener_connects_total") == 2
        assert await _metric(client, "billing_invalidation_listener_losses_total") == 1
        assert await _listener_pid(pool) not in (None, first_pid)

        assert (await client.get("/v1/api-keys", headers=bearer(victims[1].plaintext))).is_success
        await pool.execute(
            "UPDATE api_keys SET revoked_at = now() WHERE id = $1", victims[1].key.id
        )
        await _eventually(_refused(client, victims[1].plaintext), CONVERGENCE_BOUND)
