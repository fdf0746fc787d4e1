"""Admission: at most ``limit`` transactions in progress; the rest wait their turn, in order.

Why: every transaction in progress is a task that the event loop runs a step
of on each turn. Past the switch's capacity (5,000 terminals in a closed
loop, each sending its next sale at once), all of them were in progress
together: a loop turn ran thousands of steps, a transaction needed several
turns, its own deadline passed mid-flight, and in 3 of 5 runs up to one sale
in fourteen was answered 98 after up to 9.9 s with its posting undone.
Capped, the waiting requests are parked tasks that cost no loop time, the
admitted ones finish in a fraction of a second, and no error came in 7 runs;
throughput was unchanged within the run-to-run noise (see the commit).

Operations: ``enter(wait_s)`` takes a slot, at once when one is free (no
checkpoint: the flow yields at its next I/O anyway), else waits in FIFO
order for at most ``wait_s``; False means none came (the caller answers
without doing anything). ``leave()`` hands the slot to the longest waiter,
or frees it. ``limit`` may change while running (SIGHUP): raising it admits
waiters at once, lowering it lets slots lapse as they are left. ``run()``
is the sweeper that turns away waiters whose time is up; the owner runs it
for as long as requests may wait.

Plan: a waiter parks with no deadline of its own; its deadline is kept by
one sweeper for all of them (deadlines.py), which turns it away when its
time is up. At 1,000 closed-loop terminals about half of all requests
wait here, and a cancel scope each (a deadline-heap entry pushed, then
pruned) was measured at about a third of this module's cost.

Resource handling: a slot is handed over by rescheduling the waiter with
the slot already its own, so a waiter whose timeout falls at the same
moment still leaves it (it was admitted). A waiter that is cancelled before
the hand-over holds nothing. The wait queue is bounded by the connections
(each processes one frame at a time), so it needs no bound of its own.

Known weakness: after a reload shortens ``queue_timeout_s``, a waiter that
came in under the new, shorter timeout may wait out the older waiters'
longer one before it is turned away.
"""

from __future__ import annotations

import logging
import time

import outcome
import trio

from switchd import metrics
from switchd.deadlines import Deadlines

log = logging.getLogger("switchd.admission")

#: Seconds between two log lines about requests turned away (one per request
#: would flood the log exactly when the switch is busiest).
SHED_LOG_INTERVAL_S = 10.0


def _turn_away(task: trio.lowlevel.Task) -> None:
    trio.lowlevel.reschedule(task, outcome.Value(False))


class Admission:
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the limit of transactions in progress is at least 1")
        self._limit = limit
        self._free = limit  # below zero after the limit was lowered
        # Parked tasks and their deadlines, in arrival order; one past its
        # deadline is woken turned away.
        self._waiters: Deadlines[trio.lowlevel.Task] = Deadlines(_turn_away)
        self._shed = 0
        self._shed_logged_at = -SHED_LOG_INTERVAL_S

    @property
    def limit(self) -> int:
        return self._limit

    @limit.setter
    def limit(self, value: int) -> None:
        if value < 1:
            raise ValueError("the limit of transactions in progress is at least 1")
        self._free += value - self._limit
        self._limit = value
        while self._free > 0 and self._waiters:
            self._free -= 1
            self._wake_oldest(True)

    @property
    def in_progress(self) -> int:
        return self._limit - self._free

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def enter(self, wait_s: float) -> bool:
        """Take a slot; False if none came within ``wait_s`` (nothing is held then)."""
        if self._free > 0:
            self._free -= 1
            return True
        task = trio.lowlevel.current_task()
        waiters = self._waiters
        waiters.add(task, trio.current_time() + wait_s)

        def abort(_: object) -> trio.lowlevel.Abort:
            waiters.discard(task)  # still queued: trio aborts only a task not yet woken
            return trio.lowlevel.Abort.SUCCEEDED

        metrics.WAITING.inc()
        try:
            admitted: bool = await trio.lowlevel.wait_task_rescheduled(abort)
        finally:
            metrics.WAITING.dec()
        if not admitted:
            self._turned_away(wait_s)
        return admitted

    def leave(self) -> None:
        if self._free >= 0 and self._waiters:
            self._wake_oldest(True)  # the slot passes on; _free is unchanged
        else:
            self._free += 1

    async def run(self) -> None:
        """The sweeper: turn away each waiter whose time is up, oldest first."""
        await self._waiters.run()

    def _wake_oldest(self, admitted: bool) -> None:
        trio.lowlevel.reschedule(self._waiters.pop_oldest(), outcome.Value(admitted))

    def _turned_away(self, wait_s: float) -> None:
        metrics.SHED.inc()
        self._shed += 1
        now = time.monotonic()
        if now - self._shed_logged_at >= SHED_LOG_INTERVAL_S:
            log.warning(
                "overloaded: %d request(s) answered 96 after waiting %.1f s for one of %d"
                " transaction slots (%d waiting now)",
                self._shed, wait_s, self._limit, len(self._waiters),
            )  # fmt: skip
            self._shed = 0
            self._shed_logged_at = now
