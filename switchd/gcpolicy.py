"""When the garbage collector runs while the switch serves.

With thousands of connections, most of what is alive is the await chains of
the connection tasks (coroutines, frames, cancel scopes: about 34 objects a
connection), and each chain is replaced at every request. So whenever the
collector ran, its youngest generation held every chain renewed since it last
ran: 168,753 objects at 5,000 terminals, walked in 100-170 ms while every
terminal waited (bench.load, 5,000 terminals at 1,500 sales/s: one such pause
every ~18 s; at 1,875/s one pause took 2 s of queueing to drain). And it
found nothing: under load those collections freed 0 objects, because the
request path makes no reference cycles.

So: what is alive once the switch is up is frozen (the permanent generation
is never walked); then, every `FREEZE_INTERVAL_S`, whatever has survived since
is frozen too, which also restarts the young generation's count. An automatic
collection therefore walks at most a fraction of a second's survivors, and in
practice never triggers. Cycles do arise on rarer paths (errors, closed
connections) and a frozen cycle is not freed, so every `FULL_INTERVAL_S` a
full collection walks everything once (its pause and what it freed are
logged), then freezes again.
"""

from __future__ import annotations

import gc
import logging
import time

import trio

log = logging.getLogger("switchd.gc")

#: Automatic collection thresholds while serving (young, middle, old): young
#: collections every 50,000 allocations instead of 700, as a sale allocates a
#: few hundred objects. bench.load, 1,000 terminals, three runs each:
#: 2,533 / 2,781 / 2,862 sales/s with (700, 10, 10); 2,985 / 2,938 / 3,333 with these.
THRESHOLDS = (50_000, 20, 100)
#: How often the survivors of the last interval are frozen.
FREEZE_INTERVAL_S = 0.1
#: How often a full collection reclaims frozen cycles.
FULL_INTERVAL_S = 600.0


def freeze_startup() -> None:
    """Collect once, freeze everything alive (modules, configuration, reference
    data) and set the serving thresholds."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)


def full_collection() -> tuple[int, float]:
    """Unfreeze, collect every generation, freeze again: (objects freed, seconds)."""
    started = time.perf_counter()
    gc.unfreeze()
    freed = gc.collect()
    gc.freeze()
    return freed, time.perf_counter() - started


async def run_schedule(
    freeze_interval_s: float = FREEZE_INTERVAL_S, full_interval_s: float = FULL_INTERVAL_S
) -> None:
    """Freeze survivors every `freeze_interval_s`; collect fully every `full_interval_s`."""
    next_full = trio.current_time() + full_interval_s
    while True:
        await trio.sleep(freeze_interval_s)
        if trio.current_time() >= next_full:
            freed, seconds = full_collection()
            log.info("full garbage collection: %d objects freed in %.0f ms; %d frozen",
                     freed, seconds * 1e3, gc.get_freeze_count())  # fmt: skip
            next_full = trio.current_time() + full_interval_s
        else:
            gc.freeze()
