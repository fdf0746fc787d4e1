"""Helpers of context.py: LocalTime's once-a-second strings, the Luhn check."""

from __future__ import annotations

import random
import time

import pytest

from switchd.context import LocalTime, luhn_ok


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


def _luhn_by_the_book(pan: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(pan)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def test_luhn_agrees_with_the_definition() -> None:
    assert luhn_ok("4111111111111111") and luhn_ok("6228480000000000018")
    assert not luhn_ok("4111111111111112")
    rng = random.Random(7)
    for _ in range(20_000):
        pan = "".join(rng.choice("0123456789") for _ in range(rng.randint(12, 19)))
        assert luhn_ok(pan) == _luhn_by_the_book(pan), pan
    for bad in ("", "41111111111111=1", "４111111111111111", "4111 1111 1111 1111"):
        assert not luhn_ok(bad)
