"""The switch's own database (terminals, merchants, cards, sessions, journal).

Kept apart from the ledger's tables so the ledger's writer never waits on
them: with SQLite it is a second file next to the ledger's (SQLite allows one
writer per file), with PostgreSQL a schema of its own in the same database.

Every call runs in a worker thread (blocking drivers never run on the event
loop). SQL is written once with ``?`` placeholders; the PostgreSQL side
rewrites them to ``%s``. Types are chosen to mean the same on both (BIGINT,
INTEGER, TEXT), so one schema serves both.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import trio

T = TypeVar("T")
Row = tuple[Any, ...]


class Cursor(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ...) -> Any: ...
    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> Any: ...
    def fetchall(self) -> list[Row]: ...
    def fetchone(self) -> Row | None: ...


class Database:
    """Blocking connection handling behind an async interface."""

    backend: str

    async def run(self, fn: Callable[[Cursor], T]) -> T:
        """Run ``fn(cursor)`` in one transaction in a worker thread."""
        raise NotImplementedError

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        def go(c: Cursor) -> list[Row]:
            c.execute(sql, params)
            return c.fetchall()

        return await self.run(go)

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        await self.run(lambda c: c.execute(sql, params))

    async def aclose(self) -> None:
        raise NotImplementedError


class SqliteDatabase(Database):
    backend = "sqlite"

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=5.0
        )
        self.conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a process crash, not a power cut. Enough
        # here: money is in the ledger's file (synchronous=FULL); a journal row
        # or session lost to a power cut means a retry the ledger answers as a
        # duplicate, or a terminal told to sign on again. It saves an fsync per
        # journal commit on the hot path.
        self.conn.execute("PRAGMA synchronous=NORMAL")
        # One connection, one thread at a time: sqlite3 objects are not safe
        # to share between threads concurrently.
        self._lock = threading.Lock()
        self._limiter = trio.CapacityLimiter(1)

    def _run_sync(self, fn: Callable[[Cursor], T]) -> T:
        with self._lock:
            cur = self.conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                out = fn(cur)
            except BaseException:
                self.conn.rollback()
                raise
            self.conn.commit()
            return out

    async def run(self, fn: Callable[[Cursor], T]) -> T:
        return await trio.to_thread.run_sync(self._run_sync, fn, limiter=self._limiter)

    async def aclose(self) -> None:
        with self._lock:
            self.conn.close()


class _PgCursor:
    """A psycopg cursor that takes ``?`` placeholders."""

    def __init__(self, cur: Any) -> None:
        self.cur = cur

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.cur.execute(sql.replace("?", "%s"), params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> Any:
        return self.cur.executemany(sql.replace("?", "%s"), rows)

    def fetchall(self) -> list[Row]:
        return self.cur.fetchall()

    def fetchone(self) -> Row | None:
        return self.cur.fetchone()


class PostgresDatabase(Database):
    backend = "postgres"

    def __init__(self, dsn: str, schema: str, pool_size: int) -> None:
        from psycopg_pool import ConnectionPool

        def configure(conn: Any) -> None:
            conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            conn.execute(f'SET search_path TO "{schema}"')
            conn.execute("SET synchronous_commit TO on")
            conn.commit()

        self.pool = ConnectionPool(
            dsn, min_size=1, max_size=pool_size, configure=configure, open=True, timeout=10.0
        )
        self._limiter = trio.CapacityLimiter(pool_size)

    def _run_sync(self, fn: Callable[[Cursor], T]) -> T:
        with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            return fn(_PgCursor(cur))

    async def run(self, fn: Callable[[Cursor], T]) -> T:
        return await trio.to_thread.run_sync(self._run_sync, fn, limiter=self._limiter)

    async def aclose(self) -> None:
        await trio.to_thread.run_sync(self.pool.close)
