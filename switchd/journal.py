"""The transaction journal: every answered request, for duplicates, voids and reports.

Duplicate detection needs the answers of the terminal's open batch at hand
on every request, so they are kept in memory per (terminal, batch), loaded
from the database the first time that batch is touched after a start, and
dropped when the batch settles, or earlier, when more than ``MAX_CACHED``
answers are held and the batch has been idle for a minute. First touches
are loaded together: a fleet starting up asks for a thousand batches within
a second, and one query per batch through the switch database's single
connection queued them for seconds (a terminal's first sale timed out); the
loader task takes every batch asked for since its last query in one query.

Writes go through one writer task with group commit, like the ledger's, at
most one every ``LINGER_S`` while the queue is short: ``record`` never
waits for the disk. That is safe because the journal is not
what keeps money right: the ledger is, with its idempotent transfer ids. A
journal row lost in a crash only means a retried request is processed again
and the ledger answers it as the duplicate it is, with the same RRN and
outcome. By default the switch has a child process write the rows
(journal_writer.py), so their inserts do not compete with the terminals for
this process's GIL; with ``switchd run --workers N`` one writer process,
the supervisor's, writes every worker's rows.

Error handling: a failed write is logged and retried with backoff; rows stay
queued, up to ``MAX_QUEUED``; past that the oldest queued rows are dropped
with an error log (memory is bounded; as said, no money depends on them). A
lost writer process is a failed write like any other: its rows are sent
again to the next one (a child of our own started again, or the shared
writer the supervisor starts again), and the insert ignores any of them
already written.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import msgspec
import trio

from switchd.db import Cursor, Database
from switchd.thread_batches import in_slices

if TYPE_CHECKING:
    from switchd.journal_writer import JournalWriter

log = logging.getLogger("switchd.journal")

MAX_QUEUED = 100_000
#: Answers kept in memory over all open batches. Past it, batches idle for
#: EVICT_IDLE_S are dropped from memory, least recently used first and only
#: once all their answers are written, and read again if touched: a large
#: estate whose terminals settle once a day would otherwise hold every answer
#: of the day. Batches in use are never dropped, whatever their number: the
#: bound sheds idle batches, it does not thrash busy ones.
MAX_CACHED = 100_000
EVICT_IDLE_S = 60.0
#: Eviction passes scan the batches: at most one per this many seconds.
EVICT_EVERY_S = 1.0
#: Batches per load query: 2 parameters each, well below SQLite's limit.
LOAD_CHUNK = 400
RETRY_BACKOFF_S = (0.1, 0.5, 1.0, 2.0, 5.0)
#: Least time between the starts of two writes while fewer than LINGER_ROWS
#: rows wait. Writing as soon as a row was queued made a commit of one or
#: two rows per sale at a steady rate: 13.6 kB of pages written per sale
#: and ~40 us of the writer's CPU (2 workers, 3,700 sales/s). Nobody waits
#: for these writes (see above), so they may as well be fewer and larger.
LINGER_S = 0.05
LINGER_ROWS = 2_000

Key = tuple[str, int, int, bool]  # (tid, batch, stan, is_reversal)


class JournalUnavailable(Exception):
    """A batch's answers could not be read: duplicates cannot be told apart."""


class Entry(msgspec.Struct, gc=False):  # no cycles: the GC need not scan thousands
    tid: str
    batch: int
    stan: int
    reversal: bool
    kind: str
    mid: str
    digest: str  # of the request's MAB: tells a retransmission from a reused STAN
    rc: str
    amount: int | None
    masked_pan: str
    rrn: str
    auth_code: str
    orig_batch: int | None
    orig_stan: int | None
    response: bytes  # the ISO response without its MAC (re-signed when replayed)
    created_at: int

    @property
    def key(self) -> Key:
        return (self.tid, self.batch, self.stan, self.reversal)

    @property
    def repaired(self) -> bool:
        """Rebuilt from the ledger after its row was lost (journal_repair.py): it
        has no answer to replay, so duplicates and originals treat it as absent."""
        return not self.response


_COLUMNS = (
    "tid, batch, stan, reversal, kind, mid, digest, rc, amount, masked_pan, rrn, auth_code,"
    " orig_batch, orig_stan, response, created_at"
)


