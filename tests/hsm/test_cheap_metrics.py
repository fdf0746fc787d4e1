"""The cheaper metric writers (hsm/cheap_metrics.py): /metrics shows what
prometheus_client's own updates would show, in one process and with several
(multiprocess mode: tests/hsm/multiprocess_writers.py, run in a process of its own)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, Summary
from prometheus_client.multiprocess import MultiProcessCollector

from hsm import metrics
from hsm.cheap_metrics import CheapCount, CheapGauge, CheapObserve, cheap, count_and_observe
from hsm.client import TPK, open_hsm_client
from hsm.codec import HsmCommandError
from hsm.lmk import LmkSet
from hsm.server import HsmServer
from hsm.testing import pin_block

from .conftest import LOCALHOST
from .test_client import ACCOUNT, PVKI, Keys

ROOT = Path(__file__).resolve().parents[2]
BUCKETS = metrics.LATENCY._upper_bounds[:-1]


def values(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample but the `_created` timestamps (those of two metrics differ)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


def pair(
    kind: type, labelled: bool = True, **kw: object
) -> tuple[CollectorRegistry, Any, CollectorRegistry, Any]:
    """The same metric in two registries, a labelled child or a metric without
    labels: one as is, one through its cheap writer."""
    regs = CollectorRegistry(), CollectorRegistry()
    if labelled:
        real, fast = (kind("m", "help", ["command"], registry=r, **kw).labels("DC") for r in regs)
    else:
        real, fast = (kind("m", "help", registry=r, **kw) for r in regs)
    return regs[0], real, regs[1], cheap(fast)


amounts = st.lists(
    st.one_of(
        st.sampled_from([*BUCKETS, 0.0, -1.0, float("inf")]),
        st.floats(allow_nan=False, min_value=-1.0, max_value=100.0),
        st.integers(0, 10),  # as the ledger's batch sizes are observed
    ),
    max_size=60,
)
#: A gauge's updates: (method, argument); `set` also takes ints, as Gauge.set does.
gauge_ops = st.lists(
    st.tuples(st.sampled_from(["inc", "dec"]), st.floats(-1e6, 1e6))
    | st.tuples(st.just("set"), st.floats(-1e6, 1e6) | st.integers(-(10**6), 10**6)),
    max_size=60,
)


@given(amounts, st.booleans())
def test_histogram_as_prometheus_observes(observed: list[float], labelled: bool) -> None:
    ref_reg, ref, reg, fast = pair(Histogram, labelled, buckets=BUCKETS)
    assert isinstance(fast, CheapObserve)
    for amount in observed:
        ref.observe(amount)
        fast.observe(amount)
    assert values(reg) == values(ref_reg)


@given(st.integers(0, 50), st.booleans())
def test_counter_as_prometheus_counts(n: int, labelled: bool) -> None:
    ref_reg, ref, reg, fast = pair(Counter, labelled)
    assert isinstance(fast, CheapCount)
    for _ in range(n):
        ref.inc()
        fast.inc()
    assert values(reg) == values(ref_reg)


@given(gauge_ops, st.booleans())
def test_gauge_as_prometheus_sets(ops: list[tuple[str, float]], labelled: bool) -> None:
    ref_reg, ref, reg, fast = pair(Gauge, labelled, multiprocess_mode="livesum")
    assert isinstance(fast, CheapGauge)
    for method, arg in ops:
        getattr(ref, method)(arg)
        getattr(fast, method)(arg)
    fast.inc()  # the defaults: one more, one less
    ref.inc()
    fast.dec()
    ref.dec()
    assert values(reg) == values(ref_reg)


def counter_and_histogram() -> tuple[CollectorRegistry, Any, Any]:
    registry = CollectorRegistry()
    count = Counter("c", "help", ["command"], registry=registry).labels("DC")
    hist = Histogram("h", "help", ["command"], registry=registry, buckets=BUCKETS).labels("DC")
    return registry, count, hist


@given(amounts, st.booleans())
def test_count_and_observe_as_inc_and_observe(observed: list[float], fused: bool) -> None:
    """One call per request, fused when both writers are cheap, else each child's own."""
    ref_reg, ref_count, ref_hist = counter_and_histogram()
    reg, count, hist = counter_and_histogram()
    if fused:
        count, hist = cheap(count), cheap(hist)
    record = count_and_observe(count, hist)
    for amount in observed:
        ref_count.inc()
        ref_hist.observe(amount)
        record(amount)
    assert values(reg) == values(ref_reg)


def test_what_is_kept_as_it_is() -> None:
    registry = CollectorRegistry()
    parent = Counter("c", "help", ["command"], registry=registry)
    assert cheap(parent) is parent  # a labelled metric's parent holds no value
    summary = Summary("s", "help", registry=registry)
    assert cheap(summary) is summary
    # A gauge that keeps a timestamp in multiprocess mode.
    recent = Gauge("g", "help", multiprocess_mode="mostrecent", registry=registry)
    assert cheap(recent) is recent
    assert isinstance(metrics.labelled(metrics.REQUESTS, "DC", "ok"), CheapCount)
    assert isinstance(metrics.labelled(metrics.LATENCY, "DC"), CheapObserve)
    assert isinstance(cheap(metrics.HSM_UP.labels("x")), CheapGauge)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


