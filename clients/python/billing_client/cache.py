"""An in-process cache of entitlements: a short TTL, emptied per customer by webhooks.

Reading entitlements on every page view costs a round trip; a few seconds of staleness is usually
fine, and the service's webhooks say when it is not. `handle_webhook` verifies a delivery and
evicts its customer, so a plan change or a reached limit shows on the next read.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

from billing_client.models import Entitlements
from billing_client.webhooks import DEFAULT_TOLERANCE_SECONDS, WebhookEvent, verify_webhook


class EntitlementCache:
    """Entitlements per customer for `ttl_seconds`; safe to share between threads and clients."""

    def __init__(
        self,
        ttl_seconds: float = 30.0,
        *,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_seconds = ttl_seconds
        self.max_entries = max_entries
        self._clock = clock
        self._entries: dict[str, tuple[float, Entitlements]] = {}
        self._lock = threading.Lock()
        # Bumped by every eviction: a read that began before one may not store what it fetched.
        self._generation = 0

    def get(self, customer_id: str) -> Entitlements | None:
        """The cached entitlements, or None when absent or older than the TTL."""
        with self._lock:
            entry = self._entries.get(customer_id)
            if entry is None:
                return None
            stored_at, value = entry
            if self._clock() - stored_at >= self.ttl_seconds:
                del self._entries[customer_id]
                return None
            return value

    def generation(self) -> int:
        """Take this before fetching; pass it to `put` so an eviction meanwhile wins."""
        with self._lock:
            return self._generation

    def put(self, value: Entitlements, generation: int | None = None) -> None:
        with self._lock:
            if generation is not None and generation != self._generation:
                return
            self._entries.pop(value.customer_id, None)
            while len(self._entries) >= self.max_entries:
                del self._entries[next(iter(self._entries))]  # the oldest entry
            self._entries[value.customer_id] = (self._clock(), value)

    def evict(self, customer_id: str) -> bool:
        """Forget the customer; whether they were cached."""
        with self._lock:
            self._generation += 1
            return self._entries.pop(customer_id, None) is not None

    def clear(self) -> None:
        with self._lock:
            self._generation += 1
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def handle_webhook(
        self,
        secret: str,
        body: bytes | str,
        headers: Mapping[str, str],
        *,
        tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
    ) -> WebhookEvent:
        """Verify a delivery (raising `InvalidWebhook` if it does not verify), evict the
        customer it is about, and return the event for the app's own handling."""
        event = verify_webhook(secret, body, headers, tolerance_seconds=tolerance_seconds)
        if event.customer_id is not None:
            self.evict(event.customer_id)
        return event
