"""What a process knows about API keys without a query, kept current by PostgreSQL notifications.

Two things, trusted only while the process listens for changes (billing_service/invalidation.py):
the hash of every usable key, so a real key is told from a guess even when the caller's address
is limited; and keys read from the database in the last `ttl_seconds`, served from memory. A
revocation, from any process or the CLI or plain SQL, drops the key here when it commits; while
the listener is down, nothing here is trusted and every request reads the database.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import asyncpg
import structlog

from billing_service.db import api_keys as db
from billing_service.db.api_keys import ApiKey
from billing_service.db.notifications import trigger_installed
from billing_service.invalidation import Listener, ReloadFailed

logger = structlog.get_logger(__name__)

CHANNEL = "billing_api_keys"
_TRIGGER = ("api_keys", "api_keys_notify_update")


class KeyCache:
    """Usable key hashes and recently read keys; a `Subscriber` of the key channel."""

    def __init__(
        self,
        ttl_seconds: float,
        listener: Listener | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_seconds = ttl_seconds
        self._listener = listener
        self._clock = clock
        self._usable: dict[bytes, uuid.UUID] = {}
        self._hash_of: dict[uuid.UUID, bytes] = {}
        self._read: dict[bytes, tuple[ApiKey, float]] = {}
        self._loaded = False
        # Moves on every change; a database read that straddles one is not cached.
        self.generation = 0
        if listener is not None:
            listener.subscribe(CHANNEL, self)

    @property
    def trusted(self) -> bool:
        return self._loaded and self._listener is not None and self._listener.healthy

    def get(self, key_hash: bytes) -> ApiKey | None:
        """The key, if it was read within `ttl_seconds` and nothing has changed it since."""
        entry = self._read.get(key_hash) if self.trusted else None
        if entry is None:
            return None
        key, read_at = entry
        expired = key.expires_at is not None and key.expires_at <= datetime.now(UTC)
        if expired or self._clock() - read_at > self.ttl_seconds:
            del self._read[key_hash]
            return None
        return key

    def recognises(self, key_hash: bytes) -> bool | None:
        """Whether a usable key has this hash; None when this process cannot tell (not
        listening), so only the database can."""
        if not self.trusted:
            return None
        return key_hash in self._usable

    def remember(self, key_hash: bytes, key: ApiKey | None, generation: int) -> None:
        """Record what a database read found, unless a change arrived while it ran."""
        if generation != self.generation or not self.trusted:
            return
        if key is None:
            self._drop_hash(key_hash)
            return
        self._usable[key_hash] = key.id
        self._hash_of[key.id] = key_hash
        if self.ttl_seconds > 0:
            self._read[key_hash] = (key, self._clock())

    def forget(self, key_id: uuid.UUID) -> None:
        """This process revoked the key: drop it now, before its notification comes back."""
        self.generation += 1
        key_hash = self._hash_of.pop(key_id, None)
        if key_hash is not None:
            self._usable.pop(key_hash, None)
            self._read.pop(key_hash, None)

    async def reload(self, conn: asyncpg.Connection) -> None:
        if not await trigger_installed(conn, *_TRIGGER):
            raise ReloadFailed("api_keys notifications are not installed; run the migrations")
        rows = await db.select_usable_key_hashes(conn)
        self._clear()
        self._usable = {key_hash: key_id for key_id, key_hash in rows}
        self._hash_of = dict(rows)
        self._loaded = True

    def notified(self, payload: str) -> None:
        try:
            change = json.loads(payload)
            if change["op"] == "reset":
                self._reset()
                return
            key_id = uuid.UUID(change["id"])
            key_hash = bytes.fromhex(change["key_hash"])
            usable = bool(change["usable"])
        except (ValueError, KeyError, TypeError):
            logger.exception("key_cache.bad_notification")
            self._reset()
            return
        self.forget(key_id)
        if usable:
            self._usable[key_hash] = key_id
            self._hash_of[key_id] = key_hash

    def lost(self) -> None:
        self._clear()

    def _drop_hash(self, key_hash: bytes) -> None:
        key_id = self._usable.pop(key_hash, None)
        self._read.pop(key_hash, None)
        if key_id is not None:
            self._hash_of.pop(key_id, None)

    def _reset(self) -> None:
        """Nothing row by row to apply (a TRUNCATE, or a payload we cannot read): start over."""
        self._clear()
        if self._listener is not None:
            self._listener.resync()

    def _clear(self) -> None:
        self.generation += 1
        self._loaded = False
        self._usable, self._hash_of, self._read = {}, {}, {}
