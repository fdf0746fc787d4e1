"""switchd.thread_batches: a big batch wakes its callers a slice per loop turn."""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from switchd.thread_batches import WAKE_SLICE, ThreadBatches


@dataclass
class _Call:
    n: int
    task: trio.lowlevel.Task = field(default_factory=trio.lowlevel.current_task)
    result: int | None = None


def _run_batch(calls: list[_Call]) -> None:
    for call in calls:
        call.result = call.n * 2


async def test_a_big_batch_lets_the_loop_turn_between_slices() -> None:
    # trio runs every task woken in one turn before anything else gets a turn:
    # a ticker that checkpoints in a loop runs once per turn, so ticks between
    # the first and the last caller to resume count the turns the waking took.
    callers = WAKE_SLICE * 4
    batches: ThreadBatches[_Call] = ThreadBatches()
    events: list[object] = []
    done = trio.Event()

    async def caller(n: int) -> None:
        call = _Call(n)
        batches.put(call)
        await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)
        assert call.result == n * 2
        events.append(n)
        if len(events) - events.count("tick") == callers:
            done.set()

    async def ticker() -> None:
        while not done.is_set():
            events.append("tick")
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        for n in range(callers):
            nursery.start_soon(caller, n)
        await trio.testing.wait_all_tasks_blocked()
        assert len(batches.queue) == callers  # all in the one batch
        nursery.start_soon(batches.serve, _run_batch, trio.CapacityLimiter(1))
        nursery.start_soon(ticker)
        await done.wait()
        nursery.cancel_scope.cancel()

    resumed = [i for i, e in enumerate(events) if e != "tick"]
    assert sorted(e for e in events if e != "tick") == list(range(callers))
    assert batches.batches == 1
    ticks_while_waking = events[resumed[0] : resumed[-1]].count("tick")
    # Four slices: the turns of the middle two at least fall in between (all
    # at once, one turn, would leave room for one tick at most).
    assert ticks_while_waking >= 2
