"""Event-loop lag (switchd/looplag.py): a real stall shows in the histogram and the log."""

from __future__ import annotations

import logging
import time

import pytest
import trio
from prometheus_client import REGISTRY

from switchd import looplag


def _sample(name: str) -> float:
    return REGISTRY.get_sample_value(f"switchd_event_loop_lag_seconds_{name}") or 0.0


async def test_a_blocked_loop_is_measured_and_named(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="switchd.loop")
    count0, sum0 = _sample("count"), _sample("sum")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(looplag.watch, 0.01)
        await trio.sleep(0.05)
        time.sleep(0.6)  # the loop can run nothing else meanwhile
        await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert _sample("count") - count0 >= 3
    assert _sample("sum") - sum0 >= 0.55
    stalls = [r.getMessage() for r in caplog.records if "event loop stalled" in r.getMessage()]
    assert len(stalls) == 1  # one line, however many wakes were late
