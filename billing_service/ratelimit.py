"""In-process rate limits: per API key (token buckets) and failed attempts per client address.

Limits are per process: with N replicas behind a load balancer a key may send N times the
configured rate. That is enough to stop one runaway caller from starving the others, and to keep
guessing cheap for us (keys carry 256 random bits, so it is hopeless anyway): a limited address's
guesses are refused without a query, while its valid credentials are still served.
"""

from __future__ import annotations

import ipaddress
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
    """At most `limit` failed attempts per client address per `window` seconds.

    An attempt is charged before its credential is checked (before any await), and refunded if
    the credential proves valid: so concurrent guesses cannot all slip through while their
    lookups are in flight, and a valid credential never uses up its address's allowance.
    """

    def __init__(
        self, limit: int, window: float = 60.0, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self._windows: dict[str, tuple[float, int]] = {}

    def charge(self, address: str) -> float | None:
        """Count one attempt and return None; or, when the address has used its allowance,
        count nothing and return the seconds until its window ends."""
        now = self.clock()
        started, failures = self._windows.get(address, (now, 0))
        if now - started >= self.window:
            started, failures = now, 0
        if failures >= self.limit:
            return started + self.window - now
        if address not in self._windows and len(self._windows) >= MAX_TRACKED:
            self._make_room(now)
        self._windows[address] = (started, failures + 1)
        return None

    def refund(self, address: str) -> None:
        """The charged attempt turned out valid: it was no failure."""
        entry = self._windows.get(address)
        if entry is not None and entry[1] > 0:
            self._windows[address] = (entry[0], entry[1] - 1)

    def _make_room(self, now: float) -> None:
        """Forget finished windows; if every tracked address is still within its window (a
        flood from very many addresses), forget them all rather than grow without bound."""
        self._windows = {
            address: entry
            for address, entry in self._windows.items()
            if now - entry[0] < self.window
        }
        if len(self._windows) >= MAX_TRACKED:
            self._windows.clear()


def client_group(host: str) -> str:
    """The unit failed attempts are counted by: the address, or for IPv6 its /64 network (one
    subscriber usually holds a whole /64, so counting single addresses would not slow anyone)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def retry_after_seconds(wait: float) -> int:
    return max(1, math.ceil(wait))
