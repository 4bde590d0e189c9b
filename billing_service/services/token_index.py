"""The hashes of live customer tokens, in memory, kept current by PostgreSQL notifications.

Used for one decision only: once a client address is limited for failed attempts, a token this
index does not hold is refused without a query, while a real one is still looked up and served.
Trusted only while the process listens for changes (billing_service/invalidation.py) and holds
every live token (at most `capacity`; past it, limited addresses cost a query per token again).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime

import asyncpg
import structlog

from billing_service.db import customer_tokens as db
from billing_service.db.notifications import trigger_installed
from billing_service.invalidation import Listener, ReloadFailed

logger = structlog.get_logger(__name__)

CHANNEL = "billing_customer_tokens"
_TRIGGER = ("customer_tokens", "customer_tokens_notify")
CAPACITY = 200_000


def _utc_now() -> datetime:
    return datetime.now(UTC)


class TokenIndex:
    """Live token hash → expiry; a `Subscriber` of the customer-token channel."""

    def __init__(
        self,
        listener: Listener | None = None,
        *,
        capacity: int = CAPACITY,
        now: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._listener = listener
        self._capacity = capacity
        self._now = now
        self._live: dict[bytes, datetime] = {}
        self._loaded = False
        if listener is not None:
            listener.subscribe(CHANNEL, self)

    @property
    def trusted(self) -> bool:
        return self._loaded and self._listener is not None and self._listener.healthy

    def recognises(self, token_hash: bytes) -> bool | None:
        """Whether a live token has this hash; None when this process cannot tell."""
        if not self.trusted:
            return None
        expires_at = self._live.get(token_hash)
        if expires_at is None:
            return False
        if expires_at <= self._now():
            del self._live[token_hash]
            return False
        return True

    async def reload(self, conn: asyncpg.Connection) -> None:
        if not await trigger_installed(conn, *_TRIGGER):
            raise ReloadFailed("customer_tokens notifications are not installed")
        rows = await db.select_live_token_hashes(conn, self._capacity + 1)
        self._live = dict(rows)
        self._loaded = len(rows) <= self._capacity
        if not self._loaded:
            self._live = {}
            logger.warning("token_index.over_capacity", capacity=self._capacity)

    def notified(self, payload: str) -> None:
        try:
            change = json.loads(payload)
            op = change["op"]
            if op == "reset":
                self._reset()
                return
            token_hash = bytes.fromhex(change["token_hash"])
            old_hash = bytes.fromhex(change.get("old_token_hash") or "")
            expires_at = None if op == "delete" else datetime.fromisoformat(change["expires_at"])
        except (ValueError, KeyError, TypeError):
            logger.exception("token_index.bad_notification")
            self._reset()
            return
        if not self._loaded:  # over capacity: nothing to keep up to date until a reload
            return
        self._live.pop(old_hash, None)
        self._live.pop(token_hash, None)
        if expires_at is not None and expires_at > self._now():
            self._add(token_hash, expires_at)

    def lost(self) -> None:
        self._loaded = False
        self._live = {}

    def _add(self, token_hash: bytes, expires_at: datetime) -> None:
        if len(self._live) >= self._capacity:
            now = self._now()
            self._live = {h: at for h, at in self._live.items() if at > now}
        if len(self._live) >= self._capacity:
            if self._loaded:
                logger.warning("token_index.over_capacity", capacity=self._capacity)
            self.lost()  # incomplete from here on: trust nothing until the next reload
            return
        self._live[token_hash] = expires_at

    def _reset(self) -> None:
        self.lost()
        if self._listener is not None:
            self._listener.resync()
