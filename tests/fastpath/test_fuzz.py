"""The decoder on hostile input: a Message or a DecodeError, nothing else."""

from __future__ import annotations

import contextlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastpath import requests as rq
from fastpath.classify import classify
from fastpath.codec import Message, decode, decode_frame, decode_readable, encode_frame
from fastpath.crypto import DesKey
from fastpath.errors import DecodeError, FrameError
from fastpath.framing import FrameSplitter

MAK = DesKey(bytes.fromhex("0123456789ABCDEFFEDCBA9876543210"))
T = rq.Terminal("10000001", "898100012340001", "000007")
CARD = rq.Card("6228480000000000018", "3012")
PIK = bytes(16)
SEEDS = [
    encode_frame(rq.DEFAULT_TPDU, rq.DEFAULT_HEADER, *m, MAK)
    for m in (
        rq.sale(T, CARD, "000001", 100, "1234", PIK),
        rq.settlement(T, "000002", rq.settlement_totals(1, 1, 0, 0)),
        rq.refund(T, CARD, "000003", 5, rq.Original("000001", "000001", "1123", "1" * 12, "A")),
    )
]


def exercise(msg: Message) -> None:
    """Touch every accessor: none may raise anything but DecodeError."""
    msg.to_dict()
    for name in ("pan", "card_number", "amount", "track2", "batch", "network_code", "original_date",
                 "mac", "tpdu", "header", "destination"):  # fmt: skip
        getattr(msg, name)
    msg.verify_mac(MAK)
    classify(msg)
    with contextlib.suppress(DecodeError):
        msg.settlement_totals()


def check(body: bytes) -> None:
    try:
        msg = decode_frame(body)
    except DecodeError as exc:
        readable(body, exc)
        return
    exercise(msg)


def readable(body: bytes, exc: DecodeError) -> None:
    """What decode_readable gives is whole and holds only fields before the failed one."""
    part = decode_readable(body, exc)
    if part is None:
        assert exc.start < 0 or len(body) < 21 or body[0] != 0x60
        return
    exercise(part)
    assert exc.field is None or all(f < exc.field for f in part.fields)


@settings(max_examples=3000, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_random_bytes(data: bytes) -> None:
    check(data)
    with contextlib.suppress(DecodeError):
        decode(data)


@settings(max_examples=3000)
@given(
    seed=st.sampled_from(SEEDS),
    edits=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), min_size=1, max_size=6),
    cut=st.integers(0, 400),
)
def test_mutated_frames(seed: bytes, edits: list[tuple[int, int]], cut: int) -> None:
    body = bytearray(seed[2:])
    for pos, val in edits:
        body[pos % len(body)] = val
    check(bytes(body))
    check(bytes(body[: cut % (len(body) + 1)]))
    check(bytes(body) + b"\x00")


@settings(max_examples=500)
@given(st.lists(st.binary(max_size=80), max_size=20))
def test_splitter_on_random_streams(chunks: list[bytes]) -> None:
    s = FrameSplitter()
    try:
        for c in chunks:
            s.feed(c)
            for body in s.frames():
                check(body)
    except FrameError:
        pass
