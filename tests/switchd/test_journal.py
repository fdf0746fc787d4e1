"""The journal and the switch database against a real SQLite file: batched loads and calls,
bounded memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from switchd import journal as journal_module
from switchd import store
from switchd.db import SqliteDatabase
from switchd.journal import LOAD_CHUNK, Entry, Journal, JournalUnavailable


def _entry(tid: str, batch: int, stan: int) -> Entry:
    return Entry(
        tid=tid, batch=batch, stan=stan, reversal=False, kind="sale", mid="898100012340001",
        digest=f"d{stan}", rc="00", amount=100 + stan, masked_pan="622848******1234",
        rrn=f"{stan:012d}", auth_code="A00001", orig_batch=None, orig_stan=None,
        response=bytes([stan % 256]) * 20, created_at=1,
    )  # fmt: skip


class CountingDb(SqliteDatabase):
    """The real database, counting the queries and able to fail them."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.queries = 0
        self.fail = False

    async def fetchall(self, sql: str, params: Any = ()) -> list[Any]:
        self.queries += 1
        if self.fail:
            raise OSError("disk I/O error (test)")
        return await super().fetchall(sql, params)


async def _migrated(tmp_path: Path) -> CountingDb:
    """A fresh switch database with its tables."""
    db = CountingDb(tmp_path / "switch.sqlite")
    await store.migrate(db)
    return db


async def _written(db: SqliteDatabase, entries: list[Entry]) -> None:
    journal = Journal(db)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(journal.run)
        for e in entries:
            journal.record(e)
        await journal.flush()
        nursery.cancel_scope.cancel()


async def test_a_thousand_first_touches_take_a_few_queries(tmp_path: Path) -> None:
    db = await _migrated(tmp_path)
    n = 1000
    # Two answers in batch 1 of every terminal, one in its older batch 0.
    entries = [_entry(f"T{i:07d}", 1, s) for i in range(n) for s in (1, 2)]
    entries += [_entry(f"T{i:07d}", 0, 3) for i in range(n)]
    await _written(db, entries)

    journal = Journal(db)
    db.queries = 0
    found: dict[str, Entry | None] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(journal.run_loader)

        async def ask(tid: str) -> None:
            found[tid] = await journal.lookup(tid, 1, 2, False)
            assert await journal.lookup(tid, 1, 3, False) is None  # not in this batch

        async with trio.open_nursery() as askers:
            for i in range(n):
                askers.start_soon(ask, f"T{i:07d}")
        nursery.cancel_scope.cancel()
    assert all(e is not None and e.stan == 2 and e.amount == 102 for e in found.values())
    assert len(found) == n
    # One query per LOAD_CHUNK batches (asked within one scheduling pass), not one each.
    assert db.queries <= 2 * (n // LOAD_CHUNK + 1)
    assert len(journal.batches) == n  # batch 0 was never asked for, so never loaded
    await db.aclose()


async def test_a_failed_load_is_a_clear_error_and_is_retried(tmp_path: Path) -> None:
    db = await _migrated(tmp_path)
    await _written(db, [_entry("T0000001", 1, 7)])
    journal = Journal(db)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(journal.run_loader)
        db.fail = True
        with pytest.raises(JournalUnavailable):
            await journal.lookup("T0000001", 1, 7, False)
        db.fail = False
        entry = await journal.lookup("T0000001", 1, 7, False)
        assert entry is not None and entry.rrn == "000000000007"
        nursery.cancel_scope.cancel()
    await db.aclose()


async def test_memory_is_bounded_and_dropped_batches_come_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "MAX_CACHED", 100)
    monkeypatch.setattr(journal_module, "EVICT_IDLE_S", 0.0)
    monkeypatch.setattr(journal_module, "EVICT_EVERY_S", 0.0)
    db = await _migrated(tmp_path)
    journal = Journal(db)
    async with trio.open_nursery() as nursery:
        # No writer yet (a database that is down): nothing unwritten may leave memory.
        for b in range(20):
            for s in range(10):
                journal.record(_entry(f"T{b:07d}", 1, s))
        assert journal.cached == 200 and len(journal.batches) == 20

        nursery.start_soon(journal.run)
        nursery.start_soon(journal.run_loader)
        await journal.flush()
        for b in range(20, 60):
            for s in range(10):
                journal.record(_entry(f"T{b:07d}", 1, s))
            await journal.flush()
        assert journal.cached <= 100
        assert "T0000000" not in {tid for tid, _ in journal.batches}  # least recently used
        # A dropped batch is read again when touched: its answers are all there.
        db.queries = 0
        again = await journal.lookup("T0000000", 1, 9, False)
        assert again is not None and again.amount == 109 and db.queries == 1
        assert len(journal.batches[("T0000000", 1)]) == 10
        nursery.cancel_scope.cancel()
    await db.aclose()


