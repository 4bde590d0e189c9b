"""Each customer's entitlement context in memory, kept current by PostgreSQL notifications.

`check` and the entitlements read answer from a snapshot of what the context query returns for
every feature (plan, allowances, counters, credits, subscription), loaded with one query on a
miss. The decision itself is still taken per request with the request's `now`. A snapshot goes:
- when a trigger (migration 0017) reports a change to its customer, a new customer record, or a
  catalog change, in every process as the change commits;
- when this process changed the customer itself (`evict`, `clear`), before it answers;
- after `ttl_seconds`, a bound should a notification ever go missing;
- when `now` reaches a moment the query's answer depends on: a usage period's or the billing
  period's end, a past-due subscription's grace end, granted credits' expiry.
Nothing is held or served while the listener is down; a load that straddles an invalidation
of its customer is not stored. `size` bounds the snapshots (least recently used go first).
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from billing_service.db import usage as db
from billing_service.db.notifications import trigger_installed
from billing_service.db.pool import Executor
from billing_service.db.usage import FeatureContext
from billing_service.invalidation import Listener, ReloadFailed
from billing_service.metrics import Metrics
from billing_service.services.usage import resolve

CHANNEL = "billing_entitlements"
_TRIGGER = ("usage_counters", "usage_counters_notify_entitlements")
# Payloads besides a customer's uuid (see the migration), which a process's own announcement of
# its tracks follows with a space and its origin; "key:…" marks this process's own write.
EVERYONE = "*"
NEW_CUSTOMER = "new"
_KEY = "key:"
# Invalidations remembered for loads in flight; a load older than all of them is not stored.
_REMEMBERED = 4096


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """The context rows of one customer, by feature key, and when they stop being good."""

    contexts: list[FeatureContext]
    by_feature: dict[str, FeatureContext]
    customer_id: str | None
    loaded_at: float  # the cache's clock (monotonic)
    valid_until: datetime | None  # the request clock


def valid_until(
    contexts: list[FeatureContext], *, now: datetime, grace: timedelta
) -> datetime | None:
    """The first moment after `now` at which the context query could answer differently with
    nothing having changed: a usage window's end, the billing period's end (the query picks
    the counter and the period by time), a past-due subscription's grace end (it ranks
    subscriptions by whether they grant a plan now), granted credits' expiry."""
    moments: list[datetime] = []
    for context in contexts:
        period = resolve(context, now=now, grace=grace).period
        if period is not None and period.end is not None:
            moments.append(period.end)
    if contexts:
        first = contexts[0]
        if first.current_period_end is not None:
            moments.append(first.current_period_end)
        if first.status == "past_due" and first.past_due_since is not None:
            moments.append(first.past_due_since + grace)
    moments.extend(c.credits_expire_at for c in contexts if c.credits_expire_at is not None)
    later = [moment for moment in moments if moment > now]
    return min(later, default=None)