#: How the writer stores rows: a retried write (after a failure, or by a new
#: writer process) inserts nothing twice. A row rebuilt from the ledger (empty
#: response: see Entry.repaired) gives way to the real answer: the one a live
#: writer was still holding when the repair ran (another node, PostgreSQL), or
#: a retry's, answered afresh after the repair. Its created_at stays: the
#: time the money moved.
INSERT = (
    f"INSERT INTO journal ({_COLUMNS}) VALUES ({','.join('?' * 16)})"
    " ON CONFLICT (tid, batch, stan, reversal) DO UPDATE SET"
    + ",".join(f" {c} = excluded.{c}" for c in _COLUMNS.replace(" ", "").split(",")[4:-1])
    + " WHERE journal.response = ''"
)


def _row(e: Entry) -> tuple:
    return (
        e.tid, e.batch, e.stan, int(e.reversal), e.kind, e.mid, e.digest, e.rc, e.amount,
        e.masked_pan, e.rrn, e.auth_code, e.orig_batch, e.orig_stan, e.response.hex(),
        e.created_at,
    )  # fmt: skip


def _entry(r: tuple) -> Entry:
    return Entry(
        r[0], r[1], r[2], bool(r[3]), r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12],
        r[13], bytes.fromhex(r[14]), r[15],
    )  # fmt: skip


