"""What announcing a track costs PostgreSQL: commits per second of a counter update at 32
connections, announced not at all, by `pg_notify` inside every transaction (the trigger of
migration 0017), or the service's way (the trigger silent on connections with
`billing.publishes_usage`, customers published after commit by `UsagePublisher`, many per
notifying transaction). A notifying commit holds a cluster-wide lock through its WAL flush.

    .venv/bin/python -m bench.notify_cost [--seconds 5] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import time
import uuid

import asyncpg

from bench.run import SERVER_URL
from billing_service.db.migrations import apply_migrations, discover_migrations
from billing_service.db.pool import create_pool
from billing_service.resources import migrations_dir
from billing_service.services.usage_publisher import UsagePublisher

CONNECTIONS = 32
CUSTOMERS = 200
MODES = ("none", "trigger", "published")
_UPDATE = "UPDATE usage_counters SET used = used + 1 WHERE customer_id = $1 AND feature_id = $2"
_TRIGGER = "usage_counters_notify_entitlements"


async def _seed(conn: asyncpg.Connection) -> tuple[uuid.UUID, list[tuple[uuid.UUID, str]]]:
    """A metered feature and `CUSTOMERS` customers with one counter each."""
    feature: uuid.UUID = await conn.fetchval(
        "INSERT INTO features (key, name, kind) VALUES ('f', 'F', 'metered') RETURNING id"
    )
    customers = []
    for n in range(CUSTOMERS):
        key = f"c{n}"
        customer: uuid.UUID = await conn.fetchval(
            "INSERT INTO customers (external_id) VALUES ($1) RETURNING id", key
        )
        await conn.execute(
            "INSERT INTO usage_counters (customer_id, feature_id, period_start) "
            "VALUES ($1, $2, '2026-01-01')",
            customer,
            feature,
        )
        customers.append((customer, key))
    return feature, customers


async def _updates_per_second(
    pool: asyncpg.Pool, feature: uuid.UUID, customers: list[tuple[uuid.UUID, str]],
    publisher: UsagePublisher | None, seconds: float,
) -> float:  # fmt: skip
    """Counter updates committed per second by `CONNECTIONS` concurrent writers."""
    stop = time.monotonic() + seconds
    done = 0

    async def writer(first: int) -> None:
        nonlocal done
        n = first
        while time.monotonic() < stop:
            customer, key = customers[n % len(customers)]
            await pool.execute(_UPDATE, customer, feature)
            if publisher is not None:
                publisher.publish(key)
            n += CONNECTIONS
            done += 1

    await asyncio.gather(*(writer(i) for i in range(CONNECTIONS)))
    return done / seconds


async def measure(server_url: str, seconds: float, repeat: int) -> dict[str, list[float]]:
    """Interleaved runs of every mode (the order rotates), in a scratch database beside the
    one `server_url` names."""
    database = f"bench_notify_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(server_url)
    await admin.execute(f'CREATE DATABASE "{database}"')
    url = f"{server_url.rsplit('/', 1)[0]}/{database}"
    results: dict[str, list[float]] = {mode: [] for mode in MODES}
    try:
        conn = await asyncpg.connect(url)
        await apply_migrations(conn, discover_migrations(migrations_dir()))
        feature, customers = await _seed(conn)
        plain = await create_pool(url, min_size=CONNECTIONS, max_size=CONNECTIONS)
        service = await create_pool(
            url, min_size=CONNECTIONS + 1, max_size=CONNECTIONS + 1, publishes_usage=True
        )
        for repetition in range(repeat):
            for mode in MODES[repetition % 3 :] + MODES[: repetition % 3]:
                state = "DISABLE" if mode == "none" else "ENABLE"
                await conn.execute(f"ALTER TABLE usage_counters {state} TRIGGER {_TRIGGER}")
                publisher = UsagePublisher(service, "bench") if mode == "published" else None
                if publisher is not None:
                    publisher.start()
                pool = service if mode == "published" else plain
                rate = await _updates_per_second(pool, feature, customers, publisher, seconds)
                if publisher is not None:
                    await publisher.stop()
                results[mode].append(rate)
                print(f"  {mode:10} r{repetition}: {rate:8,.0f} updates/s", flush=True)
        await plain.close()
        await service.close()
        await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()
    return results


def main() -> None:
    """Print each run and the median per mode."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--server-url", default=SERVER_URL)
    args = parser.parse_args()
    results = asyncio.run(measure(args.server_url, args.seconds, args.repeat))
    for mode, rates in results.items():
        runs = " / ".join(f"{rate:,.0f}" for rate in rates)
        print(f"{mode:10} median {statistics.median(rates):8,.0f} updates/s ({runs})")


if __name__ == "__main__":
    main()
