"""Encodings of PROTOCOL.md §2 byte by byte, round trips, responses."""

from __future__ import annotations

import pytest

from fastpath import requests as rq
from fastpath.classify import classify
from fastpath.codec import (
    DEFINED_FIELDS,
    FIELD_SPECS,
    build_response,
    decode,
    decode_frame,
    encode,
    encode_frame,
)
from fastpath.crypto import DesKey
from fastpath.errors import EncodeError
from fastpath.kinds import Kind

MAK = DesKey(bytes.fromhex("0123456789ABCDEFFEDCBA9876543210"))
PIK = bytes.fromhex("89ABCDEF0123456776543210FEDCBA98")
T = rq.Terminal("10000001", "898100012340001", "000007")
CARD = rq.Card("6228480000000000018", "3012")
ORIG = rq.Original(
    batch="000007", stan="000011", date="1123", rrn="112345678901", auth_code="A1B2C3"
)


def body_of(mti: str, fields: dict[int, object], key: DesKey | None = MAK) -> bytes:
    return encode(mti, fields, key)


def field_bytes(mti: str, fields: dict[int, object]) -> bytes:
    """The encoded fields alone (after MTI and bitmap)."""
    return encode(mti, fields)[10:]


def test_defined_fields_are_the_protocol_table() -> None:
    assert DEFINED_FIELDS == (
        2, 3, 4, 11, 12, 13, 14, 15, 22, 23, 25, 26, 32, 35, 36, 37, 38, 39, 41, 42,
        44, 48, 49, 52, 53, 54, 55, 60, 61, 62, 63, 64,
    )  # fmt: skip
    assert FIELD_SPECS[2] == ("n", "LLVAR", 19)
    assert FIELD_SPECS[36] == ("z", "LLLVAR", 104)
    assert FIELD_SPECS[62] == ("b", "LLLVAR", 512)


def test_mti_and_bitmap() -> None:
    iso = encode("0200", {3: "000000", 64: b"12345678"})
    assert iso[:2] == bytes.fromhex("0200")
    assert iso[2:10] == bytes.fromhex("2000000000000001")


@pytest.mark.parametrize(
    ("field", "value", "wire"),
    [
        (2, "6228480000000000018", "19" + "6228480000000000018" + "0"),  # LLVAR digits, pad
        (2, "1234567890123456", "161234567890123456"),
        (3, "310000", "310000"),
        (4, 1234, "000000001234"),  # amounts right-aligned in fen
        (4, "000000001234", "000000001234"),
        (22, "021", "0210"),  # field 22 is left-aligned
        (23, "001", "0001"),  # other odd fixed numerics right-aligned
        (32, "01020000", "0801020000"),
        (35, "6228480000000000018=3012101", "27" + "6228480000000000018D3012101" + "0"),
        (53, "2600000000000000", "2600000000000000"),
        (60, "22000001000", "001122000001000" + "0"),  # LLL counts digits
    ],
)
def test_numeric_and_track_encodings(field: int, value: object, wire: str) -> None:
    assert field_bytes("0200", {field: value}).hex().upper() == wire.upper()
    back = decode(encode("0200", {field: value}))
    assert back[field] == (str(value).zfill(12) if field == 4 else str(value))


def test_pad_nibble_f_is_accepted_on_decode() -> None:
    iso = bytes.fromhex("0200" + "4000000000000000" + "16" + "1234567890123456")
    assert decode(iso).pan == "1234567890123456"
    odd = bytes.fromhex("0200" + "4000000000000000" + "03" + "123F")
    assert decode(odd).pan == "123"


@pytest.mark.parametrize(
    ("field", "value", "wire"),
    [
        (41, "10000001", b"10000001"),
        (42, "898100012340001", b"898100012340001"),
        (38, "AB", b"AB    "),  # fixed text is space-padded
        (44, "hello", b"\x05hello"),  # LLVAR text counts bytes
        (63, "01 ", b"\x00\x0301 "),
        (63, "中国", b"\x00\x04" + "中国".encode("gbk")),  # GBK where Chinese appears
        (52, b"\x01" * 8, b"\x01" * 8),
        (55, b"\x9f\x26\x08" + bytes(8), b"\x00\x11\x9f\x26\x08" + bytes(8)),
    ],
)
def test_text_and_binary_encodings(field: int, value: object, wire: bytes) -> None:
    assert field_bytes("0200", {field: value}) == wire
    back = decode(encode("0200", {field: value}))[field]
    expected = value.ljust(6) if field == 38 else value
    assert back == expected


