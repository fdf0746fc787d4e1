"""begin_immediate against a real second connection holding SQLite's write lock."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from switchd.sqlite_write_lock import begin_immediate


def _open(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=5, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    return conn


def test_waits_for_the_holder_then_takes_the_lock(tmp_path: Path) -> None:
    holder, waiter = _open(tmp_path / "db"), _open(tmp_path / "db")
    holder.execute("CREATE TABLE t (a)")
    holder.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.05, lambda: holder.execute("COMMIT"))
    release.start()
    t0 = time.monotonic()
    begin_immediate(waiter, 5.0)
    waited = time.monotonic() - t0
    assert waiter.in_transaction
    assert 0.04 <= waited < 0.3  # (the grain, about 1 ms, is measured by bench.sqlite_lock)
    waiter.execute("INSERT INTO t VALUES (1)")
    waiter.execute("COMMIT")
    # The connection's own busy timeout is back for the statements that follow.
    assert waiter.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    release.join()


def test_gives_up_after_its_timeout(tmp_path: Path) -> None:
    holder, waiter = _open(tmp_path / "db"), _open(tmp_path / "db")
    holder.execute("BEGIN IMMEDIATE")
    t0 = time.monotonic()
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        begin_immediate(waiter, 0.1)
    assert 0.1 <= time.monotonic() - t0 < 0.5
    assert not waiter.in_transaction
    holder.execute("ROLLBACK")


def test_other_errors_are_not_retried(tmp_path: Path) -> None:
    conn = _open(tmp_path / "db")
    conn.execute("BEGIN IMMEDIATE")
    t0 = time.monotonic()
    with pytest.raises(sqlite3.OperationalError, match="within a transaction"):
        begin_immediate(conn, 5.0)
    assert time.monotonic() - t0 < 0.05
