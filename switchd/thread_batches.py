"""Blocking calls queued by trio tasks and run in a worker thread, a batch at a time.

One thread hop per call caps calls at the event loop's pace: each result
waits for a loop iteration to come back, and under load an iteration takes
milliseconds. So callers queue their call and sleep; a serving task takes
everything queued since its last turn, runs it in one thread hop, and wakes
each caller, whose call object then holds its own outcome. The switch's
database (calls sharing one transaction) and the ledger's reads use it.

Callers are woken ``WAKE_SLICE`` at a time, with a checkpoint between
slices. trio runs every task woken in one turn before it polls sockets
again, so 5,000 terminals settling at once, woken by one batch, held every
other terminal for 0.5 to 1.7 s (one "event loop stalled" line). In slices,
each turn is bounded, and terminals whose bytes arrived meanwhile are served
between them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

import trio

#: Callers woken per loop turn: at a few hundred microseconds of Python each
#: (an answer built, signed, sent), 64 keep a turn to about 20 ms.
WAKE_SLICE = 64


class Call(Protocol):
    #: The caller, asleep in wait_task_rescheduled until its batch has run.
    task: trio.lowlevel.Task


C = TypeVar("C", bound=Call)
T = TypeVar("T")


class ThreadBatches(Generic[C]):
    """The queue; `serve` in one or more tasks runs it."""

    def __init__(self) -> None:
        self.queue: list[C] = []
        self._wake = trio.Event()
        #: Tasks in `serve` now; `ended` once one has stopped (cancelled).
        self.serving = 0
        self.ended = False
        self.batches = 0

    def put(self, call: C) -> None:
        """Queue a call; the caller then sleeps until a serving task reschedules it."""
        self.queue.append(call)
        self._wake.set()

    async def serve(self, run_batch: Callable[[list[C]], Any],
                    limiter: trio.CapacityLimiter) -> None:  # fmt: skip
        """Run the queued calls, a batch per thread hop, until cancelled.

        `run_batch` runs in the worker thread and sets each call's outcome.
        A batch once taken runs to the end (shielded): its callers must hear
        what happened. On the way out, every call still queued is woken with
        the outcome it was made with (its "closed" error).
        """
        self.serving += 1
        try:
            while True:
                if not self.queue:
                    self._wake = trio.Event()
                    await self._wake.wait()
                    continue
                calls, self.queue = self.queue, []
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(run_batch, calls, limiter=limiter)
                self.batches += 1
                await in_slices(calls, lambda call: trio.lowlevel.reschedule(call.task))
        finally:
            self.serving -= 1
            self.ended = True
            calls, self.queue = self.queue, []
            for call in calls:
                trio.lowlevel.reschedule(call.task)


async def in_slices(items: Sequence[T], wake: Callable[[T], object]) -> None:
    """`wake` each item, with a loop turn after every ``WAKE_SLICE``.

    The checkpoints are not cancellable: every item is woken, even when the
    caller is being cancelled (what it wakes would otherwise sleep on).
    """
    for i, item in enumerate(items, 1):
        wake(item)
        if i % WAKE_SLICE == 0 and i < len(items):
            await trio.lowlevel.cancel_shielded_checkpoint()
