"""The embedded backend: one SQLite file in WAL mode, fsync on every commit.

Durability: `journal_mode=WAL` + `synchronous=FULL` fsyncs the WAL at each
commit, so a transaction acknowledged by the writer survives a process kill
or a power cut. Group commit is what pays for that fsync: one per batch.

Concurrency: one writer connection, used only by the writer's worker thread;
each batch runs in `BEGIN IMMEDIATE`, which takes SQLite's write lock first,
so even a second process on the same file (not a supported deployment, but
not a corrupting one) is serialized before it reads what it will change.
Readers use their own connections and see the last commit.

Error handling: any database error during a batch rolls the transaction back
and becomes `CommitFailed` for the whole batch; the connection stays usable
(SQLite errors such as SQLITE_FULL leave it open), and if it is not, the next
batch reopens it.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from switchd.sqlite_write_lock import begin_immediate

from .core import POSTED_COLUMNS, AccountCache, Changes, Group, apply_batch
from .migrations import CREATE_VERSION_TABLE, pending_migrations
from .model import CommitFailed, Result, TransferType
from .queries import Dialect

T = TypeVar("T")

log = logging.getLogger("switchd.ledger")

#: SQLite's default limit on host parameters is 32766 (3.32+); stay well below.
#: How long a writer waits for the file lock held by another connection.
_BUSY_TIMEOUT_MS = 5000


#: Plain posted transfers: the constant columns are literals, not parameters.
#: (Python's sqlite3 adapts every bytes and None parameter through its adapter
#: registry before binding it, which costs more than SQLite's own insert work.)
_INSERT_POSTED = (
    f"INSERT INTO transfers (type, ref_id, expires_at, post_tolerance, {', '.join(POSTED_COLUMNS)})"
    f" VALUES ('{TransferType.POSTED.value}', NULL, NULL, 0, {','.join('?' * len(POSTED_COLUMNS))})"
)


#: Sizes of the key lists of a lookup: a list is padded (with a key that
#: matches no row) up to the next one, so each lookup runs one of a few cached
#: prepared statements instead of parsing a new statement of thousands of
#: parameters every batch (that parse cost as much as the lookup).
_IN_SIZES = (1, 2, 4, 8, 16, 32, 64, 91, 128, 181, 256, 362, 512, 724, 1024, 1448, 2048, 2896)
_CHUNK = 4000
_STATEMENT_CACHE = 256
#: Accounts the writer keeps between batches (see `SqliteBackend.apply`);
#: past this many the cache starts over (a few hundred bytes each).
_ACCOUNT_CACHE_MAX = 65_536


def _chunks(ids: list[Any], filler: Any) -> Iterable[list[Any]]:
    for i in range(0, len(ids), _CHUNK):
        part = ids[i : i + _CHUNK]
        n = len(part)
        size = next((k for k in _IN_SIZES if k >= n), _CHUNK)
        if size > n:
            part.extend([filler] * (size - n))
        yield part


class _SqliteStore:
    # One writer at a time (BEGIN IMMEDIATE takes the file's write lock before
    # the batch reads anything), so no batch can race another one.
    concurrent = False

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def guard_new_ids(self, exclusive: bool) -> None:
        pass

    def _in(self, columns: str, table: str, key: str, ids: list[Any]) -> list[tuple[Any, ...]]:
        """The rows of `table` whose `key` is one of `ids` (distinct), in no order.

        The keys are a VALUES list joined to the table (CROSS JOIN: the list
        drives, one primary-key search per key), not `key IN (...)`, for
        which SQLite first builds and sorts a temporary index of the list:
        that took longer than the searches (1,448 new ids, 50,000 transfers:
        0.69 ms against 0.47; against an empty rejections table, 0.41 ms
        against 0.11)."""
        out: list[tuple[Any, ...]] = []
        if ids and type(ids[0]) is bytes:
            # Bound without going through sqlite3's adapter registry (core._blob);
            # padded with an empty blob, which no 16-byte id equals.
            ids = list(map(bytearray, ids))
            filler: Any = bytearray()
        else:
            filler = None  # NULL equals nothing
        select = (
            f"SELECT {columns} FROM (VALUES {{}}) AS k"
            f" CROSS JOIN {table} AS t ON t.{key} = k.column1"
        )
        for part in _chunks(ids, filler):
            marks = ",".join(["(?)"] * len(part))
            out.extend(self.conn.execute(select.format(marks), part).fetchall())
        return out

    def load_due_pending(self, now_us: int, limit: int) -> list[bytes]:
        rows = self.conn.execute(
            "SELECT id FROM transfer_state WHERE pending_state = 'pending'"
            " AND expires_at IS NOT NULL AND expires_at <= ? ORDER BY expires_at LIMIT ?",
            (now_us, limit),
        ).fetchall()
        return [r[0] for r in rows]

    def load_states(self, ids: list[bytes]) -> list[tuple[Any, ...]]:
        return self._in(
            "t.id, t.pending_state, t.expires_at, t.resolved_by, t.reversed_by, t.refunded",
            "transfer_state",
            "id",
            ids,
        )

    def load_transfers(self, ids: list[bytes]) -> list[tuple[Any, ...]]:
        return self._in(
            "t.id, t.type, t.debit_account_id, t.credit_account_id, t.amount, t.ref_id,"
            " t.expires_at, t.post_tolerance, t.fingerprint",
            "transfers",
            "id",
            ids,
        )

    def load_rejections(self, ids: list[bytes]) -> list[tuple[Any, ...]]:
        return self._in("t.id, t.fingerprint, t.code", "rejections", "id", ids)

    def load_accounts(self, ids: list[bytes]) -> list[tuple[Any, ...]]:
        return self._in(
            "t.id, t.kind, t.currency, t.owner, t.credit_limit, t.closed, t.debits_posted,"
            " t.credits_posted, t.debits_pending, t.credits_pending, t.created_at",
            "accounts",
            "id",
            ids,
        )

    def load_terminal_batches(self, tids: list[str]) -> list[tuple[Any, ...]]:
        return self._in("t.terminal_id, t.current_batch", "terminal_batches", "terminal_id", tids)

    def write(self, ch: Changes) -> None:
        c = self.conn
        if ch.new_accounts:
            c.executemany("INSERT INTO accounts VALUES (?,?,?,?,?,?,?,?,?,?,?)", ch.new_accounts)
        if ch.account_updates:
            c.executemany(
                "UPDATE accounts SET debits_posted = ?, credits_posted = ?,"
                " debits_pending = ?, credits_pending = ?, closed = ? WHERE id = ?",
                ch.account_updates,
            )
        if ch.new_posted:
            c.executemany(_INSERT_POSTED, ch.new_posted)
        if ch.new_transfers:
            c.executemany(
                "INSERT INTO transfers VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                ch.new_transfers,
            )
        if ch.new_states:
            c.executemany("INSERT INTO transfer_state VALUES (?,?,?,?,?,?)", ch.new_states)
        if ch.state_updates:
            c.executemany(
                "UPDATE transfer_state SET pending_state = ?, resolved_by = ?,"
                " reversed_by = ?, refunded = ? WHERE id = ?",
                ch.state_updates,
            )
        if ch.rejections:
            c.executemany("INSERT INTO rejections VALUES (?,?,?,?)", ch.rejections)
        if ch.batch_inserts:
            c.executemany("INSERT INTO terminal_batches VALUES (?,?,?)", ch.batch_inserts)
        if ch.batch_updates:
            c.executemany(
                "UPDATE terminal_batches SET current_batch = ?, updated_at = ?"
                " WHERE terminal_id = ?",
                ch.batch_updates,
            )
        if ch.closures:
            c.executemany("INSERT OR IGNORE INTO batch_closures VALUES (?,?,?)", ch.closures)


#: Seconds between two of the checkpointer's passes (see `_Checkpointer`).
CHECKPOINT_EVERY_S = 1.0
#: The writer's own automatic checkpoint, in WAL frames: only a backstop,
#: should the checkpointer thread fall behind (each pass resets the WAL long
#: before it is this large).
_BACKSTOP_FRAMES = 50_000


class _Checkpointer:
    """Copies the WAL into the database file from a thread of its own.

    Why: SQLite's automatic checkpoint runs in the committing connection,
    every 1,000 WAL frames by default: the ledger writer stopped after one
    commit in two or three to copy pages, every terminal waiting on that
    commit waited too, and the hot pages (the accounts', the index roots)
    were copied again at each pass. Passes further apart copy them fewer
    times, but a large pass in the writer stalled it for tens of ms.
    Measured with 2 workers and 1,000 terminals (CPU by process, A/B runs
    back to back): the writer's CPU per closed-loop sale 64.5 and 69.2 ->
    59.3 and 62.7 us, bytes written per sale 32 -> 24 kB, sales/s +4 %; at a
    fixed 3,000 sales/s the terminals' p99 22.0 and 20.1 -> 13.1 and 19.8 ms.
    The WAL holds up to about a second of commits (tens of MB at full load)
    between passes.

    Plan: every ``CHECKPOINT_EVERY_S`` this thread, on its own connection,
    runs a PASSIVE checkpoint, which copies what the WAL holds while the
    writer goes on committing (SQLite lets one checkpointer and one writer
    work at once; the copying releases the GIL). The WAL can only start over
    once every frame in it has been copied, and the writer appends frames
    all the while, so after each pass the writer is asked (``catch_up``) to
    copy the few frames it committed meanwhile, in a checkpoint of its own
    after its next commit; its next transaction then starts the WAL over.

    Error handling: a failed pass is logged and tried again at the next
    interval on a new connection; the writer's automatic checkpoint at
    ``_BACKSTOP_FRAMES`` bounds the WAL should this thread stop keeping up.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.catch_up = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ledger-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        while not self._stop.wait(CHECKPOINT_EVERY_S):
            try:
                if conn is None:
                    conn = _connect(self.path)
                busy, frames, _copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            except sqlite3.Error as exc:
                log.warning("ledger checkpoint failed (tried again in %.0f s): %s",
                            CHECKPOINT_EVERY_S, exc)  # fmt: skip
                if conn is not None:
                    with contextlib.suppress(sqlite3.Error):
                        conn.close()
                conn = None
                continue
            if frames > 0 and not busy:
                self.catch_up = True
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN/COMMIT ourselves, so the module
    # never opens a transaction behind our back.
    conn = sqlite3.connect(
        path,
        isolation_level=None,
        check_same_thread=False,
        timeout=_BUSY_TIMEOUT_MS / 1000,
        cached_statements=_STATEMENT_CACHE,
    )
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
    # Transfer ids are random 128-bit keys, so inserts land all over the
    # B-tree: a 64 MiB page cache (default 2 MiB) keeps the hot pages in memory.
    conn.execute("PRAGMA cache_size=-65536")
    conn.execute("PRAGMA foreign_keys=OFF")
    return conn


class SqliteBackend:
    """Blocking; every method runs in a worker thread, never on the event loop."""

    name = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.dialect = Dialect("sqlite")
        self._writer: sqlite3.Connection | None = None
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._all: list[sqlite3.Connection] = []
        # Tests use this to reach the writer connection and inject real faults.
        self.on_writer_open: Callable[[sqlite3.Connection], None] | None = None
        # The accounts as the writer's last commit left them: a batch reads
        # from the file only those it has not seen (a sale's cardholder and
        # merchant rows cost more to read and decode than its rules). Valid
        # while no other connection has committed: `PRAGMA data_version`,
        # read holding the write lock, changes exactly then.
        self._accounts: AccountCache = {}
        self._data_version: int | None = None
        self._checkpointer: _Checkpointer | None = None

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._writer_conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(CREATE_VERSION_TABLE)
            applied = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
            for version, description, statements in pending_migrations(applied, "sqlite"):
                for stmt in statements:
                    conn.execute(stmt)
                conn.execute(
                    "INSERT INTO schema_migrations VALUES (?, ?, ?)",
                    (version, description, int(time.time() * 1e6)),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _writer_conn(self) -> sqlite3.Connection:
        if self._writer is None:
            self._writer = _connect(self.path)
            self._writer.execute(f"PRAGMA wal_autocheckpoint={_BACKSTOP_FRAMES}")
            self._all.append(self._writer)
            if self.on_writer_open is not None:
                self.on_writer_open(self._writer)
        return self._writer

    def apply(self, groups: Sequence[Group], now_us: int) -> list[Sequence[Result]]:
        try:
            conn = self._writer_conn()
            begin_immediate(conn, _BUSY_TIMEOUT_MS / 1000)
        except sqlite3.Error as exc:
            self._drop_writer()
            raise CommitFailed(f"sqlite: cannot begin a transaction: {exc}") from exc
        try:
            version = conn.execute("PRAGMA data_version").fetchone()[0]
            if version != self._data_version or len(self._accounts) > _ACCOUNT_CACHE_MAX:
                self._accounts.clear()
                self._data_version = version
            results = apply_batch(_SqliteStore(conn), groups, now_us, cache=self._accounts)
            conn.execute("COMMIT")
        except BaseException as exc:
            # The cached rows may hold this batch's balances, which did not commit.
            self._accounts.clear()
            self._data_version = None
            if not isinstance(exc, sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:
                self._drop_writer()
            raise CommitFailed(f"sqlite: batch of {len(groups)} not committed: {exc}") from exc
        checkpointer = self._checkpointer
        if checkpointer is None:
            # Started by the first commit, not by open(): a process that only
            # migrates and reads (a worker, with the writer in a process of
            # its own) must not copy the writer's pages.
            self._checkpointer = _Checkpointer(self.path)
        elif checkpointer.catch_up:
            checkpointer.catch_up = False
            # The frames committed during the checkpointer's pass (this batch
            # is committed already: a failure here is only logged).
            try:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            except sqlite3.Error as exc:
                log.warning("ledger checkpoint after a commit failed: %s", exc)
        return results

    def _drop_writer(self) -> None:
        # data_version counts per connection: a new one starts a new count.
        self._accounts.clear()
        self._data_version = None
        if self._writer is not None:
            with contextlib.suppress(sqlite3.Error):
                self._writer.close()
            self._writer = None

    def read(self, fn: Callable[[Any, Dialect], T]) -> T:
        with self._readers_lock:
            conn = self._readers.pop() if self._readers else None
        if conn is None:
            conn = _connect(self.path)
            conn.execute("PRAGMA query_only=ON")
            with self._readers_lock:
                self._all.append(conn)
        try:
            return fn(conn, self.dialect)
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            with self._readers_lock:
                self._readers.append(conn)

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.close()
            self._checkpointer = None
        with self._readers_lock:
            conns, self._all, self._readers = self._all, [], []
        self._writer = None
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
