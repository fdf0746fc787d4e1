"""Malformed messages: each gives a DecodeError naming the field and offset."""

from __future__ import annotations

import pytest

from fastpath import requests as rq
from fastpath.codec import decode, decode_frame, decode_readable, encode, encode_frame
from fastpath.errors import CodecError, DecodeError

BITMAP_2 = "4000000000000000"


def bad(hexstr: str) -> DecodeError:
    with pytest.raises(DecodeError) as err:
        decode(bytes.fromhex(hexstr))
    assert isinstance(err.value, CodecError)
    return err.value


def test_empty_message() -> None:
    e = bad("")
    assert e.field == 0 and e.offset == 0


def test_truncated_bitmap() -> None:
    assert bad("0200" + "40000000").field == 1


def test_mti_not_bcd() -> None:
    e = bad("02A0" + BITMAP_2)
    assert (e.field, e.offset) == (0, 1)


def test_secondary_bitmap_is_refused() -> None:
    assert bad("0200" + "C000000000000000").field == 1


UNDEFINED = [5, 6, 7, 8, 9, 10, 16, 17, 18, 19, 20, 21, 24, 27, 33, 34, 40, 43, 45, 46, 47, 50, 51,
             56, 57, 58, 59]  # fmt: skip


@pytest.mark.parametrize("field", UNDEFINED)
def test_bitmap_naming_an_undefined_field(field: int) -> None:
    bitmap = (1 << (64 - field)).to_bytes(8, "big").hex()
    e = bad("0200" + bitmap + "00" * 20)
    assert (e.field, e.offset) == (field, 10)


def test_truncated_fixed_field() -> None:
    e = bad("0200" + "2000000000000000" + "0000")  # field 3 needs 3 bytes
    assert (e.field, e.offset) == (3, 10)
    assert "truncated" in e.reason


def test_truncated_variable_field() -> None:
    e = bad("0200" + BITMAP_2 + "19" + "62284800")
    assert e.field == 2


def test_missing_length_prefix() -> None:
    e = bad("0200" + (1 << 4).to_bytes(8, "big").hex() + "00")  # field 60, LLL needs 2 bytes
    assert (e.field, e.offset) == (60, 10)


def test_length_over_the_field_maximum() -> None:
    e = bad("0200" + BITMAP_2 + "20" + "11" * 10)  # PAN of 20 digits: max is 19
    assert (e.field, e.offset) == (2, 10)
    assert "maximum" in e.reason


def test_length_prefix_not_bcd() -> None:
    assert bad("0200" + BITMAP_2 + "1A" + "11" * 10).field == 2


def test_non_bcd_nibble_in_a_numeric_field() -> None:
    e = bad("0200" + "2000000000000000" + "0000A0")
    assert (e.field, e.offset) == (3, 12)


def test_bad_pad_nibble() -> None:
    e = bad("0200" + BITMAP_2 + "03" + "1235")
    assert (e.field, e.offset) == (2, 12)


def test_track_allows_d_but_numeric_does_not() -> None:
    track = "04" + "12D4"
    assert (
        decode(bytes.fromhex("0200" + (1 << (64 - 35)).to_bytes(8, "big").hex() + track))[35]
        == "12=4"
    )
    assert bad("0200" + BITMAP_2 + track).field == 2


def test_control_byte_in_text() -> None:
    bitmap = (1 << (64 - 41)).to_bytes(8, "big").hex()
    e = bad("0200" + bitmap + "3132330A35363738")
    assert (e.field, e.offset) == (41, 13)


def test_trailing_garbage() -> None:
    e = bad("0200" + "2000000000000000" + "000000" + "FF")
    assert e.field is None and e.offset == 13
    assert "trailing" in e.reason


def test_frame_too_short_for_tpdu_and_header() -> None:
    with pytest.raises(DecodeError):
        decode_frame(b"\x60\x00\x01")


def test_frame_with_a_tpdu_id_other_than_60() -> None:
    iso = encode("0820", {60: "00000001301"})
    with pytest.raises(DecodeError, match="TPDU"):
        decode_frame(b"\x70\x00\x01\x00\x00" + rq.DEFAULT_HEADER + iso)


def test_settlement_totals_need_field_48() -> None:
    with pytest.raises(DecodeError) as err:
        decode(encode("0500", {60: "00000001201"})).settlement_totals()
    assert err.value.field == 48


def test_start_is_where_what_could_be_read_ends() -> None:
    """The failed field's first byte (its length prefix), the end of the last
    field when bytes trail it, -1 when nothing past the bitmap was read."""
    assert bad("02A0" + BITMAP_2).start == -1
    assert bad("0200" + "C000000000000000").start == -1
    assert bad("0200" + BITMAP_2 + "20" + "11" * 10).start == 10
    assert bad("0200" + "2000000000000000" + "0000A0").start == 10  # the fault at 12
    assert bad("0200" + "2000000000000000" + "000000" + "FF").start == 13


def _frame_error(body: bytes) -> DecodeError:
    with pytest.raises(DecodeError) as err:
        decode_frame(body)
    return err.value


def test_decode_readable_gives_the_fields_before_the_bad_one() -> None:
    t = rq.Terminal("10000001", "898100012340001")
    mti, fields = rq.echo_test(t, "000123")
    body = encode_frame(rq.DEFAULT_TPDU, rq.DEFAULT_HEADER, mti, fields)[2:]
    whole = decode_frame(body)
    short = _frame_error(body[:-1])  # field 60, the last, a byte short
    part = decode_readable(body[:-1], short)
    assert part is not None and part.fields == (11, 41, 42)
    assert (part.stan, part.tid, part.mid) == (whole.stan, whole.tid, whole.mid)
    assert (part.tpdu, part.header, part.mti) == (whole.tpdu, whole.header, "0820")
    trailing = _frame_error(body + b"\x00")
    part = decode_readable(body + b"\x00", trailing)
    assert part is not None and part.fields == whole.fields
    bitmap = body[:13] + b"\xc0" + body[14:]  # a secondary bitmap: nothing can be read
    assert decode_readable(bitmap, _frame_error(bitmap)) is None
