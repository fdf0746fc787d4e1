"""One journal writer shared by several workers' journals (`switchd run --workers N`):
every worker's rows written, one transaction for groups that arrive together, and a
killed writer started again with nothing lost and nothing written twice."""

from __future__ import annotations

import fcntl
import os
import signal
import sqlite3
import struct
import termios
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import psutil
import pytest
import trio

from switchd import childproc, store
from switchd.db import SqliteDatabase
from switchd.journal import Entry, Journal, _row
from switchd.journal_writer import (
    OK,
    DatabaseSpec,
    JournalWriter,
    _encode,
    _Writer,
    start_message,
)  # fmt: skip
from switchd.shared_writer import SharedWriter, journal_writer

from ..supervised import supervised


def _entry(tid: str, stan: int) -> Entry:
    return Entry(
        tid=tid, batch=1, stan=stan, reversal=False, kind="sale", mid="898100012340001",
        digest=f"d{stan}", rc="00", amount=100 + stan, masked_pan="622848******1234",
        rrn=f"{stan:012d}", auth_code="A00001", orig_batch=None, orig_stan=None,
        response=bytes([stan % 256]) * 20, created_at=1_795_000_000_000_000 + stan,
    )  # fmt: skip


async def _database(tmp_path: Path) -> tuple[Path, DatabaseSpec]:
    path = tmp_path / "switch.sqlite"
    db = SqliteDatabase(path)
    await store.migrate(db)
    await db.aclose()
    return path, DatabaseSpec("sqlite", sqlite_path=str(path))


def shared(
    spec: DatabaseSpec, where: Path, held: Callable[[], bool] = lambda: False
) -> AbstractAsyncContextManager[SharedWriter]:
    """A shared journal writer, started again whenever it exits by the supervisor's
    ``poll`` (unless `held` says not yet)."""
    return supervised(journal_writer(spec, str(where)), held)


@asynccontextmanager
async def worker(path: Path, spec: DatabaseSpec,
                 writer: SharedWriter) -> AsyncIterator[tuple[Journal, JournalWriter]]:  # fmt: skip
    """What a worker has: its own database connection and a journal writing
    through the shared writer, its writer task running."""
    db = SqliteDatabase(path)
    remote = JournalWriter(spec, writer.path)
    try:
        await remote.start()
        journal = Journal(db, remote)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(journal.run)
            yield journal, remote
            nursery.cancel_scope.cancel()
    finally:
        await remote.aclose()
        await db.aclose()


def _stored(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT tid, stan, amount, response FROM journal"
                            " ORDER BY tid, stan").fetchall()  # fmt: skip


def _expected(tids: list[str], stans: range) -> list[tuple]:
    return [(t, s, 100 + s, (bytes([s % 256]) * 20).hex()) for t in tids for s in stans]


def _child_pids() -> set[int]:
    return {p.pid for p in psutil.Process().children()}


async def test_two_workers_rows_are_written_by_the_one_shared_writer(tmp_path: Path) -> None:
    path, spec = await _database(tmp_path)
    async with (
        shared(spec, tmp_path) as writer,
        worker(path, spec, writer) as (a, ra),
        worker(path, spec, writer) as (b, rb),
    ):
        for stan in range(1, 1_501):
            a.record(_entry("10000001", stan))
            b.record(_entry("10000002", stan))
            if stan % 100 == 0:
                await trio.sleep(0.01)  # several writes from each
        await a.flush()
        await b.flush()
        assert a.written == b.written == 1_500
        # No journal writer of their own: the supervisor's is the only child.
        assert isinstance(ra.child, childproc.Remote) and isinstance(rb.child, childproc.Remote)
        assert writer.proc is not None and _child_pids() == {writer.proc.pid}
    assert _stored(path) == _expected(["10000001", "10000002"], range(1, 1_501))


def _wal_commits(path: Path) -> int:
    """Commits in the database's write-ahead log since it was last reset: frames
    of the current salt whose header gives the database size (commit frames)."""
    data = (path.parent / (path.name + "-wal")).read_bytes()
    if len(data) < 32:
        return 0
    page_size = struct.unpack(">I", data[8:12])[0]
    salts = data[16:24]
    commits = 0
    for off in range(32, len(data) - 24 + 1, 24 + page_size):
        if data[off + 8 : off + 16] != salts:
            break  # left from before a reset
        commits += struct.unpack(">I", data[off + 4 : off + 8])[0] != 0
    return commits