SERIES = [
    ("hsm_client_requests_total", {"command": "DC", "result": "ok"}),
    ("hsm_client_requests_total", {"command": "DC", "result": "hsm_error"}),
    ("hsm_client_request_duration_seconds_count", {"command": "DC"}),
    ("hsm_client_request_duration_seconds_bucket", {"command": "DC", "le": "+Inf"}),
    ("hsm_server_commands_total", {"command": "DC", "code": "00"}),
    ("hsm_server_commands_total", {"command": "DC", "code": "01"}),
    ("hsm_server_commands_total", {"command": "DC", "code": "10"}),
]


async def test_registry_counts_each_command(hsm_port: int, lmk: LmkSet) -> None:
    """Through the link and over TCP (whose server is in this process too)."""
    keys = Keys(lmk)
    good = pin_block(lmk, TPK, keys.tpk, "4321", ACCOUNT)
    bad = pin_block(lmk, TPK, keys.tpk, "4322", ACCOUNT)
    for address in (HsmServer(lmk), f"{LOCALHOST}:{hsm_port}"):
        before = [sample(n, **ls) for n, ls in SERIES]
        sum_before = sample("hsm_client_request_duration_seconds_sum", command="DC")
        async with open_hsm_client([address]) as hsm:
            for block in (good, good, good, bad):
                await hsm.verify_pin_pvv(keys.tpk, keys.pvk, block, ACCOUNT, PVKI, keys.pvv)
            with pytest.raises(HsmCommandError):  # a ZPK where a TPK goes: error 10
                await hsm.verify_pin_pvv(keys.zpk, keys.pvk, good, ACCOUNT, PVKI, keys.pvv)
        after = [sample(n, **ls) for n, ls in SERIES]
        assert [a - b for a, b in zip(after, before, strict=True)] == [4, 1, 5, 5, 3, 1, 1]
        assert sample("hsm_client_request_duration_seconds_sum", command="DC") > sum_before


def test_multiprocess_writers_as_prometheus(tmp_path: Path) -> None:
    """Counters, gauges, histograms and the fused record in multiprocess mode: the
    files merged show what prometheus_client's own updates show (a file that grew,
    a forked child too); tests/hsm/multiprocess_writers.py, in a process of its own."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    argv = [sys.executable, "-m", "tests.hsm.multiprocess_writers"]
    out = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


SCRIPT = textwrap.dedent(
    """
    import sys
    import trio
    from hsm import metrics
    from hsm.cheap_metrics_mp import MmapCount, MmapObserve
    from hsm.client import TPK, open_hsm_client
    from hsm.lmk import thales_test_lmk
    from hsm.server import HsmServer
    from hsm.testing import pin_block
    from tests.hsm.test_client import ACCOUNT, PVKI, Keys

    # Multiprocess mode: the writers of the process's files.
    assert isinstance(metrics.labelled(metrics.REQUESTS, "DC", "ok"), MmapCount)
    assert isinstance(metrics.labelled(metrics.LATENCY, "DC"), MmapObserve)

    async def main() -> None:
        lmk = thales_test_lmk()
        keys = Keys(lmk)
        good = pin_block(lmk, TPK, keys.tpk, "4321", ACCOUNT)
        bad = pin_block(lmk, TPK, keys.tpk, "4322", ACCOUNT)
        async with open_hsm_client([HsmServer(lmk)]) as hsm:
            for block in [good] * int(sys.argv[1]) + [bad]:
                await hsm.verify_pin_pvv(keys.tpk, keys.pvk, block, ACCOUNT, PVKI, keys.pvv)

    trio.run(main)
    """
)


def test_multiprocess_files_count_each_command(tmp_path: Path) -> None:
    """Two processes in multiprocess mode: a scrape merging their files counts all."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for n in (3, 4):
        subprocess.run([sys.executable, "-c", SCRIPT, str(n)], env=env, cwd=ROOT, check=True)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))
    got = values(registry)

    def at(name: str, **labels: str) -> float:
        return got.get((name, tuple(sorted(labels.items()))), 0.0)

    assert at("hsm_client_requests_total", command="DC", result="ok") == 9
    assert at("hsm_client_request_duration_seconds_count", command="DC") == 9
    assert at("hsm_client_request_duration_seconds_bucket", command="DC", le="+Inf") == 9
    assert at("hsm_server_commands_total", command="DC", code="00") == 7
    assert at("hsm_server_commands_total", command="DC", code="01") == 2
    assert at("hsm_client_request_duration_seconds_sum", command="DC") > 0
