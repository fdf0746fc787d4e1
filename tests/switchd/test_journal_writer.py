"""The journal's rows written by a child process: written once each, through a lost
child and a failing insert (the journal retries; nothing is written twice)."""

from __future__ import annotations

import os
import signal
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from switchd import store
from switchd.db import SqliteDatabase
from switchd.journal import Entry, Journal
from switchd.journal_writer import DatabaseSpec, JournalWriter


def _entry(stan: int) -> Entry:
    return Entry(
        tid="10000001", batch=1, stan=stan, reversal=False, kind="sale", mid="898100012340001",
        digest=f"d{stan}", rc="00", amount=100 + stan, masked_pan="622848******1234",
        rrn=f"{stan:012d}", auth_code="A00001", orig_batch=None, orig_stan=None,
        response=bytes([stan % 256]) * 20, created_at=1_795_000_000_000_000 + stan,
    )  # fmt: skip


@asynccontextmanager
async def _running(tmp_path: Path) -> AsyncIterator[tuple[Journal, JournalWriter]]:
    """A migrated switch database, a journal writing through a child, its writer task running."""
    path = tmp_path / "switch.sqlite"
    db = SqliteDatabase(path)
    await store.migrate(db)
    writer = JournalWriter(DatabaseSpec("sqlite", sqlite_path=str(path)))
    try:
        await writer.start()
        journal = Journal(db, writer)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(journal.run)
            yield journal, writer
            nursery.cancel_scope.cancel()
    finally:
        await writer.aclose()
        await db.aclose()


def _stored(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT stan, amount, response, created_at FROM journal"
                            " ORDER BY stan").fetchall()  # fmt: skip


async def test_rows_are_written_by_the_child(tmp_path: Path) -> None:
    async with _running(tmp_path) as (journal, writer):
        for stan in range(1, 2_001):
            journal.record(_entry(stan))
            if stan % 500 == 0:
                await trio.sleep(0)  # let the writer take several groups
        await journal.flush()
        assert writer.child.pid is not None and writer.child.pid != os.getpid()
    rows = _stored(tmp_path / "switch.sqlite")
    assert [r[0] for r in rows] == list(range(1, 2_001))
    e = _entry(1234)
    assert rows[1233] == (1234, e.amount, e.response.hex(), e.created_at)
    # And the journal reads them back as they were recorded (after a restart).
    db2 = SqliteDatabase(tmp_path / "switch.sqlite")
    fresh = Journal(db2)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fresh.run_loader)
        assert await fresh.lookup("10000001", 1, 1234, False) == e
        nursery.cancel_scope.cancel()
    await db2.aclose()


async def test_a_killed_child_is_replaced_and_nothing_is_lost(tmp_path: Path) -> None:
    async with _running(tmp_path) as (journal, writer):
        for stan in range(1, 501):
            journal.record(_entry(stan))
        await journal.flush()
        first = writer.child.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        for stan in range(501, 1_001):
            journal.record(_entry(stan))
        with trio.fail_after(10):
            await journal.flush()  # the write to the dead child failed, was retried
        assert writer.child.pid not in (None, first)
    assert [r[0] for r in _stored(tmp_path / "switch.sqlite")] == list(range(1, 1_001))


async def test_a_failing_insert_is_retried_until_it_succeeds(tmp_path: Path) -> None:
    path = tmp_path / "switch.sqlite"
    async with _running(tmp_path) as (journal, _writer):
        other = sqlite3.connect(path, isolation_level=None)
        try:
            journal.record(_entry(1))
            await journal.flush()
            # The table disappears under the child: its inserts fail, the rows stay queued.
            other.execute("ALTER TABLE journal RENAME TO journal_away")
            for stan in range(2, 101):
                journal.record(_entry(stan))
            await trio.sleep(0.3)
            assert journal.written == 1 and not journal._idle.is_set()
            other.execute("ALTER TABLE journal_away RENAME TO journal")
            with trio.fail_after(10):
                await journal.flush()
        finally:
            other.close()
    assert [r[0] for r in _stored(path)] == list(range(1, 101))
