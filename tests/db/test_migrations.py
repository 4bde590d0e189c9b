"""Schema migrations: ordered, transactional, checksummed, and safe when replicas race."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import asyncpg
import pytest

from billing_service.db.migrations import (
    Migration,
    MigrationError,
    apply_migrations,
    discover_migrations,
)
from billing_service.resources import migrations_dir
from tests.support import billing_service


async def _ledger(url: str) -> list[int]:
    conn = await asyncpg.connect(url)
    try:
        return [row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")]
    finally:
        await conn.close()


async def test_concurrent_runs_apply_each_migration_once(empty_database: str) -> None:
    """Two connections migrating at the same moment: one applies everything, the other nothing."""
    migrations = discover_migrations(migrations_dir())
    connections = [await asyncpg.connect(empty_database) for _ in range(2)]
    try:
        results = await asyncio.gather(*(apply_migrations(c, migrations) for c in connections))
    finally:
        for conn in connections:
            await conn.close()
    assert sorted(len(applied) for applied in results) == [0, len(migrations)]
    assert sorted(await _ledger(empty_database)) == [m.version for m in migrations]


async def test_concurrent_migrate_commands_in_separate_processes_apply_once(
    empty_database: str,
) -> None:
    """Two `billing-service migrate` processes (replicas starting) both succeed, applying once."""
    env = os.environ | {"BILLING_DATABASE_URL": empty_database, "BILLING_ENV": "test"}
    runs = await asyncio.gather(billing_service(env, "migrate"), billing_service(env, "migrate"))
    assert [run.code for run in runs] == [0, 0], runs
    said = sorted(run.out.strip() for run in runs)
    assert said[0].startswith("applied: 0001_")
    assert said[1] == "schema is up to date"
    migrations = discover_migrations(migrations_dir())
    assert sorted(await _ledger(empty_database)) == [m.version for m in migrations]


async def test_second_run_is_a_no_op(empty_database: str) -> None:
    """Re-running migrations changes nothing."""
    migrations = discover_migrations(migrations_dir())
    conn = await asyncpg.connect(empty_database)
    try:
        assert len(await apply_migrations(conn, migrations)) == len(migrations)
        assert await apply_migrations(conn, migrations) == []
    finally:
        await conn.close()


async def test_failing_migration_rolls_back_alone(empty_database: str, tmp_path: Path) -> None:
    """A broken file leaves no partial change; earlier files stay applied; the lock is released."""
    (tmp_path / "0001_first.sql").write_text("CREATE TABLE first_table (id int);")
    (tmp_path / "0002_broken.sql").write_text("CREATE TABLE half_done (id int);\nTHIS IS NOT SQL;")
    migrations = discover_migrations(tmp_path)
    conn = await asyncpg.connect(empty_database)
    try:
        with pytest.raises(asyncpg.PostgresSyntaxError):
            await apply_migrations(conn, migrations)
        assert await conn.fetchval("SELECT to_regclass('first_table') IS NOT NULL")
        assert await conn.fetchval("SELECT to_regclass('half_done') IS NULL")
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM pg_locks "
                "WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
            )
            == 0
        )
    finally:
        await conn.close()
    assert await _ledger(empty_database) == [1]


async def test_editing_an_applied_migration_is_refused(empty_database: str) -> None:
    """A changed checksum for an applied version is an error, not a silent divergence."""
    conn = await asyncpg.connect(empty_database)
    try:
        await apply_migrations(conn, [Migration(1, "first", "CREATE TABLE t (id int);")])
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await apply_migrations(conn, [Migration(1, "first", "CREATE TABLE t (id bigint);")])
    finally:
        await conn.close()


def test_misnamed_or_duplicate_files_are_refused(tmp_path: Path) -> None:
    """Only NNNN_snake_case.sql files, each version once."""
    (tmp_path / "1_bad.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=r"1_bad\.sql"):
        discover_migrations(tmp_path)
    (tmp_path / "1_bad.sql").unlink()
    (tmp_path / "0001_a.sql").write_text("SELECT 1;")
    (tmp_path / "0001_b.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="used twice"):
        discover_migrations(tmp_path)


async def test_every_table_carries_created_and_updated_at(pool: asyncpg.Pool) -> None:
    """Each of our tables has timestamptz created_at and updated_at, kept by a trigger."""
    tables = await pool.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
        "AND tablename <> 'schema_migrations'"
    )
    assert tables
    for row in tables:
        columns = {
            column["column_name"]: column["data_type"]
            for column in await pool.fetch(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_name = $1",
                row["tablename"],
            )
        }
        assert columns.get("created_at") == "timestamp with time zone", row["tablename"]
        assert columns.get("updated_at") == "timestamp with time zone", row["tablename"]
        trigger = await pool.fetchval(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = $1::regclass "
            "AND tgname LIKE '%set_updated_at'",
            row["tablename"],
        )
        assert trigger == 1, row["tablename"]
