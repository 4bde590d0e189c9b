"""Cross-process invalidation lag: how long after a `track` answered by one `serve` process does
another process, on the same database, answer a `check` that reflects it.

Each trial: a check on B for the customer (so that a cache on B holds the customer's snapshot),
a track of 1 unit on A with a fresh idempotency key, then checks on B, back to back on one
kept-alive connection, until B reports a `used` at least as large as A's answer. The lag is the
time from A's answer arriving to B's first reflecting answer arriving, so it includes one B
round trip: without any cache it is about one check's latency. A trial that does not converge
within `CONVERGE_SECONDS` counts as a failure.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

import httpx

CONVERGE_SECONDS = 5.0
LAG_CUSTOMERS = 10  # bench_0 … bench_9, in turn


@dataclass(frozen=True)
class LagRun:
    """The lags of one series of trials, in milliseconds, and the trials that never converged."""

    lags_ms: list[float]
    failures: int
    polls: int  # checks on B in all, the first (cache-warming) one of each trial excluded


async def _used(client: httpx.AsyncClient, customer: str, feature: str) -> int:
    """B's answer to a check: the customer's `used` this period."""
    response = await client.post(
        "/v1/usage/check", json={"customer_id": customer, "feature": feature}
    )
    response.raise_for_status()
    used: int = response.json()["used"]
    return used


async def measure_lag(
    writer_url: str, reader_url: str, *, api_key: str, trials: int, feature: str = "ai_calls"
) -> LagRun:
    """Run `trials` trials, writing through `writer_url` and reading through `reader_url`."""
    headers = {"Authorization": f"Bearer {api_key}"}
    run = secrets.token_hex(4)
    lags: list[float] = []
    failures = polls = 0
    async with (
        httpx.AsyncClient(base_url=writer_url, headers=headers, timeout=10) as writer,
        httpx.AsyncClient(base_url=reader_url, headers=headers, timeout=10) as reader,
    ):
        for trial in range(trials):
            customer = f"bench_{trial % LAG_CUSTOMERS}"
            await _used(reader, customer, feature)
            tracked = await writer.post(
                "/v1/usage/track",
                json={
                    "customer_id": customer,
                    "feature": feature,
                    "amount": 1,
                    "idempotency_key": f"lag-{run}-{trial}",
                },
            )
            tracked.raise_for_status()
            written = time.perf_counter()
            target: int = tracked.json()["used"]
            while True:
                seen = await _used(reader, customer, feature)
                polls += 1
                elapsed = time.perf_counter() - written
                if seen >= target:
                    lags.append(elapsed * 1000)
                    break
                if elapsed > CONVERGE_SECONDS:
                    failures += 1
                    break
    return LagRun(lags, failures, polls)
