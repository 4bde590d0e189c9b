"""CPU time per request, read from /proc: what the serving processes and the PostgreSQL backends
of the bench database spent during a measurement. On a shared machine throughput moves with
everyone else's load; CPU time per request moves much less, so it explains the ratios."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system time of one process so far (0 once it is gone)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime
    return 0.0


def process_tree(pid: int) -> list[int]:
    """`pid` and its children (uvicorn's workers when there are several)."""
    with contextlib.suppress(OSError):
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return [pid, *(int(child) for child in children)]
    return [pid]


def database_backends(database_url: str) -> list[int]:
    """The PostgreSQL backends connected to the bench database (the server's pool)."""

    async def query() -> list[int]:
        """The backends' process ids, from pg_stat_activity."""
        conn = await asyncpg.connect(database_url)
        try:
            rows = await conn.fetch(
                "SELECT pid FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            return [row["pid"] for row in rows]
        finally:
            await conn.close()

    return asyncio.run(query())


def is_local(database_url: str) -> bool:
    """Whether the database runs on this machine, where /proc can see its backends."""
    return urlsplit(database_url).hostname in {None, "", "127.0.0.1", "localhost", "::1"}


class CpuMeter:
    """CPU seconds spent between `start()` and `stop()` by a server and by its database's
    backends (a backend that appears in between counts from zero)."""

    def __init__(self, server_pid: int, database_url: str | None) -> None:
        self._server_pid = server_pid
        self._database_url = database_url
        self._server: dict[int, float] = {}
        self._database: dict[int, float] = {}
        self.server_seconds = 0.0
        self.database_seconds = 0.0

    def _backends(self) -> list[int]:
        """The backends to count, or none when the database is not on this machine."""
        if self._database_url is None or not is_local(self._database_url):
            return []
        return database_backends(self._database_url)

    def start(self) -> None:
        """Take the CPU times before the measured run."""
        self._server = {pid: cpu_seconds(pid) for pid in process_tree(self._server_pid)}
        self._database = {pid: cpu_seconds(pid) for pid in self._backends()}

    def stop(self) -> None:
        """Take them again after it and keep the differences."""
        self.server_seconds = sum(
            cpu_seconds(pid) - self._server.get(pid, 0.0) for pid in process_tree(self._server_pid)
        )
        self.database_seconds = sum(
            cpu_seconds(pid) - self._database.get(pid, 0.0) for pid in self._backends()
        )
