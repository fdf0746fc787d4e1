"""The writer: one task, group commit, results delivered only after a durable commit.

Operations: `submit` (independent operations), `submit_linked` (all or
nothing), `execute` (one operation), and read queries that bypass the writer.

Plan: callers append a request to a queue and sleep. The writer task takes
everything queued (up to `max_batch` groups), runs it in a worker thread (or,
with `writer = "process"`, a child process: writer_process.py) as one
database transaction (`backend.apply`), and when COMMIT has returned (the
data is on disk), wakes each caller with its own results. While one batch
commits, the next one accumulates, so the batch size adapts to the load by
itself: one operation when idle, thousands under load, one fsync each time.
With a writer process there are `PIPELINE_DEPTH` writer tasks: one batch
can be on its way to the child while the one before commits, and results
are delivered in slices, so what the first woken callers submit next leaves
before the last ones are woken (the child applies batches in order, each in
its own transaction, and each is acknowledged only once its own commit returned).

Resource handling: `open_ledger` owns a nursery holding the writer and the
expiry sweeper. Leaving it stops new submissions (LedgerClosed), lets the
writer drain everything already queued, then closes the database.

Error handling: a rule violation is a result code for that operation only
(see core.py). A failed commit (disk full, connection lost, ...) raises
CommitFailed in every caller of that batch, and the writer goes on with the
next batch; nothing acknowledged is lost, because nothing is acknowledged
before its commit returned. A caller cannot be cancelled out of a submission
once queued (it would not know whether its money moved): its cancellation
takes effect when the result arrives, one commit later at most. The database
call itself is shielded too, so results of a batch that committed are always
delivered, even if the ledger's nursery is being cancelled.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, date, tzinfo
from functools import partial
from typing import Any, Protocol, TypeVar

import outcome
import trio

from hsm.cheap_metrics import cheap
from switchd.thread_batches import ThreadBatches

from . import metrics, queries
from .config import LedgerConfig
from .core import ExpireDue, Group
from .model import (
    Account,
    AnsweredRequest,
    CommitFailed,
    LedgerClosed,
    Op,
    Result,
    SettlementTotals,
    TransferRecord,
)
from .queries import Dialect
from .writer_process import ProcessWriter

log = logging.getLogger("switchd.ledger")
T = TypeVar("T")

#: Reader tasks, each running the reads queued since its last turn on one
#: connection in a worker thread (PostgreSQL: up to this many at once).
READERS = 4
#: Batches on their way to a writer process at once. With two, the child
#: applies and commits one while this process wakes the callers of the one
#: before and sends what they submit next: the two processes work at the same
#: time instead of taking turns (closed loop, they had alternated: ~12 us of
#: this process and ~28 us of the child's per operation, one after the other).
PIPELINE_DEPTH = 2
#: Callers woken between two checkpoints when results are delivered with a
#: pipeline: what they submit can then leave in the next batch while the rest
#: of this one is still being delivered. Not with one writer (the thread
#: writer): bench.ledger's batches then split (820 instead of 1,000 per
#: commit, -13 % transfers/s; with one more checkpoint after the last slice,
#: even throughput but commit p99 70 -> 100 ms).
DELIVERY_SLICE = 128
#: The writer task's updates, each commit (and each idle turn): written without
#: prometheus's lock (and, with several workers, its pid check); only the
#: event loop's thread writes them (hsm/cheap_metrics.py says why that matters).
_QUEUE_DEPTH = cheap(metrics.QUEUE_DEPTH)
_COMMIT_SECONDS = cheap(metrics.COMMIT_SECONDS)
_BATCH_SIZE = cheap(metrics.BATCH_SIZE)


class Backend(Protocol):
    """A database behind the ledger; every method blocks and runs in a worker thread."""

    name: str

    def open(self) -> None: ...
    def apply(self, groups: Sequence[Group], now_us: int) -> list[Sequence[Result]]: ...
    def read(self, fn: Callable[[Any, Dialect], T]) -> T: ...
    def close(self) -> None: ...


class _Read:
    __slots__ = ("args", "fn", "result", "task")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...],
                 task: trio.lowlevel.Task) -> None:  # fmt: skip
        self.fn = fn
        self.args = args
        self.task = task
        self.result: outcome.Outcome[Any] = outcome.Error(LedgerClosed("the ledger closed"))


def _run_reads(calls: list[_Read], conn: Any, dialect: Dialect) -> None:
    """In a worker thread: each queued read on one connection, each with its own outcome."""
    for call in calls:
        call.result = outcome.capture(call.fn, conn, dialect, *call.args)
        if isinstance(call.result, outcome.Error):
            # PostgreSQL: a failed statement aborts the transaction; the next
            # read must not inherit that.
            with contextlib.suppress(Exception):
                conn.rollback()


#: What one caller queued: its single group (`execute`) or its list of groups.
_Payload = Group | list[Group]


def _no_abort(_: Any) -> trio.lowlevel.Abort:
    # Once queued, an operation may commit at any moment: the caller must hear
    # the outcome, so its cancellation waits for the result.
    return trio.lowlevel.Abort.FAILED


class Ledger:
    """Use through `open_ledger`; safe to share among any number of trio tasks."""

    def __init__(
        self, backend: Backend, config: LedgerConfig, process: ProcessWriter | None = None
    ) -> None:
        self.backend = backend
        self.config = config
        # With writer = "process", batches are applied by a child process
        # (writer_process.py); reads still use `backend` here.
        self.process = process
        # Each caller queues two entries, its task and then its _Payload: no
        # request object and no one-group list per call while it waits
        # (objects the garbage collector counted and walked under load).
        self._queue: deque[Any] = deque()
        # Writer tasks with nothing to take park here; a submission unparks one.
        self._idle_writers = trio.lowlevel.ParkingLot()
        self.writers = PIPELINE_DEPTH if process is not None else 1
        self._closing = False
        self._idle = trio.Event()
        self._write_limiter = trio.CapacityLimiter(1)
        self._read_limiter = trio.CapacityLimiter(READERS)
        self._reads: ThreadBatches[_Read] = ThreadBatches()
        self._sweeper_scope = trio.CancelScope()
        # Counters for metrics and the benchmark.
        self.commits = 0
        self.committed_ops = 0
        self.failed_commits = 0
        self._queued_groups = 0

    # --- writing ----------------------------------------------------------

    async def submit(self, ops: Sequence[Op]) -> list[Result]:
        """Apply independent operations; one result each, in order, once durable."""
        if not ops:
            return []
        return await self._enqueue([Group((op,)) for op in ops])

    async def submit_linked(self, ops: Sequence[Op]) -> list[Result]:
        """Apply operations all or nothing: if one fails, it carries the reason
        and every other one LINKED_EVENT_FAILED, and nothing changed."""
        if not ops:
            return []
        return await self._enqueue([Group(tuple(ops), linked=True)])

    async def execute(self, op: Op) -> Result:
        """One operation, one result."""
        # `_enqueue` written out: one coroutine less to create, and to pass
        # through at each suspension and resumption, on the hottest call.
        if self._closing:
            raise LedgerClosed("the ledger is closing; nothing was applied")
        self._queue.append(trio.lowlevel.current_task())
        self._queue.append(Group((op,)))
        self._queued_groups += 1
        if self._idle_writers:
            self._idle_writers.unpark()
        return (await trio.lowlevel.wait_task_rescheduled(_no_abort))[0]  # type: ignore[no-any-return]

    async def _enqueue(self, groups: list[Group]) -> list[Result]:
        if self._closing:
            raise LedgerClosed("the ledger is closing; nothing was applied")
        self._queue.append(trio.lowlevel.current_task())
        self._queue.append(groups)
        self._queued_groups += len(groups)
        if self._idle_writers:
            self._idle_writers.unpark()
        return await trio.lowlevel.wait_task_rescheduled(_no_abort)  # type: ignore[no-any-return]

    async def _run_writer(self) -> None:
        try:
            while True:
                # The commit below is shielded; this is where a cancelled
                # ledger stops, even under a load that never lets the queue empty.
                await trio.lowlevel.checkpoint_if_cancelled()
                if not self._queue:
                    if self._closing:
                        return
                    _QUEUE_DEPTH.set(0)
                    await self._idle_writers.park()
                    continue
                await self._commit_next()
        finally:
            # Cancelled or closing: whatever is still queued never reached the
            # database, and its callers must not sleep forever.
            self._closing = True
            self._queued_groups = 0
            _QUEUE_DEPTH.set(0)
            while self._queue:
                task = self._queue.popleft()
                self._queue.popleft()
                trio.lowlevel.reschedule(
                    task,
                    outcome.Error(
                        LedgerClosed("the ledger closed before this operation reached the database")
                    ),
                )

    async def _commit_next(self) -> None:
        # The gauge is set here, once a batch, not on every submission: a lock
        # and a write per operation (0.55 us, about 5 % of the engine's own
        # cost per operation) for a figure scraped every few seconds.
        _QUEUE_DEPTH.set(self._queued_groups)
        taken: list[tuple[trio.lowlevel.Task, _Payload]] = []
        groups: list[Group] = []
        queue, max_batch = self._queue, self.config.max_batch
        while queue and len(groups) < max_batch:
            task = queue.popleft()
            payload = queue.popleft()
            taken.append((task, payload))
            if type(payload) is Group:
                groups.append(payload)
            else:
                groups.extend(payload)
        self._queued_groups -= len(groups)
        now_us = time.time_ns() // 1000
        started = time.perf_counter()
        try:
            with trio.CancelScope(shield=True):
                if self.process is not None:
                    results = await self.process.apply(groups, now_us)
                else:
                    results = await trio.to_thread.run_sync(
                        self.backend.apply, groups, now_us, limiter=self._write_limiter
                    )
        except Exception as exc:
            self.failed_commits += 1
            metrics.COMMITS_FAILED.inc()
            if not isinstance(exc, CommitFailed):
                log.exception("ledger: unexpected error committing a batch")
            log.error("ledger: commit of %d groups failed: %s", len(groups), exc)
            message = str(exc) if isinstance(exc, CommitFailed) else f"internal error: {exc!r}"
            for task, _ in taken:
                err = CommitFailed(message)
                err.__cause__ = exc
                trio.lowlevel.reschedule(task, outcome.Error(err))
            return
        self.commits += 1
        self.committed_ops += len(groups)
        _COMMIT_SECONDS.observe(time.perf_counter() - started)
        _BATCH_SIZE.observe(len(groups))
        i = 0
        for k, (task, payload) in enumerate(taken, 1):
            mine: Sequence[Result]
            if type(payload) is Group:
                mine = results[i]  # execute() takes the one result out
                i += 1
            else:
                # The caller gets a list of its own: a group's results may be
                # a tuple the backend shares (core.apply_batch).
                n = len(payload)
                if n == 1 and type(results[i]) is list:
                    mine = results[i]
                else:
                    mine = [r for group_results in results[i : i + n] for r in group_results]
                i += n
            trio.lowlevel.reschedule(task, outcome.Value(mine))
            if k % DELIVERY_SLICE == 0 and self.writers > 1:
                # Not cancellable: every result of a committed batch is delivered.
                await trio.lowlevel.cancel_shielded_checkpoint()

    async def _run_sweeper(self) -> None:
        with self._sweeper_scope:
            while not self._closing:
                await trio.sleep(self.config.expiry_interval_s)
                try:
                    await self._enqueue([Group((ExpireDue(),))])
                except (CommitFailed, LedgerClosed) as exc:
                    log.warning("ledger: expiry sweep failed: %s", exc)

    async def expire_due(self, limit: int = 1000) -> int:
        """Release holds whose expiry has passed now (the sweeper does it every second)."""
        result = (await self._enqueue([Group((ExpireDue(limit),))]))[0]
        return result.value or 0

    def _begin_close(self) -> None:
        self._closing = True
        self._idle_writers.unpark_all()
        self._sweeper_scope.cancel()

    # --- reading ----------------------------------------------------------

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        """Queue a read; the readers run all queued reads in one thread hop.

        One thread hop per read capped reads at the event loop's pace: each of
        the 8 threads' results waits for a loop iteration to come back, and
        under load an iteration takes tens of milliseconds. Measured, 1,000
        terminals with the full mix: ~535 reads/s, every balance, void, refund
        and reversal ~2 s in the queue while the query itself took 0.4 ms.
        """
        if self._reads.ended:
            raise LedgerClosed("the ledger is closed")
        call = _Read(fn, args, trio.lowlevel.current_task())
        self._reads.put(call)

        def abort(_: Any) -> trio.lowlevel.Abort:
            # Still queued: drop it. Already taken by a reader: its result comes
            # with that batch, and the cancellation takes effect then.
            try:
                self._reads.queue.remove(call)
            except ValueError:
                return trio.lowlevel.Abort.FAILED
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)
        return call.result.unwrap()  # type: ignore[no-any-return]

    async def _run_reader(self) -> None:
        await self._reads.serve(self._read_batch, self._read_limiter)

    def _read_batch(self, calls: list[_Read]) -> None:
        self.backend.read(partial(_run_reads, calls))

    async def account(self, account_id: int) -> Account | None:
        """The account with its balances (integers, minor units), or None."""
        return await self._read(queries.get_account, account_id)

    async def transfer(self, transfer_id: int) -> TransferRecord | None:
        return await self._read(queries.get_transfer, transfer_id)

    async def transfers_by_batch(self, terminal_id: str, batch: int) -> list[TransferRecord]:
        return await self._read(queries.transfers_by_batch, terminal_id, batch)

    async def request_transfers(
        self, terminal_id: str, batch: int, stan: int, kind: str
    ) -> list[TransferRecord]:
        """The transfers (legs) one terminal request created: what a void or reversal undoes."""
        return await self._read(queries.request_transfers, terminal_id, batch, stan, kind)

    async def transfers_by_merchant_day(
        self, merchant_id: str, day: date, tz: tzinfo = UTC
    ) -> list[TransferRecord]:
        start, end = queries.day_bounds_us(day, tz)
        return await self._read(queries.transfers_by_merchant, merchant_id, start, end)

    async def answered_since(self, since_us: int) -> list[AnsweredRequest]:
        """The requests (leg 0 of each) committed since `since_us`: see queries.answered_since."""
        return await self._read(queries.answered_since, since_us)

    async def settlement_totals(self, terminal_id: str, batch: int) -> SettlementTotals:
        return await self._read(queries.settlement_totals, terminal_id, batch)

    async def current_batch(self, terminal_id: str) -> int:
        """The terminal's open batch number (1 for a terminal never settled)."""
        return await self._read(queries.current_batch, terminal_id)

    async def audit(self) -> list[str]:
        """Recompute all balances from the transfers; an empty list means consistent."""
        return await self._read(queries.audit)


