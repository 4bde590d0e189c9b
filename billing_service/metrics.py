"""Prometheus metrics: requests by route and status, latency, database pool use, refused
credentials, the cache-invalidation listener and the entitlement cache.

Each app owns its registry, so several apps in one process (tests) never share counters.
"""

from __future__ import annotations

from collections.abc import Iterator

import asyncpg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class PoolCollector(Collector):
    """Reads the asyncpg pool's size at scrape time instead of tracking it on every acquire."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    def collect(self) -> Iterator[GaugeMetricFamily]:
        size = self._pool.get_size()
        idle = self._pool.get_idle_size()
        yield GaugeMetricFamily("billing_db_pool_size", "Open connections in the pool.", size)
        yield GaugeMetricFamily("billing_db_pool_in_use", "Connections checked out.", size - idle)
        yield GaugeMetricFamily(
            "billing_db_pool_max", "Upper bound of the pool.", self._pool.get_max_size()
        )


class Metrics:
    """The app's registry and the instruments the HTTP middleware feeds."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "billing_http_requests",
            "HTTP requests by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "billing_http_request_duration_seconds",
            "HTTP request latency by method and route template.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

        self._request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self.events_received = Counter(
            "billing_webhook_events_received",
            "Signed Stripe events accepted, by whether they were new or duplicates.",
            ["outcome"],
            registry=self.registry,
        )
        self.events_processed = Counter(
            "billing_webhook_events_processed",
            "Stripe events whose effect was applied, by type.",
            ["type"],
            registry=self.registry,
        )
        self.events_failed = Counter(
            "billing_webhook_events_failed",
            "Failed processing attempts of Stripe events, by type.",
            ["type"],
            registry=self.registry,
        )
        self.events_pending = Gauge(
            "billing_webhook_events_pending",
            "Stripe events waiting to be processed (read at scrape time).",
            registry=self.registry,
        )
        self.oldest_pending_age = Gauge(
            "billing_webhook_oldest_pending_age_seconds",
            "Age of the oldest pending Stripe event; 0 when none is pending.",
            registry=self.registry,
        )
        self.auth_refused = Counter(
            "billing_auth_refused",
            "Refused credentials: `unauthenticated` (401) or `limited` (429, too many failures "
            "from the client's address).",
            ["reason"],
            registry=self.registry,
        )
        self.listener_up = Gauge(
            "billing_invalidation_listener_up",
            "1 while this process listens for cache invalidations (its caches are trusted); "
            "0 while it reconnects (its caches are bypassed).",
            registry=self.registry,
        )
        self.listener_connects = Counter(
            "billing_invalidation_listener_connects",
            "Times the invalidation listener connected and reloaded its subscribers.",
            registry=self.registry,
        )
        self.listener_losses = Counter(
            "billing_invalidation_listener_losses",
            "Times the invalidation listener lost its connection (caches cleared).",
            registry=self.registry,
        )
        self.notifications = Counter(
            "billing_invalidation_notifications",
            "Invalidation notifications received, by channel.",
            ["channel"],
            registry=self.registry,
        )
        self.entitlement_cache_hits = Counter(
            "billing_entitlement_cache_hits",
            "Checks and entitlement reads answered from this process's entitlement cache.",
            registry=self.registry,
        )
        self.entitlement_cache_misses = Counter(
            "billing_entitlement_cache_misses",
            "Entitlement cache misses: a customer's snapshot loaded from the database.",
            registry=self.registry,
        )
        self.entitlement_cache_bypassed = Counter(
            "billing_entitlement_cache_bypassed",
            "Checks and entitlement reads sent straight to the database: the cache is off, or "
            "the invalidation listener is down.",
            registry=self.registry,
        )
        self.entitlement_cache_invalidations = Counter(
            "billing_entitlement_cache_invalidations",
            "Entitlement cache invalidations, by scope: `customer` (one customer changed), "
            "`new_customer`, `catalog` (everything dropped), `local` (this process's own "
            "write, applied before it answers).",
            ["scope"],
            registry=self.registry,
        )
        self.entitlement_cache_size = Gauge(
            "billing_entitlement_cache_size",
            "Customers whose entitlement snapshot this process holds.",
            registry=self.registry,
        )

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        children = self._request_children.get((method, route, status))
        if children is None:  # label lookups take a lock; do them once per combination
            children = (
                self.requests.labels(method, route, str(status)),
                self.latency.labels(method, route),
            )
            self._request_children[(method, route, status)] = children
        children[0].inc()
        children[1].observe(seconds)

    def watch_pool(self, pool: asyncpg.Pool) -> None:
        self.registry.register(PoolCollector(pool))

    def render(self) -> bytes:
        return generate_latest(self.registry)
