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
waiters at once, lowering it lets slots lapse as they are left.

Resource handling: a slot is handed over by rescheduling the waiter with
the slot already its own, so a waiter whose timeout fires at the same
moment still leaves it (it was admitted). A waiter that is cancelled before
the hand-over holds nothing. The wait queue is bounded by the connections
(each processes one frame at a time), so it needs no bound of its own.
"""

from __future__ import annotations

import logging
import time

import trio

from switchd import metrics

log = logging.getLogger("switchd.admission")

#: Seconds between two log lines about requests turned away (one per request
#: would flood the log exactly when the switch is busiest).
SHED_LOG_INTERVAL_S = 10.0


class Admission:
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the limit of transactions in progress is at least 1")
        self._limit = limit
        self._free = limit  # below zero after the limit was lowered
        self._waiters = trio.lowlevel.ParkingLot()
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
            self._waiters.unpark()

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
        metrics.WAITING.inc()
        try:
            with trio.move_on_after(wait_s):
                await self._waiters.park()
                return True  # handed a slot by leave() or the limit setter
        finally:
            metrics.WAITING.dec()
        self._turned_away(wait_s)
        return False

    def leave(self) -> None:
        if self._free >= 0 and self._waiters:
            self._waiters.unpark()  # the slot passes on; _free is unchanged
        else:
            self._free += 1

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
