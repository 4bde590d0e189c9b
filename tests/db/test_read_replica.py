"""Lag-tolerant reads on a real streaming replica: `pg_basebackup -R` of the test server into a
temporary folder, a second `postgres` on a free port replaying its WAL, and the real app reading
lists from it, falling back to the primary (and counting it) when the replica lags or is down.

The replica copies the whole test server and writes nothing back to it: no replication slot is
made, so stopping the replica leaves the primary as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from billing_service.config import Settings
from billing_service.read_replica import probe_interval
from tests.conftest import app_client
from tests.routes.test_checkout import bearer
from tests.support import free_port, with_database

START_TIMEOUT = 20.0
CAUGHT_UP_TIMEOUT = 10.0


def _postgres_bindir(major: int) -> Path | None:
    """The binaries of the server's major version: Debian's versioned folder, else pg_config's."""
    versioned = Path(f"/usr/lib/postgresql/{major}/bin")
    if (versioned / "pg_basebackup").exists():
        return versioned
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        found = subprocess.run(  # noqa: S603 - pg_config found on PATH, no input
            [pg_config, "--bindir"], capture_output=True, text=True, check=False
        )
        bindir = Path(found.stdout.strip())
        if (bindir / "pg_basebackup").exists():
            return bindir
    on_path = shutil.which("pg_basebackup")
    return Path(on_path).parent if on_path else None


@dataclass
class Replica:
    """A hot standby of the test server, started and stopped by the test."""

    bindir: Path
    pgdata: Path
    port: int
    settings: dict[str, str]
    run_as: str | None  # PostgreSQL refuses to run as root: then as this user
    process: subprocess.Popen[bytes] | None = None

    def _command(self, *args: str) -> list[str]:
        return ["runuser", "-u", self.run_as, "--", *args] if self.run_as else list(args)

    def start(self) -> None:
        options = {
            "port": str(self.port),
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.pgdata),
            "hot_standby": "on",
            "fsync": "off",
            "shared_buffers": "16MB",
            "logging_collector": "off",
            **self.settings,
        }
        args = [str(self.bindir / "postgres"), "-D", str(self.pgdata)]
        for name, value in options.items():
            args += ["-c", f"{name}={value}"]
        log = (self.pgdata.parent / "replica.log").open("ab")
        self.process = subprocess.Popen(  # noqa: S603 - our own binaries and arguments
            self._command(*args), stdout=log, stderr=log, start_new_session=True
        )
        log.close()

    def stop(self) -> None:
        if self.process is None:
            return
        # SIGINT to the postmaster itself (not to runuser): a fast shutdown, which ends the
        # sessions the app holds open instead of waiting for them.
        pid_file = self.pgdata / "postmaster.pid"
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGINT)
        else:
            self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def log_tail(self) -> str:
        path = self.pgdata.parent / "replica.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


# Settings a hot standby must hold at least as high as its primary, or it refuses to replay.
_AT_LEAST_PRIMARY = (
    "max_connections",
    "max_worker_processes",
    "max_wal_senders",
    "max_prepared_transactions",
    "max_locks_per_transaction",
)


async def _replication_problem(admin: asyncpg.Connection) -> str | None:
    wal_level = await admin.fetchval("SHOW wal_level")
    if wal_level not in ("replica", "logical"):
        return f"wal_level is {wal_level}; streaming needs replica (PostgreSQL's default)"
    if int(await admin.fetchval("SHOW max_wal_senders")) < 1:
        return "max_wal_senders is 0; streaming needs at least 1"
    return None