def make_backend(config: LedgerConfig) -> Backend:
    if config.backend == "sqlite":
        from .sqlite_backend import SqliteBackend

        return SqliteBackend(config.sqlite_path())
    from .postgres_backend import PostgresBackend

    pg = config.postgres
    return PostgresBackend(
        pg.dsn,
        schema=pg.schema,
        pool_min=pg.pool_min,
        pool_max=pg.pool_max,
        connect_timeout_s=pg.connect_timeout_s,
    )


@asynccontextmanager
async def open_ledger(
    config: LedgerConfig, backend: Backend | None = None
) -> AsyncIterator[Ledger]:
    """Open the database (running migrations), start the writer, yield the ledger.

    With ``config.writer == "process"`` (and no `backend` given: a caller's
    own backend object cannot be handed to another process), batches are
    applied by a child process; see writer_process.py.

    On exit: no new submissions, queued ones are committed, the writer process
    (if any) ends, the database is closed.
    """
    own = backend is None
    backend = backend if backend is not None else make_backend(config)
    await trio.to_thread.run_sync(backend.open)
    process = None
    try:
        if own and config.writer == "process":
            process = ProcessWriter(config)
            await process.start()
        async with trio.open_nursery() as nursery:
            ledger = Ledger(backend, config, process)
            for _ in range(ledger.writers):
                nursery.start_soon(ledger._run_writer)
            nursery.start_soon(ledger._run_sweeper)
            async with trio.open_nursery() as readers:
                for _ in range(READERS):
                    readers.start_soon(ledger._run_reader)
                try:
                    yield ledger
                finally:
                    readers.cancel_scope.cancel()
                    ledger._begin_close()
    finally:
        with trio.CancelScope(shield=True):
            if process is not None:
                await process.aclose()
            await trio.to_thread.run_sync(backend.close)