@pytest.mark.parametrize(
    ("field", "value"),
    [
        (3, "12345"),  # fixed numeric needs exactly 6
        (3, "12345a"),
        (4, -1),
        (4, 10**12),
        (2, "1" * 20),  # over the LLVAR maximum
        (41, "123456789"),  # fixed text too long
        (52, b"1234567"),  # fixed binary exact
        (62, b"x" * 513),
        (35, "1234X"),
        (1, "x"),
        (5, "000000000001"),  # not in the CUP field set
        (2, 1.5),
        (41, 12345678),
    ],
)
def test_values_that_cannot_be_encoded(field: int, value: object) -> None:
    with pytest.raises(EncodeError) as err:
        encode("0200", {field: value})
    assert err.value.field in (field, None)


def test_bad_mti_is_refused() -> None:
    with pytest.raises(EncodeError):
        encode("200", {})
    with pytest.raises(EncodeError):
        encode("02A0", {})


def _every_kind() -> list[tuple[Kind, tuple[str, dict[int, object]]]]:
    sale = rq.sale(T, CARD, "000012", 12345, "123456", PIK)
    return [
        (Kind.SIGN_ON, rq.sign_on(T, "000001", "001")),
        (Kind.SIGN_ON, rq.sign_on(T, "000001", "003")),
        (Kind.SIGN_ON, rq.sign_on(T, "000001", "004")),
        (Kind.SIGN_OFF, rq.sign_off(T, "000002")),
        (Kind.ECHO, rq.echo_test(T, "000003")),
        (Kind.PARAM_DOWNLOAD, rq.parameter_download(T, "000004")),
        (Kind.BALANCE, rq.balance(T, CARD, "000005", "123456", PIK)),
        (Kind.SALE, sale),
        (Kind.VOID, rq.void(T, CARD, "000013", 12345, ORIG)),
        (Kind.REFUND, rq.refund(T, CARD, "000014", 100, ORIG)),
        (Kind.PREAUTH, rq.preauth(T, CARD, "000015", 50000, "123456", PIK)),
        (Kind.PREAUTH_CANCEL, rq.preauth_cancel(T, CARD, "000016", 50000, ORIG)),
        (Kind.COMPLETION, rq.completion(T, CARD, "000017", 40000, ORIG)),
        (Kind.COMPLETION_ADVICE, rq.completion_advice(T, CARD, "000018", 40000, ORIG)),
        (Kind.COMPLETION_VOID, rq.completion_void(T, CARD, "000019", 40000, ORIG)),
        (Kind.REVERSAL, rq.reversal(sale[1])),
        (
            Kind.SETTLEMENT,
            rq.settlement(T, "000020", rq.settlement_totals(12345, 1, 100, 1)),
        ),
        (Kind.BATCH_UPLOAD, rq.batch_upload(T, "000021", "01" + "0" * 20, "207")),
    ]


@pytest.mark.parametrize(("kind", "request_"), _every_kind(), ids=lambda x: str(x)[:20])
def test_every_transaction_kind_round_trips(
    kind: Kind, request_: tuple[str, dict[int, object]]
) -> None:
    mti, fields = request_
    key = None if kind is Kind.SIGN_ON else MAK  # sign-on requests carry no MAC
    frame = encode_frame(rq.DEFAULT_TPDU, rq.DEFAULT_HEADER, mti, fields, key)
    assert int.from_bytes(frame[:2], "big") == len(frame) - 2
    msg = decode_frame(frame[2:])
    assert msg.mti == mti
    assert msg.tpdu == rq.DEFAULT_TPDU and msg.header == rq.DEFAULT_HEADER
    assert msg.destination == 0x0001 and msg.source == 0
    assert classify(msg)[0] is kind
    for f, v in fields.items():
        assert msg[f] == (f"{v:012d}" if f == 4 else v)
    if key is None:
        assert 64 not in msg
    else:
        assert msg.verify_mac(MAK)
    # re-encoding what was decoded gives the same bytes
    again = {f: msg[f] for f in msg.fields if f != 64}
    assert encode_frame(msg.tpdu, msg.header, msg.mti, again, key) == frame


def test_named_accessors_of_a_sale() -> None:
    mti, fields = rq.sale(T, CARD, "000012", 12345, "123456", PIK)
    msg = decode(encode(mti, fields, MAK))
    assert msg.amount == 12345
    assert msg.stan == "000012"
    assert msg.pan is None  # swiped: the PAN is in track 2
    assert msg.card_number == CARD.pan
    assert msg.track2 == CARD.track2
    assert msg.expiry == "3012"
    assert msg.entry_mode == "021"
    assert (msg.msg_type_code, msg.batch, msg.network_code) == ("22", "000007", "000")
    assert msg.tid == T.tid and msg.mid == T.mid
    assert len(msg.pin_block) == 8
    assert msg.get(37) is None and 37 not in msg
    with pytest.raises(KeyError):
        msg[37]
    assert "6228" not in repr(msg)  # no field values in a repr


