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

import outcome
import trio

from switchd.sqlite_write_lock import begin_immediate
from switchd.thread_batches import ThreadBatches

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

    async def run_batcher(self) -> None:
        """Share transactions among concurrent calls while this runs (SQLite);
        a database that needs nothing of the kind just waits."""
        await trio.sleep_forever()

    def run_blocking(self, fn: Callable[[Cursor], T]) -> T:
        """``fn`` in one transaction, in the calling thread (which it blocks)."""
        raise NotImplementedError

    def close_blocking(self) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError


#: Concurrent reads of the SQLite database (each on its own connection).
READERS = 4
#: How long a write waits for SQLite's file lock (other processes' commits).
BUSY_TIMEOUT_S = 5.0


class DatabaseClosed(Exception):
    """The database closed before this call ran."""


class _Call:
    __slots__ = ("fn", "result", "task")

    def __init__(self, fn: Callable[[Cursor], Any], task: trio.lowlevel.Task) -> None:
        self.fn = fn
        self.task = task
        self.result: outcome.Outcome[Any] = outcome.Error(DatabaseClosed("not run"))


def _no_abort(_: Any) -> trio.lowlevel.Abort:
    # Once queued, the call may run at any moment: its caller hears the outcome.
    return trio.lowlevel.Abort.FAILED


class SqliteDatabase(Database):
    """One SQLite connection; with ``run_batcher`` running, calls share transactions.

    SQLite has one writer per file, so every call goes through this single
    connection (``fetchall``/``fetchone`` read on connections of their own).
    One call per transaction (and per thread hop) made bursts
    single-file: 5,000 terminals signing on at once each saved a session,
    and the last waited seconds. While ``run_batcher`` runs, every call
    queued since the last batch runs in one transaction, one thread hop and
    one commit, each call in a SAVEPOINT of its own: a call that raises
    rolls back only its own changes and gets its own exception; a failed
    COMMIT fails every call of the batch. A queued call is not cancellable
    (it may run at any moment; its caller must hear the outcome).
    """

    backend = "sqlite"

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_S
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
        # Reads on connections of their own (see fetchall), created on demand.
        self._path = path
        self._readers: list[sqlite3.Connection] = []
        self._all_readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._read_limiter = trio.CapacityLimiter(READERS)
        self._batches: ThreadBatches[_Call] = ThreadBatches()

    def run_blocking(self, fn: Callable[[Cursor], T]) -> T:
        """``fn`` in one transaction, in the calling thread (which it blocks)."""
        with self._lock:
            begin_immediate(self.conn, BUSY_TIMEOUT_S)
            cur = self.conn.cursor()
            try:
                out = fn(cur)
            except BaseException:
                self.conn.rollback()
                raise
            self.conn.commit()
            return out

    def _run_batch(self, calls: list[_Call]) -> None:
        with self._lock:
            cur = self.conn.cursor()
            try:
                begin_immediate(self.conn, BUSY_TIMEOUT_S)
                for call in calls:
                    cur.execute("SAVEPOINT call")
                    try:
                        call.result = outcome.Value(call.fn(cur))
                    except Exception as exc:
                        cur.execute("ROLLBACK TO call")
                        call.result = outcome.Error(exc)
                    cur.execute("RELEASE call")
                self.conn.commit()
            except sqlite3.Error as exc:
                # BEGIN, a savepoint or COMMIT failed: nothing of the batch stays.
                for call in calls:
                    call.result = outcome.Error(exc)
            finally:
                if self.conn.in_transaction:
                    self.conn.rollback()

    async def run(self, fn: Callable[[Cursor], T]) -> T:
        if not self._batches.serving:
            return await trio.to_thread.run_sync(self.run_blocking, fn, limiter=self._limiter)
        call = _Call(fn, trio.lowlevel.current_task())
        self._batches.put(call)
        await trio.lowlevel.wait_task_rescheduled(_no_abort)
        return call.result.unwrap()  # type: ignore[no-any-return]

    async def run_batcher(self) -> None:
        """Run the queued calls in shared transactions until cancelled."""
        await self._batches.serve(self._run_batch, self._limiter)

    @property
    def batches(self) -> int:
        """Shared transactions run so far."""
        return self._batches.batches

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        # Not through the batcher: its transactions take the write lock first
        # (BEGIN IMMEDIATE), so a read would queue behind every commit of the
        # journal's writer process on the same file (busy waits of up to
        # 100 ms each). A WAL reader needs no lock and sees the last commit.
        return await trio.to_thread.run_sync(self._read, sql, params,
                                             limiter=self._read_limiter)  # fmt: skip

    def _read(self, sql: str, params: Sequence[Any]) -> list[Row]:
        with self._readers_lock:
            conn = self._readers.pop() if self._readers else None
        if conn is None:
            conn = sqlite3.connect(self._path, check_same_thread=False, timeout=5.0,
                                   isolation_level=None)  # fmt: skip
            conn.execute("PRAGMA query_only=ON")
            with self._readers_lock:
                self._all_readers.append(conn)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            with self._readers_lock:
                self._readers.append(conn)

    def close_blocking(self) -> None:
        with self._readers_lock:
            readers, self._all_readers, self._readers = self._all_readers, [], []
        for conn in readers:
            conn.close()
        with self._lock:
            self.conn.close()

    async def aclose(self) -> None:
        self.close_blocking()


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

    def run_blocking(self, fn: Callable[[Cursor], T]) -> T:
        """``fn`` in one transaction, in the calling thread (which it blocks)."""
        with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            return fn(_PgCursor(cur))

    async def run(self, fn: Callable[[Cursor], T]) -> T:
        return await trio.to_thread.run_sync(self.run_blocking, fn, limiter=self._limiter)

    def close_blocking(self) -> None:
        self.pool.close()

    async def aclose(self) -> None:
        await trio.to_thread.run_sync(self.close_blocking)