def _run_as() -> str | None:
    """Who runs the replica: this user, or `postgres` when this is root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail("running as root, and no `postgres` user to run the replica's server as")
    return "postgres"


@pytest.fixture(scope="module")
async def replica(server_url: str, database_url: str) -> AsyncIterator[Replica]:
    """A streaming replica of the test server, with the session's database already on it."""
    admin = await asyncpg.connect(server_url)
    try:
        major = int(await admin.fetchval("SHOW server_version_num")) // 10_000
        problem = await _replication_problem(admin)
        standby_settings = {
            name: await admin.fetchval(f"SHOW {name}") for name in _AT_LEAST_PRIMARY
        }
    finally:
        await admin.close()
    bindir = _postgres_bindir(major)
    if bindir is None:
        pytest.skip(f"pg_basebackup (PostgreSQL {major}) is not installed: no replica to start")
    if problem is not None:
        pytest.fail(f"the test server cannot stream to a replica: {problem}")
    server = urlsplit(server_url)
    run_as = _run_as()
    with _folder(run_as) as folder:
        pgdata = folder / "pgdata"
        command = [
            *(str(bindir / "pg_basebackup"), "--pgdata", str(pgdata), "--write-recovery-conf"),
            *("--wal-method=stream", "--checkpoint=fast", "--no-sync"),
            *("--host", server.hostname or "127.0.0.1", "--port", str(server.port or 5432)),
            *("--username", server.username or "postgres"),
        ]
        # A busy shared server may end the backup's stream (its temporary slot released at a
        # forced checkpoint): try again, but report a refused connection at once.
        for _attempt in range(3):
            backup = await asyncio.to_thread(
                subprocess.run, command, capture_output=True, text=True, check=False
            )
            if backup.returncode == 0 or "pg_hba.conf" in backup.stderr:
                break
        if backup.returncode != 0:
            pytest.fail(
                "pg_basebackup could not copy the test server. It needs a replication connection "
                "from 127.0.0.1 (`host replication all 127.0.0.1/32 trust` in pg_hba.conf, then "
                f"reload; .ci/run adds it). It said: {backup.stderr.strip()}"
            )
        _own_config(pgdata, run_as)
        replica = Replica(bindir, pgdata, free_port(), standby_settings, run_as)
        replica.start()
        try:
            await _wait_until_it_answers(replica, urlsplit(database_url).path.lstrip("/"))
            yield replica
        finally:
            replica.stop()


class _folder:
    """A temporary folder the replica's user owns (PostgreSQL wants its data folder 0700)."""

    def __init__(self, run_as: str | None) -> None:
        self._run_as = run_as
        self._path = Path(tempfile.mkdtemp(prefix="billing-replica-"))

    def __enter__(self) -> Path:
        if self._run_as is not None:
            user = pwd.getpwnam(self._run_as)
            os.chown(self._path, user.pw_uid, user.pw_gid)
        return self._path

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self._path, ignore_errors=True)


def _own_config(pgdata: Path, run_as: str | None) -> None:
    """The copy's own configuration: the primary's files may live elsewhere (Debian keeps them
    in /etc) or name the primary's paths. Its recovery settings stay in postgresql.auto.conf."""
    (pgdata / "postgresql.conf").write_text("")
    (pgdata / "pg_hba.conf").write_text("local all all trust\nhost all all 127.0.0.1/32 trust\n")
    (pgdata / "pg_ident.conf").write_text("")
    for stale in ("postmaster.pid", "postmaster.opts"):
        (pgdata / stale).unlink(missing_ok=True)
    pgdata.chmod(0o700)
    if run_as is not None:
        user = pwd.getpwnam(run_as)
        for path in [pgdata, *pgdata.rglob("*")]:
            os.chown(path, user.pw_uid, user.pw_gid, follow_symlinks=False)


