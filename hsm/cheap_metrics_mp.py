"""The cheap writers of hsm/cheap_metrics.py in prometheus_client's multiprocess mode.

In multiprocess mode (PROMETHEUS_MULTIPROC_DIR, `switchd run --workers N`)
the value behind a metric is a `MmapedValue`: a float in the object and, for
scrapes by other processes, 16 bytes in this process's file for that type
of metric (an mmapped `MmapedDict`): the float and a timestamp (0.0 but for
`mostrecent` gauges), at a position fixed when the value is made. Each of
its updates takes a lock shared by every value, calls `os.getpid()` (a
system call on this glibc) to notice a fork, and looks its key up again
before it packs the two floats into the mmap: ~900 ns a counter's inc(),
and ~9 getpid calls per sale in a worker.

The writers here make the same write (the float and 0.0, one slice
assignment of 16 bytes, at the same position of the same file) and keep the
value's own float in step, so an update or a `get()` through
prometheus_client goes on from the same figure. What they leave out:
- the lock. Every writer of a value runs on the event loop's thread, so no
  update is lost (as in one process); the GIL makes each store one step.
  A scrape in another process reads the file and sees the 16 bytes as they
  were before or after a write, as with prometheus's own slice assignment.
  A new value (a new labelled child) is written elsewhere in the file, and
  may have the file mapped again, larger: the mapping is read as
  `_file._m` at each write, so a writer neither keeps an old mapping alive
  nor writes once prometheus_client has closed the file (positions never
  move when the file grows).
- the pid check. prometheus_client starts new files when it sees a new pid
  (a fork): a writer in a forked child would write into its parent's file
  through the inherited mapping. Our children are started by exec
  (subprocess), never forked; should one be, `os.register_at_fork` makes
  every writer here call the prometheus object's own method in the child
  (which then finds the new pid), and `cheap` makes no new ones there.

Where the value is not laid out as expected (not prometheus_client's
multiprocess value class, the bytes at its position not its float and
0.0, ...), the functions here return None and `cheap` keeps the prometheus
object. A value written from another thread, which would break the first
point, is the caller's to avoid: only the event loop's updates use `cheap`.
"""

from __future__ import annotations

import mmap
import os
import struct
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

from prometheus_client import values

_PACK = struct.Struct("dd").pack
_UNPACK = struct.Struct("dd").unpack_from
#: The multiprocess value class, or None in a single process.
_MMAPED: type | None = (
    values.ValueClass if getattr(values.ValueClass, "_multiprocess", False) else None
)
#: True in a child forked after this module was imported (see the docstring).
_forked = False


def _after_fork_in_child() -> None:
    global _forked
    _forked = True


os.register_at_fork(after_in_child=_after_fork_in_child)


def _place(value: object) -> tuple[Any, slice] | None:
    """The file (MmapedDict) of a multiprocess value and the slice of its 16 bytes,
    when the file holds at that position what the value says: its float and 0.0."""
    if _forked or _MMAPED is None or type(value) is not _MMAPED:
        return None
    file = getattr(value, "_file", None)
    mapped = getattr(file, "_m", None)
    positions = getattr(file, "_positions", None)
    number = getattr(value, "_value", None)
    if not (
        isinstance(mapped, mmap.mmap) and isinstance(positions, dict)
        and type(number) is float and getattr(value, "_timestamp", None) == 0.0
    ):  # fmt: skip
        return None
    pos = positions.get(getattr(value, "_key", None))
    if type(pos) is not int or pos % 8 or not 8 <= pos <= len(mapped) - 16:
        return None
    if _UNPACK(mapped, pos) != (number, 0.0):
        return None
    return file, slice(pos, pos + 16)


class _OneValue:
    """A writer of one value: the metric (for prometheus's own update after a fork),
    its value object, its file and the slice of its 16 bytes."""

    __slots__ = ("_at", "_file", "_metric", "_value")

    def __init__(self, metric: Any, value: Any, file: Any, at: slice) -> None:
        self._metric, self._value, self._file, self._at = metric, value, file, at


