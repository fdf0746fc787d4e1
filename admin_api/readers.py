"""Read connections for the API, apart from the switch's own.

The switch's `SqliteDatabase` is one connection behind one lock, and every
`run` begins with BEGIN IMMEDIATE (the write lock). An API search or report
going through it would queue the switch's session and journal writes behind
it. So with SQLite, API reads go through their own read-only connections in
deferred transactions: in WAL mode readers see a consistent snapshot and
neither wait for the writer nor hold it up. PostgreSQL readers never block
writers (MVCC), so there the pooled `PostgresDatabase` serves reads as well.
Writes always go through the switch's `Database`, short and one transaction
each.
"""

from __future__ import annotations

import queue
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import trio

from switchd.config import Config
from switchd.db import Cursor, Database, SqliteDatabase

T = TypeVar("T")

#: Concurrent API reads on SQLite; each holds one read-only connection.
READERS = 4


class SqliteReader(Database):
    backend = "sqlite"

    def __init__(self, path: Path, size: int = READERS) -> None:
        self._pool: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._conns = []
        for _ in range(size):
            conn = sqlite3.connect(
                f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None,
                check_same_thread=False, timeout=5.0,
            )  # fmt: skip
            self._conns.append(conn)
            self._pool.put(conn)
        self._limiter = trio.CapacityLimiter(size)

    def _run_sync(self, fn: Callable[[Cursor], T]) -> T:
        conn = self._pool.get()
        try:
            conn.execute("BEGIN")  # deferred: a snapshot, no lock on the writer
            try:
                return fn(conn.cursor())
            finally:
                conn.rollback()  # nothing to keep: the connection is read-only
        finally:
            self._pool.put(conn)

    async def run(self, fn: Callable[[Cursor], T]) -> T:
        return await trio.to_thread.run_sync(self._run_sync, fn, limiter=self._limiter)

    async def aclose(self) -> None:
        for conn in self._conns:
            conn.close()


def open_reader(cfg: Config, db: Database) -> Database:
    """The database API reads go to: see the module docstring."""
    if isinstance(db, SqliteDatabase):
        # The same file as switchd.daemon.open_database opens.
        return SqliteReader(Path(cfg.data_dir) / "switch.sqlite")
    return db
