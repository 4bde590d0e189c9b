"""How long a key revoked on one process keeps working on another: the convergence of revocation
through PostgreSQL LISTEN/NOTIFY, measured end to end between two `billing-service serve`
processes on one database.

Each trial mints a key, has process B serve it (so B holds it in its cache), revokes it over HTTP
on process A, and from the moment A answers polls B back to back until B answers 401. The time
reported is from A's answer (the revocation has committed) to B's first 401.

    .venv/bin/python -m bench.revocation [--trials 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from dataclasses import dataclass, field

import asyncpg
import httpx

from bench.processes import free_port, machine, running
from bench.run import SERVER_URL
from billing_service.db.migrations import apply_migrations, discover_migrations
from billing_service.db.pool import create_pool
from billing_service.resources import migrations_dir
from billing_service.services import api_keys
from billing_service.services.api_keys import Scope

DATABASE = "billing_bench_revocation"


async def prepare_database(server_url: str) -> str:
    admin = await asyncpg.connect(server_url)
    await admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{DATABASE}"')
    await admin.close()
    url = server_url.rsplit("/", 1)[0] + f"/{DATABASE}"
    conn = await asyncpg.connect(url)
    await apply_migrations(conn, discover_migrations(migrations_dir()))
    await conn.close()
    return url


@dataclass
class Trials:
    took: list[float] = field(default_factory=list)  # A's answer to B's first 401, seconds
    stale: list[int] = field(default_factory=list)  # B's answers in between that accepted it
    request: list[float] = field(default_factory=list)  # one cached request to B, seconds


async def measure(database_url: str, first: str, second: str, trials: int) -> Trials:
    """Revoke on A, poll B, `trials` times."""
    pool = await create_pool(database_url, min_size=1, max_size=2)
    admin = (await api_keys.create_key(pool, name="bench-admin", scopes=[Scope.ADMIN])).plaintext
    result = Trials()
    async with httpx.AsyncClient(base_url=first) as a, httpx.AsyncClient(base_url=second) as b:
        for n in range(trials):
            victim = await api_keys.create_key(pool, name=f"victim-{n}", scopes=[Scope.ADMIN])
            auth = {"Authorization": f"Bearer {victim.plaintext}"}
            assert (await b.get("/v1/api-keys", headers=auth)).status_code == 200
            started = time.perf_counter()
            assert (await b.get("/v1/api-keys", headers=auth)).status_code == 200
            result.request.append(time.perf_counter() - started)
            revoked = await a.delete(
                f"/v1/api-keys/{victim.key.id}", headers={"Authorization": f"Bearer {admin}"}
            )
            assert revoked.status_code == 200
            committed = time.perf_counter()
            accepted = 0
            while (await b.get("/v1/api-keys", headers=auth)).status_code != 401:
                accepted += 1
                if time.perf_counter() - committed > 10:
                    raise AssertionError("process B kept serving a revoked key for 10 s")
            result.took.append(time.perf_counter() - committed)
            result.stale.append(accepted)
    await pool.close()
    return result


def _summary(seconds: list[float]) -> str:
    ms = sorted(1000 * value for value in seconds)
    p99 = ms[max(0, round(0.99 * len(ms)) - 1)]
    return f"p50 {statistics.median(ms):.1f} ms, p99 {p99:.1f} ms, max {ms[-1]:.1f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument(
        "--server-url", default=os.environ.get("BILLING_BENCH_SERVER_URL", SERVER_URL)
    )
    args = parser.parse_args()
    database_url = asyncio.run(prepare_database(args.server_url))
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("BILLING_")}
    base_env |= {
        "BILLING_DATABASE_URL": database_url,
        "BILLING_ENV": "test",
        "BILLING_LOG_LEVEL": "warning",
        "BILLING_WORKER_ENABLED": "false",
        # Every trial ends in a refused key: keep the failed-attempt limit out of the way.
        "BILLING_AUTH_FAILURES_PER_MINUTE": "1000000",
    }
    urls = []
    for _ in range(2):
        port = free_port()
        urls.append((f"http://127.0.0.1:{port}", base_env | {"BILLING_PORT": str(port)}))
    command = [sys.executable, "-m", "billing_service", "serve"]
    with (
        running(command, urls[0][1], urls[0][0] + "/readyz"),
        running(command, urls[1][1], urls[1][0] + "/readyz"),
    ):
        result = asyncio.run(measure(database_url, urls[0][0], urls[1][0], args.trials))
    print(f"machine: {machine()}")
    print(f"{len(result.took)} revocations, A's answer to B's first 401: {_summary(result.took)}")
    print(
        f"B accepted the revoked key afterwards in {sum(1 for n in result.stale if n)} trials "
        f"({sum(result.stale)} requests); one cached request to B: {_summary(result.request)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
