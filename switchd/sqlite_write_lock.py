"""Taking SQLite's write lock when other processes commit to the same file.

SQLite's own busy handler (``timeout=`` / ``PRAGMA busy_timeout``) sleeps
1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100 ms between tries. Our writers
(ledger and journal, in every worker process) each hold the lock for a
commit of a few milliseconds, so a writer that loses one race sleeps far
longer than the lock is held, and under steady load it keeps losing: with
two workers the p99 at half the peak rate was 510 ms. Here the handler is
off while BEGIN IMMEDIATE is tried, and the retry is ours: sleeps of 0.1 ms
doubling to 1 ms, until the same overall timeout.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time

#: First and longest sleep between tries, seconds.
FIRST_SLEEP_S = 0.0001
MAX_SLEEP_S = 0.001


def begin_immediate(conn: sqlite3.Connection, timeout_s: float) -> None:
    """``BEGIN IMMEDIATE`` on conn, retried at a fine grain while the file is locked.

    Raises the last ``sqlite3.OperationalError`` once ``timeout_s`` has
    passed, or at once for any error but "busy". The connection's busy
    timeout is restored before returning, for the statements that follow.
    """
    restore = f"PRAGMA busy_timeout={int(timeout_s * 1000)}"
    conn.execute("PRAGMA busy_timeout=0")
    try:
        deadline = time.monotonic() + timeout_s
        sleep = FIRST_SLEEP_S
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                    raise
                if time.monotonic() >= deadline:
                    raise
            time.sleep(sleep)
            sleep = min(sleep * 2, MAX_SLEEP_S)
    finally:
        # A broken connection may refuse this too: the caller's error handling drops it.
        with contextlib.suppress(sqlite3.Error):
            conn.execute(restore)
