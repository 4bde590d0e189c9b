"""In-process rate limits: per API key (token buckets) and failed logins per client address.

Limits are per process: with N replicas behind a load balancer a key may send N times the
configured rate. That is enough to stop one runaway caller from starving the others, and to make
brute-forcing keys hopeless (keys carry 256 random bits; the limit keeps the logs quiet).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable

MAX_TRACKED = 100_000


class TokenBuckets:
    """`rate` tokens per second per key, up to `burst`; a request takes one token."""

    def __init__(
        self, rate: float, burst: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._buckets: dict[Hashable, tuple[float, float]] = {}

    def take(self, key: Hashable) -> float | None:
        """None when the request may go ahead, else the seconds until a token is free."""
        now = self.clock()
        tokens, updated = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - updated) * self.rate)
        if tokens >= 1:
            if len(self._buckets) >= MAX_TRACKED:
                self._buckets.clear()
            self._buckets[key] = (tokens - 1, now)
            return None
        self._buckets[key] = (tokens, now)
        return (1 - tokens) / self.rate


class FailureWindows:
    """At most `limit` failures per client address per `window` seconds, then a wait."""

    def __init__(
        self, limit: int, window: float = 60.0, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self._windows: dict[str, tuple[float, int]] = {}

    def blocked_for(self, address: str) -> float | None:
        """Seconds the address must wait before trying again, or None."""
        started, failures = self._windows.get(address, (0.0, 0))
        remaining = started + self.window - self.clock()
        if failures >= self.limit and remaining > 0:
            return remaining
        return None

    def record_failure(self, address: str) -> None:
        now = self.clock()
        started, failures = self._windows.get(address, (now, 0))
        if now - started >= self.window:
            started, failures = now, 0
        if len(self._windows) >= MAX_TRACKED:
            self._windows.clear()
        self._windows[address] = (started, failures + 1)


def retry_after_seconds(wait: float) -> int:
    return max(1, math.ceil(wait))
