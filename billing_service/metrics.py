"""Prometheus metrics: requests by route and status, latency, database pool use, refused
credentials, the cache-invalidation listener, the entitlement cache and the read replica.

Each app owns its registry, so several apps in one process (tests) never share counters.
"""

from __future__ import annotations

import bisect
import itertools
import math
import time
from collections.abc import Callable, Iterator

import asyncpg
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

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


# How prometheus_client writes a bucket's bound (`le`): "0.001", "1.0", "+Inf".
_go_float: Callable[[float], str] = floatToGoString


class _Series:
    """One label set's numbers, and when it first appeared (Prometheus' `_created`)."""

    __slots__ = ("buckets", "count", "created", "sum")

    def __init__(self, width: int) -> None:
        self.count = 0
        self.sum = 0.0
        self.buckets = [0] * width  # per bucket, not cumulative
        self.created = time.time()


class RequestCollector(Collector):
    """`billing_http_requests` (a counter by method, route template and status) and
    `billing_http_request_duration_seconds` (a histogram by method and route template), exposed
    exactly as prometheus_client's `Counter` and `Histogram` expose them.

    Kept as plain numbers updated on the event loop's one thread, which is also where scrapes
    run: the library's instruments take a lock on every increment and every observation, a
    noticeable share of a cheap request."""

    def __init__(self) -> None:
        self._bounds = (*LATENCY_BUCKETS, math.inf)
        self._les = [_go_float(bound) for bound in self._bounds]
        self._counts: dict[tuple[str, str, int], _Series] = {}
        self._latency: dict[tuple[str, str], _Series] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        counted = self._counts.get((method, route, status))
        if counted is None:
            counted = self._counts[(method, route, status)] = _Series(0)
        counted.count += 1
        timed = self._latency.get((method, route))
        if timed is None:
            timed = self._latency[(method, route)] = _Series(len(self._bounds))
        timed.count += 1
        timed.sum += seconds
        timed.buckets[bisect.bisect_left(self._bounds, seconds)] += 1  # the first bound >= it

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "billing_http_requests",
            "HTTP requests by method, route template and status.",
            labels=["method", "route", "status"],
        )
        for (method, route, status), counted in list(self._counts.items()):
            requests.add_metric(
                [method, route, str(status)], counted.count, created=counted.created
            )
        yield requests
        latency = HistogramMetricFamily(
            "billing_http_request_duration_seconds",
            "HTTP request latency by method and route template.",
            labels=["method", "route"],
        )
        for (method, route), timed in list(self._latency.items()):
            cumulative = list(itertools.accumulate(timed.buckets))
            latency.add_metric(
                [method, route], list(zip(self._les, cumulative, strict=True)), timed.sum
            )
            latency.samples.append(
                Sample(
                    latency.name + "_created",
                    {"method": method, "route": route},
                    timed.created,
                )
            )
        yield latency


class Metrics:
    """The app's registry and the instruments the HTTP middleware feeds."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = RequestCollector()
        self.registry.register(self.requests)
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

        self.read_fallbacks = Counter(
            "billing_db_read_fallbacks",
            "Lag-tolerant reads served by the primary although a read replica is configured, by "
            "reason: `down` (it does not answer, or failed answering) or `lag` (it is further "
            "behind than BILLING_READ_REPLICA_MAX_LAG_SECONDS).",
            ["reason"],
            registry=self.registry,
        )

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.observe(method, route, status, seconds)

    def watch_pool(self, pool: asyncpg.Pool) -> None:
        self.registry.register(PoolCollector(pool))

    def render(self) -> bytes:
        return generate_latest(self.registry)
