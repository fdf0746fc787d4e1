"""The cheap writers in prometheus_client's multiprocess mode, against its own updates.

Run as `python -m tests.hsm.multiprocess_writers` with PROMETHEUS_MULTIPROC_DIR
set to an empty directory (prometheus_client picks its value class at import,
so this cannot run inside the test process): test_cheap_metrics.py does. Each
check makes a metric twice, `r<n>_m` updated by prometheus_client and `c<n>_m`
through its cheap writer (with some of prometheus's own updates in between),
and compares what a MultiProcessCollector merges from the files: what
/metrics of a worker serves.
"""

from __future__ import annotations

import itertools
import json
import os
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector

from hsm.cheap_metrics import cheap, count_and_observe
from hsm.cheap_metrics_mp import MmapCount, MmapGauge, MmapObserve

BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
DIR = os.environ["PROMETHEUS_MULTIPROC_DIR"]
_numbers = itertools.count()
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

amounts = st.lists(
    st.sampled_from([*BUCKETS, 0.0, -1.0, float("inf")])
    | st.floats(allow_nan=False, min_value=-1.0, max_value=100.0)
    | st.integers(0, 10),  # as the ledger's batch sizes are observed
    max_size=40,
)
gauge_ops = st.lists(
    st.tuples(st.sampled_from(["inc", "dec"]), st.floats(-1e6, 1e6))
    | st.tuples(st.just("set"), st.floats(-1e6, 1e6) | st.integers(-(10**6), 10**6)),
    max_size=40,
)
#: For each update, whether it goes through prometheus's own object on the cheap side too.
own = st.lists(st.booleans(), min_size=40, max_size=40)


def merged() -> Samples:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=DIR)
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
    }


def twice(kind: type, labelled: bool, **kw: Any) -> tuple[str, Any, str, Any]:
    """A fresh metric under two names (prefixes): each its child "DC" or itself."""
    n = next(_numbers)
    out: list[Any] = []
    for prefix in (f"r{n}_", f"c{n}_"):
        args = (["command"],) if labelled else ()
        metric = kind(prefix + "m", "help", *args, registry=CollectorRegistry(), **kw)
        out += [prefix, metric.labels("DC") if labelled else metric]
    return out[0], out[1], out[2], out[3]


def assert_same(ref: str, fast: str) -> None:
    got = merged()

    def named(prefix: str) -> Samples:
        return {
            (k[0].removeprefix(prefix), k[1]): v for k, v in got.items() if k[0].startswith(prefix)
        }

    assert named(fast) == named(ref), (named(fast), named(ref))
    assert named(ref)


@given(st.integers(0, 40), own, st.booleans())
def counts(n: int, by_own: list[bool], labelled: bool) -> None:
    ref_name, ref, name, metric = twice(Counter, labelled)
    fast = cheap(metric)
    assert isinstance(fast, MmapCount)
    for i in range(n):
        ref.inc()
        (metric if by_own[i] else fast).inc()
    assert_same(ref_name, name)


@given(gauge_ops, own, st.booleans(), st.sampled_from(["livesum", "all", "max"]))
def gauges(ops: list[tuple[str, float]], by_own: list[bool], labelled: bool, mode: str) -> None:
    ref_name, ref, name, metric = twice(Gauge, labelled, multiprocess_mode=mode)
    fast = cheap(metric)
    assert isinstance(fast, MmapGauge)
    for (method, arg), mine in zip(ops, by_own, strict=False):
        getattr(ref, method)(arg)
        getattr(metric if mine else fast, method)(arg)
    ref.inc()  # the defaults: one more, one less (IN_FLIGHT's updates)
    fast.inc()
    ref.dec()
    fast.dec()
    assert_same(ref_name, name)


@given(amounts, own, st.booleans())
def observes(observed: list[float], by_own: list[bool], labelled: bool) -> None:
    ref_name, ref, name, metric = twice(Histogram, labelled, buckets=BUCKETS)
    fast = cheap(metric)
    assert isinstance(fast, MmapObserve)
    for amount, mine in zip(observed, by_own, strict=False):
        ref.observe(amount)
        (metric if mine else fast).observe(amount)
    assert_same(ref_name, name)


@given(amounts)
def counts_and_observes(observed: list[float]) -> None:
    """The HSM pool's fused record of a request that succeeded."""
    ref_count_name, ref_count, count_name, count = twice(Counter, True)
    ref_hist_name, ref_hist, hist_name, hist = twice(Histogram, True, buckets=BUCKETS)
    record = count_and_observe(cheap(count), cheap(hist))
    assert record.__name__ == "record"  # fused, not each writer in turn
    for amount in observed:
        ref_count.inc()
        ref_hist.observe(amount)
        record(amount)
    assert_same(ref_count_name, count_name)
    assert_same(ref_hist_name, hist_name)


def grown_file() -> None:
    """A writer made before its file grows (new children) writes where it is read."""
    counter = Counter("grown", "help", ["n"], registry=CollectorRegistry())
    fast = cheap(counter.labels("0"))
    mapping = fast._file._m
    for i in range(1, 1500):  # ~70 bytes each in the counter file: past its first 64 KiB
        counter.labels(str(i))
    assert fast._file._m is not mapping, "the file was not mapped again"
    for _ in range(3):
        fast.inc()
    assert merged()[("grown_total", (("n", "0"),))] == 3


def forked_child() -> None:
    """A child forked after the writers were made writes its own file (prometheus
    starts one per pid), not its parent's through the mapping it inherited."""
    counter = Counter("forked", "help", registry=CollectorRegistry())
    fast = cheap(counter)
    assert isinstance(fast, MmapCount)
    for _ in range(3):
        fast.inc()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            assert cheap(counter) is counter  # none made in a forked child
            for _ in range(4):
                fast.inc()
            code = 0
        finally:
            os._exit(code)
    assert os.waitpid(pid, 0)[1] == 0
    for _ in range(5):
        fast.inc()

    def in_file(of: int) -> float:
        path = os.path.join(DIR, f"counter_{of}.db")
        found = MmapedDict.read_all_values_from_file(path)
        return sum(v for key, v, _, _ in found if json.loads(key)[1] == "forked_total")

    assert (in_file(os.getpid()), in_file(pid)) == (3 + 5, 4)
    assert merged()[("forked_total", ())] == 3 + 4 + 5


def main() -> None:
    examples = settings(deadline=None, max_examples=60)
    for check in (counts, gauges, observes, counts_and_observes):
        examples(check)()
    grown_file()
    forked_child()


if __name__ == "__main__":
    main()