def _unread(w: JournalWriter) -> int:
    """Bytes this parent sent that the writer has not read yet (Linux: SIOCOUTQ)."""
    assert w.child._stream is not None
    buf = fcntl.ioctl(w.child._stream.socket.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    return int(struct.unpack("i", buf)[0])


async def test_groups_that_arrive_together_are_one_commit(tmp_path: Path) -> None:
    """Through the real processes: while the writer waits for the database's lock
    on worker A's rows, B's and C's arrive; they are then one commit, counted in
    SQLite's write-ahead log."""
    path, spec = await _database(tmp_path)
    async with shared(spec, tmp_path) as writer:
        writers = [JournalWriter(spec, writer.path) for _ in range(3)]
        for w in writers:
            await w.start()
        lock = sqlite3.connect(path, isolation_level=None)
        try:
            lock.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # count from an empty log
            assert _wal_commits(path) == 0
            lock.execute("BEGIN IMMEDIATE")  # the writer's BEGIN waits (up to 5 s)
            async with trio.open_nursery() as nursery:
                rows = {tid: [_row(_entry(tid, s)) for s in range(1, 51)]
                        for tid in ("10000001", "10000002", "10000003")}  # fmt: skip
                a, b, c = writers
                nursery.start_soon(a.write, rows["10000001"])
                await trio.sleep(0.05)  # sent
                with trio.fail_after(5):
                    while _unread(a):  # until the writer has taken A's rows
                        await trio.sleep(0.01)
                nursery.start_soon(b.write, rows["10000002"])
                nursery.start_soon(c.write, rows["10000003"])
                await trio.sleep(0.2)  # both sent: in the writer's socket buffers
                lock.execute("ROLLBACK")
            assert _wal_commits(path) == 2  # A alone; B and C together
        finally:
            lock.close()
            for w in writers:
                await w.aclose()
    assert _stored(path) == _expected(["10000001", "10000002", "10000003"], range(1, 51))


def _counting(writer: _Writer) -> list[int]:
    """The rows of each transaction the writer runs, in order."""
    sizes: list[int] = []
    run: Callable = writer.db.run_blocking  # type: ignore[type-arg]

    def counted(fn):  # type: ignore[no-untyped-def]
        class Counting:
            def __init__(self, cursor):  # type: ignore[no-untyped-def]
                self.cursor = cursor

            def executemany(self, sql, rows):  # type: ignore[no-untyped-def]
                sizes.append(len(rows))
                return self.cursor.executemany(sql, rows)

        return run(lambda c: fn(Counting(c)))

    writer.db.run_blocking = counted  # type: ignore[method-assign]
    return sizes


async def test_bad_rows_of_one_worker_do_not_hold_back_the_others(tmp_path: Path) -> None:
    """Groups that arrive together are one transaction; if it fails, each group is
    tried alone: the bad one is refused, the others written. Undecodable frames are
    answered with the error and take no part."""
    path, spec = await _database(tmp_path)
    writer = _Writer(start_message(spec))
    try:
        sizes = _counting(writer)

        def group(tid: str, n: int) -> bytes:
            return _encode([_row(_entry(tid, s)) for s in range(1, n + 1)])

        replies = writer.handle_many([group("10000001", 3), b"\xc1", group("10000002", 4)])
        assert sizes == [7]  # one transaction for both groups
        assert replies[0] == replies[2] == OK and replies[1].startswith(b"DecodeError")
        bad = [list(_row(_entry("10000003", 1)))]
        bad[0][4] = None  # kind is NOT NULL
        sizes.clear()
        replies = writer.handle_many([group("10000004", 2), _encode(bad), group("10000005", 5)])
        assert sizes == [8, 2, 1, 5]  # together, refused; then each alone
        assert replies[0] == replies[2] == OK and b"IntegrityError" in replies[1]
        # Sent again (a worker whose reply was lost): nothing is written twice.
        assert writer.handle_many([group("10000001", 3), group("10000002", 5)]) == [OK, OK]
    finally:
        writer.close()
    assert _stored(path) == [
        *_expected(["10000001"], range(1, 4)), *_expected(["10000002"], range(1, 6)),
        *_expected(["10000004"], range(1, 3)), *_expected(["10000005"], range(1, 6)),
    ]  # fmt: skip


async def test_a_killed_shared_writer_is_started_again_and_nothing_is_lost(
    tmp_path: Path,
) -> None:
    """SIGKILLed while two workers write: their rows stay queued while no writer
    runs, and the one the supervisor starts again writes them, each once."""
    path, spec = await _database(tmp_path)
    hold = {"restart": False}
    async with (
        shared(spec, tmp_path, lambda: hold["restart"]) as writer,
        worker(path, spec, writer) as (a, _),
        worker(path, spec, writer) as (b, _),
    ):
        for stan in range(1, 1_001):
            a.record(_entry("10000001", stan))
            b.record(_entry("10000002", stan))
            if stan % 100 == 0:
                await trio.sleep(0.01)
            if stan == 500:
                # Mid-run, with writes in flight: killed, not started again yet.
                hold["restart"] = True
                first = writer.proc
                assert first is not None
                os.kill(first.pid, signal.SIGKILL)
                await trio.to_thread.run_sync(first.wait)
        await trio.sleep(0.3)  # the workers try, fail and wait
        written = len(_stored(path))
        assert written < 2_000 and not a._idle.is_set() and not b._idle.is_set()
        hold["restart"] = False
        with trio.fail_after(15):
            await a.flush()
            await b.flush()
        assert writer.proc is not None and writer.proc.pid != first.pid
    assert _stored(path) == _expected(["10000001", "10000002"], range(1, 1_001))


async def test_a_worker_of_another_database_is_refused(tmp_path: Path) -> None:
    _, spec = await _database(tmp_path)
    async with shared(spec, tmp_path) as writer:
        other = DatabaseSpec("sqlite", sqlite_path=str(tmp_path / "other.sqlite"))
        stray = JournalWriter(other, writer.path)
        with pytest.raises(childproc.ChildLost, match="serves another database"):
            await stray.start()