class Journal:
    def __init__(self, db: Database, writer: JournalWriter | None = None) -> None:
        self.db = db
        # Rows are written by `writer` (a child process, of our own or shared
        # by the workers: journal_writer.py) when given, else through `db` in
        # a worker thread of this process.
        self.writer = writer
        # Per (terminal, batch): its answers by (stan, reversal). Settling a
        # batch drops its dict in one step, whatever its size.
        self.batches: dict[tuple[str, int], dict[tuple[int, bool], Entry]] = {}
        self._loaded: set[tuple[str, int]] = set()
        # Batches in order of last use, each with the number of the last answer
        # recorded in it (it may leave memory once that answer is written) and
        # the time of its last use.
        self._lru: dict[tuple[str, int], tuple[int, float]] = {}
        self.cached = 0  # answers held in self.batches
        self._seq = 0  # answers recorded so far
        self._written_seq = 0  # every answer up to this number is in the database
        self._next_evict = 0.0  # no eviction pass before this time (one a second)
        # Batches asked for and not loaded yet, each with the event its askers wait on.
        self._to_load: dict[tuple[str, int], trio.Event] = {}
        self._loading: dict[tuple[str, int], trio.Event] = {}
        self._load_wake = trio.Event()
        self._queue: list[Entry] = []
        self._flushers = 0
        self._flush_now = trio.Event()
        self._wake = trio.Event()
        self._idle = trio.Event()
        self._idle.set()
        self.written = 0
        self.dropped = 0

    async def lookup(self, tid: str, batch: int, stan: int, reversal: bool) -> Entry | None:
        key = (tid, batch)
        if key not in self._loaded:
            done = self._loading.get(key) or self._to_load.get(key)
            if done is None:
                done = self._to_load[key] = trio.Event()
                self._load_wake.set()
            await done.wait()
            if key not in self._loaded:
                raise JournalUnavailable(f"the journal of batch {batch} could not be read")
        self._touch(key, None)
        answers = self.batches.get(key)
        entry = answers.get((stan, reversal)) if answers else None
        # A repaired row has no answer bytes to replay: the request is processed
        # afresh, and the ledger answers it as the duplicate it is (same RRN).
        return None if entry is None or entry.repaired else entry

    async def run_loader(self) -> None:
        """Load every batch asked for since the last query, in one query per chunk."""
        while True:
            if not self._to_load:
                self._load_wake = trio.Event()
                await self._load_wake.wait()
                continue
            self._loading, self._to_load = self._to_load, {}
            keys = list(self._loading)
            try:
                rows: list[tuple] = []
                for i in range(0, len(keys), LOAD_CHUNK):
                    rows += await self._fetch(keys[i : i + LOAD_CHUNK])
            except Exception as exc:
                # The askers answer 96; the next request of the batch tries again.
                log.error("journal: loading %d batches failed: %s", len(keys), exc)
            else:
                for r in rows:
                    e = _entry(r)
                    answers = self.batches.setdefault((e.tid, e.batch), {})
                    if answers.setdefault((e.stan, e.reversal), e) is e:
                        self.cached += 1
                self._loaded.update(keys)
                for key in keys:
                    self._touch(key, None)  # in use: safe from eviction for a while
            loading, self._loading = self._loading, {}
            # A fleet's first touches come back together: woken a slice per turn.
            await in_slices(list(loading.values()), trio.Event.set)

    async def _fetch(self, keys: list[tuple[str, int]]) -> list[tuple]:
        # A join on the key list, not `(tid, batch) IN (VALUES ...)`: SQLite
        # searches the IN form by tid alone and reads every batch the terminal
        # ever had; the join searches (tid, batch). Measured on a journal of
        # 138k rows, 400 batches not yet journaled (every batch's first
        # request): 24 ms -> 0.3-1 ms. The casts type the VALUES columns for
        # PostgreSQL.
        rows = ",".join(["(?, ?)"] * len(keys))
        return await self.db.fetchall(
            f"SELECT {_COLUMNS} FROM (VALUES {rows}) AS k JOIN journal"
            " ON journal.tid = CAST(k.column1 AS TEXT)"
            " AND journal.batch = CAST(k.column2 AS INTEGER)",
            [v for key in keys for v in key],
        )

    def record(self, e: Entry) -> None:
        """Keep the answer for duplicates now; the writer stores it soon after."""
        key = (e.tid, e.batch)
        answers = self.batches.setdefault(key, {})
        if (e.stan, e.reversal) not in answers:
            self.cached += 1
        answers[(e.stan, e.reversal)] = e
        self._seq += 1
        now = self._touch(key, self._seq)
        if self.cached > MAX_CACHED and now >= self._next_evict:
            self._evict(now)
        if len(self._queue) >= MAX_QUEUED:
            # The database has been failing for a long while. Shed the oldest
            # row rather than memory: the ledger, not the journal, holds the money.
            self._queue.pop(0)
            self.dropped += 1
            if self.dropped % 1000 == 1:
                log.error("journal queue full: %d rows dropped so far", self.dropped)
        self._queue.append(e)
        if self._idle.is_set():
            self._idle = trio.Event()
        self._wake.set()

    def forget_batch(self, tid: str, batch: int) -> None:
        """The batch has settled: its answers are no longer needed in memory."""
        self._drop((tid, batch))

    def _drop(self, key: tuple[str, int]) -> None:
        self._loaded.discard(key)
        self._lru.pop(key, None)
        self.cached -= len(self.batches.pop(key, ()))

    def _touch(self, key: tuple[str, int], seq: int | None) -> float:
        """Mark the batch used now (and holding answer `seq`): to the LRU's end."""
        now = time.monotonic()
        last = self._lru.pop(key, None)
        if seq is None:
            seq = last[0] if last is not None else 0
        self._lru[key] = (seq, now)
        return now

    def _evict(self, now: float) -> None:
        """Drop idle batches whose answers are all written, least recently used
        first, down to nine tenths of MAX_CACHED (a pass scans, so not one by one)."""
        self._next_evict = now + EVICT_EVERY_S
        target = MAX_CACHED * 9 // 10
        for key, (seq, used) in list(self._lru.items()):
            if self.cached <= target or now - used < EVICT_IDLE_S:
                break  # the rest were used more recently still
            if seq <= self._written_seq:
                self._drop(key)

    async def by_rrn(self, rrn: str) -> list[Entry]:
        rows = await self.db.fetchall(f"SELECT {_COLUMNS} FROM journal WHERE rrn = ?", (rrn,))
        return [_entry(r) for r in rows]

    async def run(self) -> None:
        """The writer: one transaction for everything queued since the last one."""
        attempt = 0
        started = -LINGER_S
        while True:
            if not self._queue:
                self._idle.set()
                self._wake = trio.Event()
                await self._wake.wait()
                continue
            linger = started + LINGER_S - trio.current_time()
            if linger > 0 and len(self._queue) < LINGER_ROWS and not self._flushers:
                with trio.move_on_after(linger):
                    await self._flush_now.wait()
            if self._flush_now.is_set():
                self._flush_now = trio.Event()
            started = trio.current_time()
            batch = self._queue
            self._queue = []
            upto = self._seq  # every answer recorded so far is in this write
            rows = [_row(e) for e in batch]

            def write(c: Cursor, rows: list[tuple] = rows) -> None:
                c.executemany(INSERT, rows)

            try:
                if self.writer is not None:
                    await self.writer.write(rows)
                else:
                    await self.db.run(write)
                self.written += len(rows)
                self._written_seq = upto
                attempt = 0
            except Exception as exc:
                # Keep the rows (in order, ahead of newer ones) and try again.
                self._queue = batch + self._queue
                delay = RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)]
                attempt += 1
                log.error("journal write of %d rows failed (%s); retrying in %.1fs",
                          len(rows), exc, delay)  # fmt: skip
                await trio.sleep(delay)

    async def flush(self) -> None:
        """Wait until everything recorded so far is written."""
        self._flushers += 1  # the writer does not linger while anyone waits here
        self._flush_now.set()
        try:
            await self._idle.wait()
        finally:
            self._flushers -= 1
