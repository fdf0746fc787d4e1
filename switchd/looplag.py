"""Event-loop lag: how late a sleeping task wakes, the loop's own health figure.

Every terminal shares one event loop per process, so any time the loop does
not get back to its timers (CPU saturation, a collector pause, a blocking
call) is latency added to every request in flight. The per-request
histograms show it only diluted; this shows it directly, as
`switchd_event_loop_lag_seconds`, and a warning names a stall of half a
second or more (at most one line per `WARN_EVERY_S`).
"""

from __future__ import annotations

import logging

import trio

from switchd import metrics

log = logging.getLogger("switchd.loop")

INTERVAL_S = 0.1
WARN_AT_S = 0.5
WARN_EVERY_S = 10.0


async def watch(interval_s: float = INTERVAL_S) -> None:
    """Sleep `interval_s` over and over; record how much later than asked each wake came."""
    observe = metrics.EVENT_LOOP_LAG.observe
    next_warning = 0.0
    while True:
        asleep = trio.current_time()
        await trio.sleep(interval_s)
        now = trio.current_time()
        lag = max(0.0, now - asleep - interval_s)
        observe(lag)
        if lag >= WARN_AT_S and now >= next_warning:
            log.warning("event loop stalled for %.0f ms", lag * 1e3)
            next_warning = now + WARN_EVERY_S