class EntitlementCache:
    """Snapshots by customer key, least recently used first; a `Subscriber` of the channel."""

    def __init__(
        self,
        size: int,
        ttl_seconds: float,
        listener: Listener | None = None,
        *,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.size = size
        self.ttl_seconds = ttl_seconds
        # Tags what this process publishes after its own tracks, which it has already applied.
        self.origin = secrets.token_hex(8)
        self._listener = listener
        self._clock = clock
        self._entries: OrderedDict[str, _Snapshot] = OrderedDict()
        self._key_of: dict[str, str] = {}  # customer uuid -> key, for notifications
        self._unknown: set[str] = set()  # keys whose snapshot has no customer record
        self._loaded = False
        self._seq = 0  # moves on every invalidation
        self._recent: deque[str] = deque(maxlen=_REMEMBERED)  # their targets, newest last
        metrics = metrics or Metrics()
        metrics.entitlement_cache_size.set_function(lambda: len(self._entries))
        self._hits = metrics.entitlement_cache_hits
        self._misses = metrics.entitlement_cache_misses
        self._bypassed = metrics.entitlement_cache_bypassed
        self._invalidations = {
            scope: metrics.entitlement_cache_invalidations.labels(scope)
            for scope in ("customer", "new_customer", "catalog", "local")
        }
        if listener is not None and self.enabled:
            listener.subscribe(CHANNEL, self)

    @property
    def enabled(self) -> bool:
        return self.size > 0 and self.ttl_seconds > 0

    @property
    def trusted(self) -> bool:
        return self._loaded and self._listener is not None and self._listener.healthy

    async def contexts(
        self, pool: Executor, customer_key: str, feature_key: str | None, *, now: datetime,
        grace: timedelta,
    ) -> list[FeatureContext]:  # fmt: skip
        """What `db.select_context` would answer now: from the snapshot when one is good, else
        from the database (storing every feature's rows when this process is listening)."""
        if not self.trusted:
            self._bypassed.inc()
            return await db.select_context(pool, customer_key, feature_key, now=now, grace=grace)
        snapshot = self._get(customer_key, now)
        if snapshot is None:
            self._misses.inc()
            started = self._seq
            contexts = await db.select_context(pool, customer_key, None, now=now, grace=grace)
            snapshot = self._store(customer_key, contexts, started, now=now, grace=grace)
        else:
            self._hits.inc()
        if feature_key is None:
            return snapshot.contexts
        found = snapshot.by_feature.get(feature_key)
        return [] if found is None else [found]

    def evict(self, customer_key: str) -> None:
        """This process changed the customer: drop their snapshot before answering."""
        self._invalidate(_KEY + customer_key, "local")
        self._drop(customer_key)

    def clear(self) -> None:
        """This process changed the catalog: drop everything before answering."""
        self._invalidate(EVERYONE, "local")
        self._drop_all()

    # -- Subscriber ------------------------------------------------------------------------

    async def reload(self, conn: asyncpg.Connection) -> None:
        if not await trigger_installed(conn, *_TRIGGER):
            raise ReloadFailed("entitlement notifications are not installed; run the migrations")
        self._invalidate(EVERYONE, None)
        self._drop_all()
        self._loaded = True

    def notified(self, payload: str) -> None:
        if payload == EVERYONE:
            self._invalidate(payload, "catalog")
            self._drop_all()
        elif payload == NEW_CUSTOMER:
            self._invalidate(payload, "new_customer")
            for unknown in list(self._unknown):
                self._drop(unknown)
        else:
            customer_id, _, origin = payload.partition(" ")
            if origin == self.origin:
                return  # this process's own track: evicted before it answered, and every load
                # since began after that commit
            self._invalidate(customer_id, "customer")
            key = self._key_of.get(customer_id)
            if key is not None:
                self._drop(key)

    def lost(self) -> None:
        self._loaded = False
        self._invalidate(EVERYONE, None)
        self._drop_all()

    # -- inside ----------------------------------------------------------------------------

    def _get(self, customer_key: str, now: datetime) -> _Snapshot | None:
        snapshot = self._entries.get(customer_key)
        if snapshot is None:
            return None
        if self._clock() - snapshot.loaded_at >= self.ttl_seconds or (
            snapshot.valid_until is not None and now >= snapshot.valid_until
        ):
            self._drop(customer_key)
            return None
        self._entries.move_to_end(customer_key)
        return snapshot

    def _store(
        self, customer_key: str, contexts: list[FeatureContext], started: int, *, now: datetime,
        grace: timedelta,
    ) -> _Snapshot:  # fmt: skip
        """Keep what a load found, unless its customer was invalidated while it ran."""
        first = contexts[0].customer_id if contexts else None
        customer_id = None if first is None else str(first)
        snapshot = _Snapshot(
            contexts=contexts,
            by_feature={context.feature_key: context for context in contexts},
            customer_id=customer_id,
            loaded_at=self._clock(),
            valid_until=valid_until(contexts, now=now, grace=grace),
        )
        if not self.trusted or self._invalidated_since(started, customer_key, customer_id):
            return snapshot
        self._drop(customer_key)
        self._entries[customer_key] = snapshot
        if customer_id is None:
            self._unknown.add(customer_key)
        else:
            self._key_of[customer_id] = customer_key
        while len(self._entries) > self.size:
            self._drop(next(iter(self._entries)))
        return snapshot

    def _invalidated_since(self, started: int, customer_key: str, customer_id: str | None) -> bool:
        missed = self._seq - started
        if missed == 0:
            return False
        if missed > len(self._recent):
            return True  # too many to tell: assume this customer was among them
        targets = {EVERYONE, _KEY + customer_key, customer_id or NEW_CUSTOMER}
        return any(self._recent[-n] in targets for n in range(1, missed + 1))

    def _invalidate(self, target: str, scope: str | None) -> None:
        self._seq += 1
        self._recent.append(target)
        if scope is not None:
            self._invalidations[scope].inc()

    def _drop(self, customer_key: str) -> None:
        snapshot = self._entries.pop(customer_key, None)
        if snapshot is None:
            return
        if snapshot.customer_id is None:
            self._unknown.discard(customer_key)
        elif self._key_of.get(snapshot.customer_id) == customer_key:
            del self._key_of[snapshot.customer_id]

    def _drop_all(self) -> None:
        self._entries.clear()
        self._key_of.clear()
        self._unknown.clear()