async def _wait_until_it_answers(replica: Replica, database: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            conn = await asyncpg.connect(replica.url(database), timeout=2)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            if time.monotonic() > deadline or (replica.process and replica.process.poll()):
                pytest.fail(f"the replica did not start ({exc}): {replica.log_tail()}")
            await asyncio.sleep(0.1)
            continue
        try:
            assert await conn.fetchval("SELECT pg_is_in_recovery()"), "not a standby"
        finally:
            await conn.close()
        return


@dataclass
class Standby:
    """The replica as the tests use it: its database's URL, and replay paused or resumed."""

    replica: Replica
    url: str

    async def _execute(self, sql: str) -> None:
        conn = await asyncpg.connect(self.url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def pause(self) -> None:
        """Pause replay, and wait until it is paused (a request takes effect at the next
        record replayed, or while waiting for WAL)."""
        conn = await asyncpg.connect(self.url)
        try:
            await conn.execute("SELECT pg_wal_replay_pause()")
            deadline = time.monotonic() + CAUGHT_UP_TIMEOUT
            while await conn.fetchval("SELECT pg_get_wal_replay_pause_state()") != "paused":
                assert time.monotonic() < deadline, "replay did not pause"
                await asyncio.sleep(0.02)
        finally:
            await conn.close()

    async def resume(self) -> None:
        await self._execute("SELECT pg_wal_replay_resume()")

    async def catch_up(self, pool: asyncpg.Pool) -> None:
        """Wait until the replica has replayed everything the primary has flushed now."""
        target = await pool.fetchval("SELECT pg_current_wal_flush_lsn()")
        conn = await asyncpg.connect(self.url)
        try:
            deadline = time.monotonic() + CAUGHT_UP_TIMEOUT
            while not await conn.fetchval("SELECT pg_last_wal_replay_lsn() >= $1", target):
                assert time.monotonic() < deadline, "the replica did not catch up"
                await asyncio.sleep(0.02)
        finally:
            await conn.close()


@pytest.fixture
async def standby(replica: Replica, database_url: str) -> AsyncIterator[Standby]:
    """The running replica; replay is resumed after each test, and it is started again if a
    test stopped it."""
    database = urlsplit(database_url).path.lstrip("/")
    if replica.process is None:
        replica.start()
        await _wait_until_it_answers(replica, database)
    ready = Standby(replica, with_database(replica.url("postgres"), database))
    yield ready
    if replica.process is not None:
        await ready.resume()


def replica_settings(settings: Settings, read_url: str, *, max_lag: float) -> Settings:
    return settings.model_copy(
        update={
            "database_read_url": SecretStr(read_url),
            "read_replica_max_lag_seconds": max_lag,
        }
    )


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text `text` (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


async def customer_ids(client: httpx.AsyncClient, key: str) -> set[str]:
    response = await client.get("/v1/customers", headers=bearer(key))
    assert response.status_code == 200, response.text
    return {row["customer_id"] for row in response.json()["data"]}


async def add_customer(pool: asyncpg.Pool, external_id: str) -> None:
    await pool.execute("INSERT INTO customers (external_id) VALUES ($1)", external_id)


async def test_lists_are_read_from_the_replica_and_see_writes_once_replayed(
    settings: Settings, pool: asyncpg.Pool, admin_key: str, standby: Standby
) -> None:
    """With replay paused, a customer written on the primary is found by its own (primary)
    route at once but is missing from the list, which the replica serves; once replay resumes
    the list shows it. No read fell back."""
    await add_customer(pool, "replayed_before")
    await standby.catch_up(pool)
    async with app_client(replica_settings(settings, standby.url, max_lag=600)) as client:
        assert await customer_ids(client, admin_key) == {"replayed_before"}
        await standby.pause()
        await add_customer(pool, "written_while_paused")
        found = await client.get("/v1/customers/written_while_paused", headers=bearer(admin_key))
        assert found.status_code == 200  # the primary has it
        listed = await customer_ids(client, admin_key)
        metrics = (await client.get("/metrics")).text.splitlines()
        fallbacks = [
            line for line in metrics if line.startswith(("billing_db_re", "billing_db_read"))
        ]
        assert listed == {"replayed_before"}, fallbacks  # the replica has not replayed it yet
        await standby.resume()
        await standby.catch_up(pool)
        both = {"replayed_before", "written_while_paused"}
        deadline = time.monotonic() + CAUGHT_UP_TIMEOUT
        while (listed := await customer_ids(client, admin_key)) != both:
            assert time.monotonic() < deadline, listed
            await asyncio.sleep(0.05)
        text = (await client.get("/metrics")).text
    assert metric(text, "billing_db_replica_up") == 1
    assert metric(text, "billing_db_read_fallbacks_total", reason="lag") == 0
    assert metric(text, "billing_db_read_fallbacks_total", reason="down") == 0


async def test_a_primary_with_nothing_to_send_leaves_the_replica_in_use(
    settings: Settings, pool: asyncpg.Pool, admin_key: str, standby: Standby
) -> None:
    """Seconds without a write to the app's database: the replica, caught up, is not taken as
    behind (the time since its last replayed commit grows while nothing commits, and would be
    the wrong measure), so every list is served by it and none falls back."""
    await add_customer(pool, "last_write")
    await standby.catch_up(pool)
    max_lag = 2.0
    async with app_client(replica_settings(settings, standby.url, max_lag=max_lag)) as client:
        deadline = time.monotonic() + 2 * max_lag
        while time.monotonic() < deadline:
            assert await customer_ids(client, admin_key) == {"last_write"}
            await asyncio.sleep(0.2)
        text = (await client.get("/metrics")).text
    assert metric(text, "billing_db_read_fallbacks_total", reason="lag") == 0
    assert metric(text, "billing_db_replica_lag_seconds") < max_lag


async def test_a_replica_further_behind_than_allowed_is_bypassed_and_counted(
    settings: Settings, pool: asyncpg.Pool, admin_key: str, standby: Standby
) -> None:
    """Replay paused while the primary moves on: once the measured lag passes
    BILLING_READ_REPLICA_MAX_LAG_SECONDS, lists come from the primary (so they show the newest
    write) and each is counted as a `lag` fallback; after replay resumes, the replica serves
    them again."""
    max_lag = 0.5
    async with app_client(replica_settings(settings, standby.url, max_lag=max_lag)) as client:
        await standby.pause()
        await add_customer(pool, "after_pause")
        deadline = time.monotonic() + 10
        while "after_pause" not in await customer_ids(client, admin_key):
            assert time.monotonic() < deadline, "lists never fell back to the primary"
            await asyncio.sleep(0.1)
        text = (await client.get("/metrics")).text
        assert metric(text, "billing_db_read_fallbacks_total", reason="lag") >= 1
        assert metric(text, "billing_db_replica_lag_seconds") > max_lag
        assert metric(text, "billing_db_replica_up") == 1

        await standby.resume()
        await standby.catch_up(pool)
        await asyncio.sleep(4 * max_lag)  # a few probes
        before = metric((await client.get("/metrics")).text, "billing_db_read_fallbacks_total")
        assert "after_pause" in await customer_ids(client, admin_key)
        text = (await client.get("/metrics")).text
    assert metric(text, "billing_db_read_fallbacks_total", reason="lag") == before
    assert metric(text, "billing_db_replica_lag_seconds") < max_lag


async def test_a_replica_that_goes_down_is_bypassed_and_counted(
    settings: Settings, pool: asyncpg.Pool, admin_key: str, standby: Standby
) -> None:
    """The replica stops while the app runs: lists still answer, from the primary (even the
    first read after the stop, on the replica's broken connection), each counted as a `down`
    fallback, and `billing_db_replica_up` drops to 0."""
    await add_customer(pool, "before_stop")
    await standby.catch_up(pool)
    async with app_client(replica_settings(settings, standby.url, max_lag=600)) as client:
        assert await customer_ids(client, admin_key) == {"before_stop"}
        standby.replica.stop()
        await add_customer(pool, "after_stop")
        assert await customer_ids(client, admin_key) == {"before_stop", "after_stop"}
        assert await customer_ids(client, admin_key) == {"before_stop", "after_stop"}
        text = (await client.get("/metrics")).text
    assert metric(text, "billing_db_read_fallbacks_total", reason="down") == 2
    assert metric(text, "billing_db_replica_up") == 0


async def test_a_replica_down_at_start_up_delays_nothing(
    settings: Settings, pool: asyncpg.Pool, admin_key: str
) -> None:
    """A read URL where nothing listens: the app starts, lists come from the primary, counted
    as `down` fallbacks."""
    await add_customer(pool, "only_on_primary")
    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/billing"
    async with app_client(replica_settings(settings, nowhere, max_lag=5)) as client:
        assert await customer_ids(client, admin_key) == {"only_on_primary"}
        text = (await client.get("/metrics")).text
    assert metric(text, "billing_db_read_fallbacks_total", reason="down") == 1
    assert metric(text, "billing_db_replica_up") == 0


def test_probe_interval_follows_the_lag_allowed() -> None:
    """Lag is probed four times per allowed lag, at most once a second, at least every 50 ms."""
    assert probe_interval(5) == 1.0
    assert probe_interval(1) == 0.25
    assert probe_interval(0.01) == 0.05


async def test_a_read_url_naming_a_primary_is_never_behind(
    settings: Settings, pool: asyncpg.Pool, admin_key: str, database_url: str
) -> None:
    """A read URL that names a server not in recovery (the primary itself, say) holds all it
    has: no lag, no fallback."""
    await add_customer(pool, "same_server")
    async with app_client(replica_settings(settings, database_url, max_lag=1)) as client:
        assert await customer_ids(client, admin_key) == {"same_server"}
        text = (await client.get("/metrics")).text
    assert metric(text, "billing_db_replica_up") == 1
    assert metric(text, "billing_db_replica_lag_seconds") < 1
    assert metric(text, "billing_db_read_fallbacks_total", reason="lag") == 0
    assert metric(text, "billing_db_read_fallbacks_total", reason="down") == 0
