"""Query plans of the service's own statements, captured as its real code sends them.

`capturing(conn)` records every statement the code runs on a connection, with its arguments;
`explain` plans one again (in a transaction that is rolled back, so writes leave nothing): as the
first executions of a prepared statement are planned (`custom`, the arguments known) or as a
cached prepared statement is after a few executions (`generic`, forced with plan_cache_mode);
`scans` lists the plan nodes that read a table, and `summary` says in one line what the plan does.

tests/plan_catalog.py lists the statements, and prints the table of docs/query-plans.md.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any, Literal

import asyncpg
from asyncpg.connection import LoggedQuery

from billing_service.db.pool import Connection

Mode = Literal["custom", "generic", "analyze"]


@dataclass(frozen=True, slots=True)
class Statement:
    """One statement as the code sent it."""

    query: str
    args: tuple[Any, ...]


class Discard(Exception):
    """Raised by code run only to be captured, to roll its transaction back."""


@asynccontextmanager
async def capturing(pool: asyncpg.Pool) -> AsyncIterator[list[Statement]]:
    """Every statement run through `pool` (of one connection) inside the block, in order;
    transaction control left out."""
    sent: list[Statement] = []

    def record(logged: LoggedQuery) -> None:
        if logged.query.strip().rstrip(";").upper() not in {"BEGIN", "COMMIT", "ROLLBACK"}:
            sent.append(Statement(logged.query, tuple(logged.args or ())))

    async with pool.acquire() as conn:
        conn.add_query_logger(record)
    try:
        yield sent
    finally:
        await asyncio.sleep(0)  # asyncpg calls query loggers on the loop's next turn
        async with pool.acquire() as conn:
            conn.remove_query_logger(record)


async def explain(conn: Connection, statement: Statement, mode: Mode) -> dict[str, Any]:
    """The plan of `statement` (the top of EXPLAIN's JSON). `analyze` runs it with timing and
    buffer counts; every mode runs in a transaction that is rolled back."""
    tx = conn.transaction()
    await tx.start()
    try:
        if mode == "generic":
            return await _generic_plan(conn, statement)
        options = "ANALYZE, BUFFERS, FORMAT JSON" if mode == "analyze" else "FORMAT JSON"
        plan = await conn.fetchval(f"EXPLAIN ({options}) {statement.query}", *statement.args)
        return _top(plan)
    finally:
        await tx.rollback()


async def _generic_plan(conn: Connection, statement: Statement) -> dict[str, Any]:
    """PostgreSQL 15 cannot EXPLAIN a generic plan directly: prepare the statement, force
    generic plans, and EXPLAIN EXECUTE it with its arguments written as literals."""
    name = f"plan_{uuid.uuid4().hex}"
    prepared = await conn.prepare(statement.query)
    literals = []
    for param, value in zip(prepared.get_parameters(), statement.args, strict=True):
        type_name = await conn.fetchval("SELECT format_type($1, NULL)", param.oid)
        text = await conn.fetchval(f"SELECT quote_nullable($1::{type_name}::text)", value)
        literals.append(f"{text}::{type_name}")
    await conn.execute(f"PREPARE {name} AS {statement.query}")
    await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
    arguments = f"({', '.join(literals)})" if literals else ""
    return _top(await conn.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE {name}{arguments}"))


def _top(plan: Any) -> dict[str, Any]:
    document: dict[str, Any] = plan[0]
    return document


@dataclass(frozen=True, slots=True)
class Scan:
    """A plan node that reads or writes a table: how, through which index, and the rows it
    gave (actual rows per loop times loops, when analysed)."""

    node: str
    relation: str | None
    index: str | None
    rows: float | None
    loops: int | None


def _nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", ()):
        yield from _nodes(child)


def scans(plan: dict[str, Any]) -> list[Scan]:
    """Every node that touches a table or an index, depth first."""
    found = []
    for node in _nodes(plan["Plan"]):
        if "Relation Name" not in node and "Index Name" not in node:
            continue
        loops = node.get("Actual Loops")
        rows = None if loops is None else node["Actual Rows"] * loops
        kind = node["Node Type"]
        if kind == "ModifyTable":
            kind = node["Operation"]
        elif node.get("Scan Direction") == "Backward":
            kind += " Backward"
        found.append(Scan(kind, node.get("Relation Name"), node.get("Index Name"), rows, loops))
    return found


def summary(plan: dict[str, Any]) -> str:
    """`Index Scan usage_counters_pkey 744 rows; …`, then rows returned, time and buffers."""
    parts = []
    for scan in scans(plan):
        if scan.node == "Bitmap Heap Scan":
            continue  # its Bitmap Index Scan child names the index
        rows = "" if scan.rows is None else f" {scan.rows:,.0f} rows"
        repeated = "" if not scan.loops or scan.loops == 1 else f" in {scan.loops} loops"
        parts.append(f"{scan.node} {scan.index or scan.relation}{rows}{repeated}")
    top = plan["Plan"]
    buffers = sum(top.get(key, 0) for key in ("Shared Hit Blocks", "Shared Read Blocks"))
    time = plan.get("Execution Time")
    if time is None:
        return "; ".join(parts)
    return f"{'; '.join(parts)} | {top['Actual Rows']:,} | {time:.2f} ms | {buffers:,}"


async def plan_of(
    pool: asyncpg.Pool, run: Callable[[asyncpg.Pool], Awaitable[object]], mode: Mode
) -> list[tuple[Statement, dict[str, Any]]]:
    """Run the real code once through `pool` (of one connection), then plan each statement it
    sent. Idempotency keys and event ids it made up (`plan-…`) are renewed first, so a planned
    insert inserts instead of finding the row the run left."""
    async with capturing(pool) as sent:
        with suppress(Discard):
            await run(pool)
    async with pool.acquire() as conn:
        return [(statement, await explain(conn, _renewed(statement), mode)) for statement in sent]


def _renewed(statement: Statement) -> Statement:
    args = tuple(
        f"plan-{uuid.uuid4()}" if isinstance(arg, str) and arg.startswith("plan-") else arg
        for arg in statement.args
    )
    return Statement(statement.query, args)