async def test_concurrent_calls_share_transactions_and_keep_their_own_errors(
    tmp_path: Path,
) -> None:
    db = SqliteDatabase(tmp_path / "switch.sqlite")
    await db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
    results: dict[int, object] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(db.run_batcher)
        await trio.sleep(0)

        async def insert(k: int) -> None:
            def go(c: Any) -> int:
                c.execute("INSERT INTO t VALUES (?, ?)", (k, f"v{k}"))
                if k % 10 == 7:
                    raise ValueError(f"refused {k}")  # only this call's row goes
                return k

            try:
                results[k] = await db.run(go)
            except ValueError as exc:
                results[k] = exc

        async with trio.open_nursery() as callers:
            for k in range(500):
                callers.start_soon(insert, k)
        assert db.batches < 100  # shared: far fewer transactions than calls
        rows = await db.fetchall("SELECT k FROM t ORDER BY k")
        assert [r[0] for r in rows] == [k for k in range(500) if k % 10 != 7]
        assert all(results[k] == k for k in range(500) if k % 10 != 7)
        assert all(isinstance(results[k], ValueError) for k in range(7, 500, 10))
        nursery.cancel_scope.cancel()
    # Without the batcher, calls run one transaction each, as before.
    assert (await db.fetchone("SELECT count(*) FROM t")) == (450,)
    await db.aclose()


async def test_batches_in_use_are_never_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over the bound with every batch busy (a soak: 100 terminals, ~1,500 answers
    each), nothing is dropped: no reload churn, no lookup left without its batch."""
    monkeypatch.setattr(journal_module, "MAX_CACHED", 100)
    monkeypatch.setattr(journal_module, "EVICT_EVERY_S", 0.0)
    db = await _migrated(tmp_path)
    journal = Journal(db)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(journal.run)
        nursery.start_soon(journal.run_loader)
        for b in range(30):
            assert await journal.lookup(f"T{b:07d}", 1, 0, False) is None
            for s in range(10):
                journal.record(_entry(f"T{b:07d}", 1, s))
            await journal.flush()
        assert journal.cached == 300 and len(journal.batches) == 30
        db.queries = 0
        for b in range(30):
            e = await journal.lookup(f"T{b:07d}", 1, 9, False)
            assert e is not None and e.amount == 109
        assert db.queries == 0
        nursery.cancel_scope.cancel()
    await db.aclose()


async def test_reads_do_not_wait_for_another_process_holding_the_write_lock(
    tmp_path: Path,
) -> None:
    """The journal's writer process commits to the same file all the time: a read
    (a journal load, a session) must not queue behind its write lock."""
    import sqlite3

    db = await _migrated(tmp_path)
    await _written(db, [_entry("T1", 1, 7)])
    other = sqlite3.connect(tmp_path / "switch.sqlite", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # held, as a writer in another process would
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(db.run_batcher)
            with trio.fail_after(1):  # the busy timeout is 5 s
                rows = await db.fetchall("SELECT stan FROM journal WHERE tid = ?", ("T1",))
            nursery.cancel_scope.cancel()
    finally:
        other.execute("ROLLBACK")
        other.close()
        await db.aclose()
    assert rows == [(7,)]


async def test_steady_answers_are_written_in_few_commits_and_flush_does_not_linger(
    tmp_path: Path,
) -> None:
    """A row every millisecond: written every LINGER_S, not one commit per row;
    a flush writes what is queued at once."""
    db = await _migrated(tmp_path)
    journal = Journal(db)
    writes: list[int] = []
    run = db.run

    async def counted(fn: Any) -> Any:
        writes.append(1)
        return await run(fn)

    db.run = counted  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(journal.run)
        start = trio.current_time()
        for stan in range(1, 201):
            journal.record(_entry("T1", 1, stan))
            await trio.sleep(0.001)
        elapsed = trio.current_time() - start
        with trio.fail_after(journal_module.LINGER_S / 2):
            await journal.flush()
        nursery.cancel_scope.cancel()
    assert journal.written == 200
    assert len(writes) <= elapsed / journal_module.LINGER_S + 2
    rows = await db.fetchall("SELECT count(*) FROM journal")
    assert rows[0][0] == 200
