"""LocalTime: the once-a-second strings equal what strftime gives for that second."""

from __future__ import annotations

import time

import pytest

from switchd.context import LocalTime


def test_local_time_matches_strftime_and_follows_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = {"now": 1_767_225_599.9}  # a second before a new year, UTC
    monkeypatch.setattr(time, "time", lambda: clock["now"])
    lt = LocalTime()
    for now in (1_767_225_599.9, 1_767_225_599.2, 1_767_225_600.0, 1_767_225_661.5):
        clock["now"] = now
        got = lt.now()
        t = time.localtime(int(now))
        assert (got.hhmmss, got.mmdd, got.yymm) == (
            time.strftime("%H%M%S", t), time.strftime("%m%d", t), time.strftime("%y%m", t))
