"""Cache invalidation through PostgreSQL LISTEN/NOTIFY: one dedicated connection per process.

In-memory caches subscribe to a channel. While the connection is up (`healthy`), a change
committed anywhere reaches every subscriber of every process, in commit order. When it drops,
each subscriber is told at once (`lost`) and must stop trusting what it holds; once reconnected,
each reloads from the database (`reload`, on the listening connection) while notifications
arriving meanwhile are held back, then replayed, so nothing committed during the gap is missed.
The connection is pinged, so a silently dead network is noticed within `ping_seconds`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Protocol

import asyncpg
import structlog

from billing_service.metrics import Metrics

logger = structlog.get_logger(__name__)

APPLICATION_NAME = "billing-service-listener"

_CONNECTION_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class ReloadFailed(Exception):
    """A subscriber cannot load its state (say, a migration it needs is not applied yet)."""


class Subscriber(Protocol):
    """An in-memory cache kept current by notifications on one channel."""

    async def reload(self, conn: asyncpg.Connection) -> None:
        """Replace everything held with the database's current state."""

    def notified(self, payload: str) -> None:
        """Apply one change; called in commit order, never while a reload runs."""

    def lost(self) -> None:
        """Notifications may have been missed: drop everything held."""


class Listener:
    """The process's LISTEN connection, kept open with backoff, fanning notifications out."""

    def __init__(
        self,
        dsn: str,
        *,
        metrics: Metrics | None = None,
        connect_timeout: float = 5.0,
        ping_seconds: float = 5.0,
        ping_timeout: float = 2.0,
        backoff_seconds: tuple[float, float] = (0.1, 5.0),
    ) -> None:
        self._dsn = dsn
        self._metrics = metrics
        self._connect_timeout = connect_timeout
        self._ping_seconds = ping_seconds
        self._ping_timeout = ping_timeout
        self._backoff = backoff_seconds
        self._subscribers: dict[str, list[Subscriber]] = {}
        self._conn: asyncpg.Connection | None = None
        self._held: list[tuple[str, str]] | None = None
        self._dropped = asyncio.Event()
        self._healthy = False
        self._task: asyncio.Task[None] | None = None

    @property
    def healthy(self) -> bool:
        """True while every notification committed since the subscribers' reload has reached
        them; caches must not be trusted otherwise."""
        return self._healthy

    def subscribe(self, channel: str, subscriber: Subscriber) -> None:
        if self._task is not None:
            raise RuntimeError("subscribe before the listener starts")
        self._subscribers.setdefault(channel, []).append(subscriber)

    async def start(self) -> None:
        """Connect now, so the first requests find loaded caches, then keep listening in the
        background; a failed first attempt is retried there."""
        connected = await self._connect()
        self._task = asyncio.create_task(
            self._keep_listening(failures=0 if connected else 1), name="invalidation-listener"
        )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        conn = self._lose("stopped", quietly=True)
        if conn is not None:
            with contextlib.suppress(*_CONNECTION_ERRORS):
                await conn.close(timeout=2)

    def resync(self) -> None:
        """Reconnect and reload every subscriber (a TRUNCATE leaves nothing row by row to apply)."""
        self._cut("resync requested")

    async def _keep_listening(self, failures: int) -> None:
        while True:
            try:
                if self._conn is None:
                    if failures:
                        await asyncio.sleep(self._delay(failures))
                    failures = 0 if await self._connect() else failures + 1
                    continue
                await self._watch()
            except Exception:  # a subscriber's bug must not end listening for good
                logger.exception("invalidation.unexpected_error")
                self._cut("unexpected error")
                failures += 1

    def _delay(self, failures: int) -> float:
        first, most = self._backoff
        jitter = random.uniform(0.5, 1.0)  # noqa: S311 - spreads reconnections, not a secret
        return float(min(most, first * 2 ** (failures - 1)) * jitter)

    async def _connect(self) -> bool:
        """Open the connection, LISTEN, reload every subscriber, then let notifications flow."""
        try:
            conn = await asyncpg.connect(
                self._dsn,
                timeout=self._connect_timeout,
                server_settings={"application_name": APPLICATION_NAME},
            )
        except _CONNECTION_ERRORS as exc:
            logger.warning("invalidation.connect_failed", error=type(exc).__name__)
            return False
        self._conn, self._held, self._dropped = conn, [], asyncio.Event()
        conn.add_termination_listener(self._on_terminated)
        try:
            for channel in self._subscribers:
                await conn.add_listener(channel, self._on_notification)
            for subscribers in self._subscribers.values():
                for subscriber in subscribers:
                    await subscriber.reload(conn)
        except (*_CONNECTION_ERRORS, ReloadFailed) as exc:
            logger.warning("invalidation.reload_failed", error=type(exc).__name__)
            self._cut("reload failed", quietly=True)
            return False
        if self._conn is not conn:  # lost while reloading
            return False
        held, self._held = self._held or [], None
        self._healthy = True
        for channel, payload in held:
            self._dispatch(channel, payload)
        if self._metrics is not None:
            self._metrics.listener_up.set(1)
            self._metrics.listener_connects.inc()
        logger.info("invalidation.listening", channels=sorted(self._subscribers))
        return True

    async def _watch(self) -> None:
        """Return once the connection is gone: closed under us, or failing its ping."""
        dropped, conn = self._dropped, self._conn
        while conn is not None and not dropped.is_set():
            try:
                await asyncio.wait_for(dropped.wait(), self._ping_seconds)
            except TimeoutError:
                try:
                    await conn.execute("SELECT 1", timeout=self._ping_timeout)
                except _CONNECTION_ERRORS:
                    self._cut("ping failed")

    def _on_notification(
        self, conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy, pid: int, channel: str,
        payload: object,
    ) -> None:  # fmt: skip
        if conn is not self._conn:
            return
        if self._held is not None:
            self._held.append((channel, str(payload)))
        else:
            self._dispatch(channel, str(payload))

    def _dispatch(self, channel: str, payload: str) -> None:
        if self._metrics is not None:
            self._metrics.notifications.labels(channel).inc()
        for subscriber in self._subscribers.get(channel, ()):
            subscriber.notified(payload)

    def _on_terminated(self, conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy) -> None:
        if conn is self._conn:
            self._cut("connection closed")

    def _lose(self, reason: str, *, quietly: bool = False) -> asyncpg.Connection | None:
        """Stop trusting every subscriber at once and detach the connection (returned, for the
        caller to close or cut off)."""
        conn, self._conn = self._conn, None
        if conn is None:
            return None
        self._healthy, self._held = False, None
        for subscribers in self._subscribers.values():
            for subscriber in subscribers:
                subscriber.lost()
        self._dropped.set()
        if self._metrics is not None:
            self._metrics.listener_up.set(0)
            if not quietly:
                self._metrics.listener_losses.inc()
        if not quietly:
            logger.warning("invalidation.lost", reason=reason)
        return conn

    def _cut(self, reason: str, *, quietly: bool = False) -> None:
        """`_lose`, then drop the connection without ceremony (it is dead or no longer wanted)."""
        conn = self._lose(reason, quietly=quietly)
        if conn is not None and not conn.is_closed():
            conn.terminate()
