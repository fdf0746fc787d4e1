"""Cheaper writers for the metric updates made on every request.

Each PIN sale updates a handful of metrics: the HSM's command counters and
latency histogram, the switch's in-flight gauge, transaction counter and
histogram. Through prometheus_client each update takes the value's lock
and checks its argument, and a histogram finds its bucket by a Python loop:
about 17,000 of the ~115,000 instructions of a DC through the in-process
link (callgrind, bench.hsm_local).

In a single process the value behind a metric is a `MutexValue`: a float,
written under its lock and read under it by a scrape (`generate_latest`,
run in a worker thread by /metrics). The writers here add to that same
float without the lock, so /metrics shows the same series with the same
values at any moment, `_created` and all. That is safe because every writer
of these metrics runs on the event loop's thread: with one writer no
update can be lost, even though `obj.attr += n` may be interrupted between
its read and its write; and with the GIL the attribute's store is one step,
so a scrape sees the old float or the new one.

In multiprocess mode (PROMETHEUS_MULTIPROC_DIR, `switchd run --workers N`)
the value also lives in the process's mmapped file, which a scrape in
another process reads: the writers for that case are in
hsm/cheap_metrics_mp.py, with their own safety argument.

Where any of that does not hold, `cheap` returns the prometheus object
itself, so the update is prometheus_client's own:
- a Python without the GIL (free-threaded builds);
- a prometheus_client whose metrics are laid out otherwise;
- a gauge whose multiprocess mode keeps a timestamp (mostrecent);
- a labelled metric's parent (only its children hold values).
"""

from __future__ import annotations

import sys
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.values import MutexValue

from hsm import cheap_metrics_mp as mp

#: False on a free-threaded Python (sys._is_gil_enabled exists from 3.13).
_GIL = getattr(sys, "_is_gil_enabled", lambda: True)()
#: Gauge modes whose `set` keeps no timestamp (the others write time.time()).
_GAUGE_MODES = frozenset({"all", "liveall", "min", "livemin", "max", "livemax", "sum", "livesum"})


class CheapCount:
    """`inc()` of a Counter: one more, the same float the counter holds."""

    __slots__ = ("_value",)

    def __init__(self, value: MutexValue) -> None:
        self._value = value

    def inc(self) -> None:
        self._value._value += 1


class CheapGauge:
    """`inc(amount)`, `dec(amount)` and `set(value)` of a Gauge, on its float."""

    __slots__ = ("_value",)

    def __init__(self, value: MutexValue) -> None:
        self._value = value

    def inc(self, amount: float = 1) -> None:
        self._value._value += amount

    def dec(self, amount: float = 1) -> None:
        # x - a is x + (-a) exactly in IEEE arithmetic: prometheus's inc(-amount).
        self._value._value -= amount

    def set(self, value: float) -> None:
        self._value._value = float(value)


class CheapObserve:
    """`observe(amount)` of a Histogram: its sum and its one bucket.

    The bucket is the first whose upper bound is >= amount, as prometheus
    picks it (bisect_left over the sorted bounds; the last is +Inf). A NaN
    amount would land in the first bucket rather than none: latencies from
    a monotonic clock are never NaN.
    """

    __slots__ = ("_bounds", "_buckets", "_sum")

    def __init__(self, sum_: MutexValue, buckets: list[MutexValue], bounds: list[float]) -> None:
        self._sum = sum_
        self._buckets = buckets
        self._bounds = bounds

    def observe(self, amount: float) -> None:
        self._sum._value += amount
        self._buckets[bisect_left(self._bounds, amount)]._value += 1


def _plain(value: object) -> bool:
    return type(value) is MutexValue and type(getattr(value, "_value", None)) is float


def cheap(metric: Any) -> Any:
    """A cheaper writer for a Counter, Gauge or Histogram (a labelled child, or a
    metric without labels), or the metric itself."""
    if not _GIL:
        return metric
    kind = type(metric)
    if kind is Counter or (
        kind is Gauge and getattr(metric, "_multiprocess_mode", None) in _GAUGE_MODES
    ):
        value = getattr(metric, "_value", None)
        if _plain(value):
            return CheapCount(value) if kind is Counter else CheapGauge(value)
        return mp.cheap_value(metric, value, kind is Gauge) or metric
    if kind is Histogram:
        sum_ = getattr(metric, "_sum", None)
        buckets = getattr(metric, "_buckets", None)
        bounds = getattr(metric, "_upper_bounds", None)
        if not (
            isinstance(buckets, list) and isinstance(bounds, list) and len(bounds) == len(buckets)
            and bounds == sorted(bounds) and bounds[-1] == float("inf")
        ):  # fmt: skip
            return metric
        if _plain(sum_) and all(map(_plain, buckets)):
            return CheapObserve(sum_, buckets, bounds)  # type: ignore[arg-type]
        return mp.cheap_histogram(metric, sum_, buckets, bounds) or metric
    return metric


def count_and_observe(counter: Any, histogram: Any) -> Callable[[float], None]:
    """`counter.inc(); histogram.observe(amount)` as one call: the pool's record
    of each request that succeeded. When both are cheap writers, one function
    does both updates (one call per request instead of two)."""
    if isinstance(counter, CheapCount) and isinstance(histogram, CheapObserve):
        count, sum_ = counter._value, histogram._sum
        buckets, bounds = histogram._buckets, histogram._bounds

        def record(amount: float) -> None:
            count._value += 1
            sum_._value += amount
            buckets[bisect_left(bounds, amount)]._value += 1

        return record
    fused = mp.count_and_observe(counter, histogram)
    if fused is not None:
        return fused

    def record_each(amount: float) -> None:
        counter.inc()
        histogram.observe(amount)

    return record_each
