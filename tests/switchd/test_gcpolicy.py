"""The collector's schedule while serving (switchd/gcpolicy.py), on the real collector."""

from __future__ import annotations

import gc
import logging
import weakref
from collections.abc import Iterator

import pytest
import trio

from switchd import gcpolicy


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture
def clean_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    gc.unfreeze()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def garbage_cycle() -> weakref.ref[Node]:
    """Two nodes referring to each other and to nothing else: only the collector frees them."""
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_startup_freeze_sets_the_serving_thresholds(clean_gc: None) -> None:
    kept = [Node() for _ in range(100)]
    gcpolicy.freeze_startup()
    assert gc.get_threshold() == gcpolicy.THRESHOLDS
    assert gc.get_freeze_count() >= len(kept)


def test_a_frozen_cycle_is_freed_only_by_the_full_collection(clean_gc: None) -> None:
    ref = garbage_cycle()
    gc.freeze()
    gc.collect()
    assert ref() is not None  # frozen: out of every ordinary collection's sight
    freed, seconds = gcpolicy.full_collection()
    assert ref() is None and freed >= 2 and seconds >= 0
    assert gc.get_freeze_count() > 0  # what is alive is frozen again


async def test_schedule_freezes_survivors_and_collects_fully(
    clean_gc: None, caplog: pytest.LogCaptureFixture
) -> None:
    gc.freeze()
    before = gc.get_freeze_count()
    survivors = [Node() for _ in range(1000)]
    ref = garbage_cycle()
    caplog.set_level(logging.INFO, logger="switchd.gc")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(gcpolicy.run_schedule, 0.01, 3600.0)
        await trio.sleep(0.05)
        # The survivors were frozen with the cycle; no full collection yet.
        assert gc.get_freeze_count() >= before + len(survivors)
        assert ref() is not None and not caplog.records
        nursery.cancel_scope.cancel()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(gcpolicy.run_schedule, 0.01, 0.02)
        await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    assert ref() is None
    assert any("full garbage collection" in r.getMessage() for r in caplog.records)
