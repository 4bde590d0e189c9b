"""The background loop of a serving process: webhook processing and delivery, emails.

Safe to run in every replica: work is leased with `FOR UPDATE SKIP LOCKED`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import asyncpg
import structlog

logger = structlog.get_logger(__name__)

IDLE_POLL_SECONDS = 2.0
ERROR_PAUSE_SECONDS = 5.0


class PollingWorker:
    """Runs `step` until stopped. `step` returns how much it did: after an empty round the worker
    waits `poll_seconds`, or less if `wake()` is called (new work was just stored)."""

    def __init__(
        self,
        name: str,
        step: Callable[[], Awaitable[int]],
        *,
        poll_seconds: float = IDLE_POLL_SECONDS,
    ) -> None:
        self.name = name
        self.step = step
        self.poll_seconds = poll_seconds
        self._wakeup = asyncio.Event()

    def wake(self) -> None:
        self._wakeup.set()

    async def run(self) -> None:
        logger.info("worker.started", worker=self.name)
        while True:
            try:
                done = await self.step()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                logger.exception("worker.round_failed", worker=self.name)
                await asyncio.sleep(ERROR_PAUSE_SECONDS)
                continue
            if done:
                continue
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self.poll_seconds)