def test_field_61_and_48_sub_fields() -> None:
    msg = decode(encode(*rq.refund(T, CARD, "000014", 100, ORIG)))
    assert (msg.original_batch, msg.original_stan, msg.original_date) == (
        "000007",
        "000011",
        "1123",
    )
    domestic = rq.settlement_totals(12345, 1, 100, 2, 1)
    foreign = rq.settlement_totals(5, 3, 0, 0, 2)
    s = decode(encode(*rq.settlement(T, "000020", domestic, foreign))).settlement_totals()
    assert (s.debit_amount, s.debit_count, s.credit_amount, s.credit_count, s.code) == (
        12345, 1, 100, 2, 1,
    )  # fmt: skip
    assert (s.foreign_debit_amount, s.foreign_debit_count, s.foreign_code) == (5, 3, 2)


def test_response_echoes_request_bytes_and_swaps_tpdu() -> None:
    mti, fields = rq.sale(T, CARD, "000012", 12345, "123456", PIK)
    req = decode_frame(
        encode_frame(bytes.fromhex("6000010002"), rq.DEFAULT_HEADER, mti, fields, MAK)[2:]
    )
    added = {12: "101010", 13: "1123", 15: "1123", 32: "01020000", 37: "000000000001",
             38: "123456", 39: "00"}  # fmt: skip
    frame = build_response(req, "0210", added, MAK)
    resp = decode_frame(frame[2:])
    assert resp.mti == "0210"
    assert resp.tpdu == bytes.fromhex("6000020001")  # destination and source swapped
    assert resp.header == rq.DEFAULT_HEADER
    assert resp.fields == (3, 4, 11, 12, 13, 15, 25, 32, 37, 38, 39, 41, 42, 49, 60, 64)
    for f in (3, 4, 11, 25, 41, 42, 49, 60):
        assert resp.raw_field(f) == req.raw_field(f)
    assert resp.verify_mac(MAK)
    unswapped = decode_frame(build_response(req, "0210", added, MAK, swap_tpdu=False)[2:])
    assert unswapped.tpdu == req.tpdu


def test_an_echoed_f_pad_nibble_is_written_0() -> None:
    """PROTOCOL.md §2: variable BCD data ends with a 0 nibble; F is accepted, not sent."""
    mti, fields = rq.sale(T, CARD, "000012", 12345, "123456", PIK)
    fields[2] = "6228480000000000117"  # 19 digits: one pad nibble
    body = encode(mti, fields)
    f2, f60 = decode(body).raw_field(2), decode(body).raw_field(60)
    assert f2[-1] & 0x0F == 0 and f60[-1] & 0x0F == 0
    padded = body.replace(f2, f2[:-1] + bytes([f2[-1] | 0x0F])).replace(
        f60, f60[:-1] + bytes([f60[-1] | 0x0F])
    )
    req = decode_frame(rq.DEFAULT_TPDU + rq.DEFAULT_HEADER + padded)
    assert req.raw_field(2)[-1] & 0x0F == 0x0F and req.pan == fields[2]
    resp = decode_frame(build_response(req, "0210", {39: "00"}, MAK, echo=(2, 60))[2:])
    assert resp.raw_field(2) == f2 and resp.raw_field(60) == f60
    assert resp.pan == fields[2] and resp.verify_mac(MAK)


def test_response_sets_processing_requirement_nibble_and_can_drop_fields() -> None:
    mti, fields = rq.sale(T, CARD, "000012", 12345)
    req = decode_frame(
        encode_frame(rq.DEFAULT_TPDU, bytes.fromhex("603112000000"), mti, fields)[2:]
    )
    frame = build_response(req, "0210", {39: "A0", 4: None}, None, processing=3)
    resp = decode_frame(frame[2:])
    assert resp.header == bytes.fromhex("603113000000")  # status 1 kept, requirement 3
    assert 4 not in resp and 64 not in resp
    assert resp.response_code == "A0"


def test_response_to_a_bare_message_is_bare() -> None:
    req = decode(encode(*rq.echo_test(T, "000003"), MAK))
    resp = build_response(req, "0830", {39: "00"}, MAK, echo=(11, 41, 42, 60))
    assert decode(resp).fields == (11, 39, 41, 42, 60, 64)
