"""The frame splitter over a byte stream: partial, coalesced, hostile."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastpath import requests as rq
from fastpath.codec import encode_frame
from fastpath.errors import FrameError
from fastpath.framing import MIN_FRAME, FrameSplitter, frame

T = rq.Terminal("10000001", "898100012340001")


def frames(n: int) -> list[bytes]:
    return [
        encode_frame(rq.DEFAULT_TPDU, rq.DEFAULT_HEADER, *rq.echo_test(T, f"{i:06d}"))
        for i in range(n)
    ]


def test_one_frame_in_one_read() -> None:
    (f,) = frames(1)
    s = FrameSplitter()
    s.feed(f)
    assert s.next_frame() == f[2:]
    assert s.next_frame() is None
    assert len(s) == 0


def test_many_frames_in_one_read() -> None:
    fs = frames(50)
    s = FrameSplitter()
    s.feed(b"".join(fs))
    assert s.frames() == [f[2:] for f in fs]


def test_a_frame_trickled_byte_by_byte() -> None:
    (f,) = frames(1)
    s = FrameSplitter()
    for b in f[:-1]:
        s.feed(bytes([b]))
        assert s.next_frame() is None
    s.feed(f[-1:])
    assert s.next_frame() == f[2:]


@given(cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=30))
def test_any_segmentation_gives_the_same_frames(cuts: list[int]) -> None:
    fs = frames(20)
    stream = b"".join(fs)
    points = sorted({c % (len(stream) + 1) for c in cuts})
    s = FrameSplitter()
    got: list[bytes] = []
    last = 0
    for p in [*points, len(stream)]:
        s.feed(stream[last:p])
        last = p
        got.extend(s.frames())
    assert got == [f[2:] for f in fs]


def test_length_over_the_maximum_is_refused_before_the_body() -> None:
    s = FrameSplitter(max_length=2048)
    s.feed(b"\x08\x01")  # 2049: refused with no body buffered
    with pytest.raises(FrameError, match="2049"):
        s.next_frame()
    with pytest.raises(FrameError):  # the stream has no boundaries any more
        s.feed(b"x")


def test_configurable_maximum() -> None:
    (f,) = frames(1)
    s = FrameSplitter(max_length=len(f) - 3)
    s.feed(f)
    with pytest.raises(FrameError):
        s.next_frame()


@pytest.mark.parametrize("length", [0, 1, MIN_FRAME - 1])
def test_length_under_the_minimum_is_refused(length: int) -> None:
    s = FrameSplitter()
    s.feed(length.to_bytes(2, "big") + bytes(length))
    with pytest.raises(FrameError):
        s.next_frame()


def test_buffer_is_compacted_under_a_long_stream() -> None:
    (f,) = frames(1)
    s = FrameSplitter()
    for _ in range(5000):
        s.feed(f + f[:7])
        assert s.next_frame() == f[2:]
        s.feed(f[7:])
        assert s.next_frame() == f[2:]
    assert len(s) == 0


def test_frame_helper_prefixes_the_length() -> None:
    assert frame(b"abc") == b"\x00\x03abc"


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        FrameSplitter(max_length=10, min_length=20)