class MmapCount(_OneValue):
    """`inc()` of a Counter whose value is in this process's file."""

    __slots__ = ()

    def inc(self) -> None:
        if _forked:
            self._metric.inc()
            return
        v = self._value
        v._value = x = v._value + 1
        self._file._m[self._at] = _PACK(x, 0.0)


class MmapGauge(_OneValue):
    """`inc(amount)`, `dec(amount)` and `set(value)` of a Gauge whose value is in
    this process's file."""

    __slots__ = ()

    def inc(self, amount: float = 1) -> None:
        if _forked:
            self._metric.inc(amount)
            return
        v = self._value
        v._value = x = v._value + amount
        self._file._m[self._at] = _PACK(x, 0.0)

    def dec(self, amount: float = 1) -> None:
        if _forked:
            self._metric.dec(amount)
            return
        v = self._value
        v._value = x = v._value - amount  # the same float as prometheus's inc(-amount)
        self._file._m[self._at] = _PACK(x, 0.0)

    def set(self, value: float) -> None:
        if _forked:
            self._metric.set(value)
            return
        self._value._value = x = float(value)
        self._file._m[self._at] = _PACK(x, 0.0)


class MmapObserve:
    """`observe(amount)` of a Histogram whose values are in this process's (one)
    histogram file: its sum and its one bucket, picked as CheapObserve picks it."""

    __slots__ = ("_bounds", "_buckets", "_file", "_metric", "_sum", "_sum_at")

    def __init__(self, metric: Any, file: Any, sum_: Any, sum_at: slice,
                 buckets: list[tuple[Any, slice]], bounds: list[float]) -> None:  # fmt: skip
        self._metric, self._file, self._sum, self._sum_at = metric, file, sum_, sum_at
        self._buckets, self._bounds = buckets, bounds

    def observe(self, amount: float) -> None:
        if _forked:
            self._metric.observe(amount)
            return
        m = self._file._m
        s = self._sum
        s._value = x = s._value + amount
        m[self._sum_at] = _PACK(x, 0.0)
        b, at = self._buckets[bisect_left(self._bounds, amount)]
        b._value = y = b._value + 1
        m[at] = _PACK(y, 0.0)


def cheap_value(metric: Any, value: object, gauge: bool) -> MmapCount | MmapGauge | None:
    """The writer of a Counter, or of a Gauge (timestamp-free mode), holding `value`."""
    place = _place(value)
    if place is None:
        return None
    return (MmapGauge if gauge else MmapCount)(metric, value, *place)


def cheap_histogram(metric: Any, sum_: object, buckets: list[Any],
                    bounds: list[float]) -> MmapObserve | None:  # fmt: skip
    """The writer of a Histogram with these values (all in one file, the process's
    histogram file), or None."""
    places = [p for p in map(_place, (sum_, *buckets)) if p is not None]
    if len(places) != 1 + len(buckets) or len({id(file) for file, _ in places}) != 1:
        return None
    (file, sum_at), *at = places
    bucket_at = [(b, a) for b, (_, a) in zip(buckets, at, strict=True)]
    return MmapObserve(metric, file, sum_, sum_at, bucket_at, bounds)


def count_and_observe(counter: Any, histogram: Any) -> Callable[[float], None] | None:
    """hsm/cheap_metrics.py's count_and_observe when both are writers of this module."""
    if not (isinstance(counter, MmapCount) and isinstance(histogram, MmapObserve)):
        return None
    count, count_file, count_at = counter._value, counter._file, counter._at
    sum_, sum_at, hist_file = histogram._sum, histogram._sum_at, histogram._file
    buckets, bounds = histogram._buckets, histogram._bounds

    def record(amount: float) -> None:
        if _forked:
            counter.inc()
            histogram.observe(amount)
            return
        count._value = x = count._value + 1
        count_file._m[count_at] = _PACK(x, 0.0)
        m = hist_file._m
        sum_._value = x = sum_._value + amount
        m[sum_at] = _PACK(x, 0.0)
        b, at = buckets[bisect_left(bounds, amount)]
        b._value = x = b._value + 1
        m[at] = _PACK(x, 0.0)

    return record
