"""The PIN verification path's faster forms give what the straightforward ones gave.

Each reference below is the code the fast form replaced, kept here as the
specification: same value, or the same error, for any input.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hsm import codec, errors, handlers_pin, pool, server
from hsm.context import HsmContext
from hsm.core import HsmCore
from hsm.crypto import encrypt
from hsm.errors import HsmError
from hsm.fields import Reader
from hsm.lmk import PVK, TPK, ZPK, KeyType, key_type, thales_test_lmk
from hsm.pinblock import SUPPORTED_FORMATS, decode_pin_block, visa_pvv
from hsm.testing import key_under_lmk, pin_block, pvv


def _outcome(fn: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    try:
        return "ok", fn(*args)
    except HsmError as exc:
        return "hsm", exc.code
    except Exception as exc:
        return "exc", (type(exc), str(exc))


# --- references (the replaced code) --------------------------------------------


def ref_decode_pin_block(clear: bytes, fmt: str, account12: str) -> str:
    value = int.from_bytes(clear, "big")
    if fmt in ("01", "47"):
        value ^= int(account12, 16)
    text = f"{value:016X}"
    control = {"01": "0", "05": "1", "34": "2", "47": "3"}[fmt]
    if text[0] != control:
        raise HsmError(errors.PIN_BLOCK_INVALID, "control field")
    length = int(text[1], 16)
    if not 4 <= length <= 12:
        raise HsmError(errors.PIN_LENGTH, "PIN length")
    pin = text[2 : 2 + length]
    if not pin.isdigit():
        raise HsmError(errors.PIN_BLOCK_INVALID, "PIN digits")
    fill = text[2 + length :]
    if fmt in ("01", "34") and fill.strip("F"):
        raise HsmError(errors.PIN_BLOCK_INVALID, "fill")
    if fmt == "47" and any(c not in "ABCDEF" for c in fill):
        raise HsmError(errors.PIN_BLOCK_INVALID, "fill")
    return pin


def ref_visa_pvv(pvk: bytes, account12: str, pvki: str, pin: str) -> str:
    tsp = account12[1:12] + pvki + pin[:4]
    result = encrypt(pvk, bytes.fromhex(tsp)).hex().upper()
    digits = [c for c in result if c.isdigit()]
    if len(digits) < 4:
        digits += [str(int(c, 16) - 10) for c in result if not c.isdigit()]
    return "".join(digits[:4])


_HEX = frozenset(b"0123456789ABCDEF")
_DIGITS = frozenset(b"0123456789")
_KEY_TAGS = {ord("U"): 32, ord("T"): 48, ord("X"): 32, ord("Y"): 48, ord("Z"): 16}


def ref_read(data: bytes, pos: int, ops: list[tuple[str, int]]) -> list[Any]:
    """The fields the old Reader gave for a sequence of reads, then where it stopped."""
    out: list[Any] = []

    def take(n: int) -> bytes:
        nonlocal pos
        end = pos + n
        if end > len(data):
            raise HsmError(errors.INVALID_INPUT, "message too short")
        raw, pos = data[pos:end], end
        return raw

    for op, n in ops:
        if op == "text":
            out.append(take(n).decode("latin-1"))
        elif op == "hex":
            raw = take(n)
            if not _HEX.issuperset(raw):
                raise HsmError(errors.INVALID_INPUT, "hex field")
            out.append(raw.decode("ascii"))
        elif op == "digits":
            raw = take(n)
            if not _DIGITS.issuperset(raw):
                raise HsmError(errors.INVALID_PIN_FORMAT, "decimal field")
            out.append(raw.decode("ascii"))
        else:
            if pos >= len(data):
                raise HsmError(errors.INVALID_INPUT, "missing key")
            first = data[pos]
            if first in _HEX:
                raw = take(16)
                if not _HEX.issuperset(raw):
                    raise HsmError(errors.INVALID_INPUT, "hex field")
                out.append(raw.decode("ascii"))
                continue
            m = _KEY_TAGS.get(first)
            if m is None:
                raise HsmError(errors.INVALID_KEY_SCHEME, "key scheme tag")
            pos += 1
            raw = take(m)
            if not _HEX.issuperset(raw):
                raise HsmError(errors.INVALID_INPUT, "hex field")
            out.append(chr(first) + raw.decode("ascii"))
    out.append(pos)
    return out


def new_read(data: bytes, pos: int, ops: list[tuple[str, int]]) -> list[Any]:
    r = Reader(data, pos)
    out: list[Any] = []
    for op, n in ops:
        if op == "text":
            out.append(r.text(n))
        elif op == "hex":
            out.append(r.hex(n))
        elif op == "digits":
            out.append(r.digits(n, errors.INVALID_PIN_FORMAT))
        else:
            out.append(r.key())
    out.append(r.pos)
    return out


# --- properties ------------------------------------------------------------------

_account = st.text("0123456789", min_size=12, max_size=12)


@given(st.binary(min_size=8, max_size=8), st.sampled_from(sorted(SUPPORTED_FORMATS)), _account)
def test_decode_pin_block_as_before(clear: bytes, fmt: str, account12: str) -> None:
    assert _outcome(decode_pin_block, clear, fmt, account12) == _outcome(
        ref_decode_pin_block, clear, fmt, account12
    )


@pytest.mark.parametrize("fmt", sorted(SUPPORTED_FORMATS))
@given(pin=st.text("0123456789", min_size=4, max_size=12), fill=st.text("ABCDEF", max_size=8))
def test_decode_pin_block_well_formed(fmt: str, pin: str, fill: str) -> None:
    # Random blocks are mostly invalid: also build valid ones of each format.
    control = {"01": "0", "05": "1", "34": "2", "47": "3"}[fmt]
    head = f"{control}{len(pin):X}{pin}"
    pad = ("F" * 16 if fmt in ("01", "34") else (fill * 16 or "A" * 16))[: 16 - len(head)]
    clear = bytes.fromhex(head + pad)
    account12 = "400000123456"
    assert _outcome(decode_pin_block, clear, fmt, account12) == _outcome(
        ref_decode_pin_block, clear, fmt, account12
    )


@given(st.binary(min_size=16, max_size=16), _account, st.sampled_from("0123456"),
       st.text("0123456789", min_size=4, max_size=12))  # fmt: skip
def test_visa_pvv_as_before(pvk: bytes, account12: str, pvki: str, pin: str) -> None:
    assert visa_pvv(pvk, account12, pvki, pin) == ref_visa_pvv(pvk, account12, pvki, pin)


def test_visa_pvv_with_few_digits() -> None:
    # Find keys whose result has fewer than 4 decimal digits (the letter rule).
    found = 0
    for i in range(20000):
        pvk = i.to_bytes(16, "big")
        if sum(c.isdigit() for c in encrypt(pvk, bytes.fromhex("0000012345611234")).hex()) < 4:
            found += 1
            assert visa_pvv(pvk, "400000123456", "1", "1234") == ref_visa_pvv(
                pvk, "400000123456", "1", "1234"
            )
    assert found


_op = st.tuples(st.sampled_from(["text", "hex", "digits", "key"]), st.integers(0, 40))
_pieces = [b"0", b"9", b"A", b"F", b"G", b"a", b"U", b"T", b"X", b"Z", b";", b"\x19", b"\xb2",
           b"0123456789ABCDEF"]  # fmt: skip
_field_bytes = st.lists(st.sampled_from(_pieces)).map(b"".join)


@given(_field_bytes, st.integers(0, 3), st.lists(_op, max_size=6))
def test_reader_as_before(data: bytes, pos: int, ops: list[tuple[str, int]]) -> None:
    assert _outcome(new_read, data, pos, ops) == _outcome(ref_read, data, pos, ops)


def test_key_types_hash_and_compare_by_value() -> None:
    assert key_type("002") == TPK == PVK and hash(key_type("002")) == hash(TPK)
    assert key_type("001") == ZPK != TPK
    assert isinstance(TPK, KeyType) and (TPK.code, TPK.pair, TPK.variant) == ("002", 7, 0)


# --- DC/EC: the one-match read against the field-by-field reads ---------------

_LMK = thales_test_lmk()
_CORE = HsmCore(HsmContext(_LMK))
_ACCOUNT = "400000123456"


def _verify_requests() -> list[bytes]:
    tpk = key_under_lmk(_LMK, "002", bytes(range(16)))
    zpk = key_under_lmk(_LMK, "001", bytes(range(16, 32)))
    pvk = key_under_lmk(_LMK, "002", bytes.fromhex("FEDCBA9876543210FEDCBA9876543210"))
    good = pvv(_LMK, pvk, _ACCOUNT, "1", "4321")
    out = []
    for code, key, type_code in (("DC", tpk, "002"), ("EC", zpk, "001")):
        block = pin_block(_LMK, type_code, key, "4321", _ACCOUNT)
        for check in (good, "0000"):
            out.append(codec._verify(code, key, pvk, block, _ACCOUNT, "1", check, "01"))
        # keys of the wrong type (parity errors 10/11), a PVK as two 16H halves
        out.append(codec._verify(code, pvk if code == "EC" else zpk, pvk, block, _ACCOUNT,
                                 "1", good, "01"))  # fmt: skip
        out.append(codec._verify(code, key, zpk, block, _ACCOUNT, "1", good, "01"))
        halves = _LMK.encrypt_key(TPK, bytes.fromhex("FEDCBA9876543210"))
        out.append(codec._verify(code, key, halves * 2, block, _ACCOUNT, "1", good, "01"))
    return out


_VERIFY_REQUESTS = _verify_requests()
_NEVER = re.compile(rb"(?!)")


@given(st.sampled_from(_VERIFY_REQUESTS), st.integers(0, 200), st.integers(0, 4),
       st.sampled_from(list(b"0123456789ABCDEFUTXYZ;\x19\xb2\x00a")))  # fmt: skip
def test_verify_match_reads_as_field_reads(
    valid: bytes, at: int, how: int, char: int
) -> None:
    at = 2 + at % (len(valid) - 1)  # keep the command code
    if how == 0:
        fields = valid
    elif how == 1:
        fields = valid[:at] + bytes((char,)) + valid[at + 1 :]
    elif how == 2:
        fields = valid[:at] + bytes((char,)) + valid[at:]
    elif how == 3:
        fields = valid[:at] + valid[at + 1 :]
    else:
        fields = valid + b"\x19TRAILER" if char == 0x19 else valid[:at]
    message = b"HDR1" + fields
    fast = _CORE.handle(message)
    saved = handlers_pin._VERIFY_FIELDS
    handlers_pin._VERIFY_FIELDS = _NEVER
    try:
        slow = _CORE.handle(message)
    finally:
        handlers_pin._VERIFY_FIELDS = saved
    assert fast == slow, (fields, fast, slow)


def test_verify_requests_cover_each_outcome() -> None:
    replies = {_CORE.handle(b"HDR1" + m)[4:8] for m in _VERIFY_REQUESTS}
    assert {b"DD00", b"DD01", b"DD10", b"DD11", b"ED00", b"ED01", b"ED10", b"ED11"} <= replies


# --- the client and the link: request bytes, replies, metrics --------------------


def ref_verify_body(
    code: str, key: str, pvk: str, block: str, account12: str, pvki: str, pvv: str, fmt: str
) -> bytes:
    return (
        code + codec._key_field(key) + pvk + codec._field(block, 16, "PIN block")
        + codec._field(fmt, 2, "format") + codec._field(account12, 12, "account")
        + codec._field(pvki, 1, "PVKI") + codec._field(pvv, 4, "PVV")
    ).encode()  # fmt: skip


def ref_decode_verify(command: str, body: bytes) -> bool:
    code, _ = codec.split_reply(command.encode(), body)
    if code == "00":
        return True
    if code == "01":
        return False
    raise codec.HsmCommandError(command, code)


_key_text = st.one_of(
    st.text("0123456789ABCDEF", min_size=16, max_size=16),
    st.text("0123456789ABCDEF", min_size=32, max_size=32).map(lambda s: "U" + s),
    st.text("0123456789ABCDEFUTXYZ", max_size=50),
    st.text(max_size=40),
)


@given(_key_text, _key_text, st.text("0123456789ABCDEF\u00e9", min_size=15, max_size=17),
       st.text("015\u00b2", min_size=1, max_size=3), st.text("0123456789", min_size=11,
       max_size=13), st.text("01\u00b2", max_size=2), st.text("0123", min_size=3, max_size=5),
       st.sampled_from(["DC", "EC"]))  # fmt: skip
def test_verify_request_as_before(
    key: str, pvk: str, block: str, fmt: str, account12: str, pvki: str, pvv: str, code: str
) -> None:
    build = codec.dc if code == "DC" else codec.ec
    assert _outcome(
        lambda: build(key, pvk, block, account12, pvki, pvv, pin_format=fmt)
    ) == _outcome(ref_verify_body, code, key, pvk, block, account12, pvki, pvv, fmt)


@given(st.sampled_from(["DC", "EC", "M8", "JE"]),
       st.sampled_from([b"DD", b"ED", b"M9", b"JF", b"XX"]).flatmap(
           lambda c: st.sampled_from([b"00", b"01", b"10", b"0", b"\xff1", b""]).map(
               lambda e: c + e)),
       st.sampled_from([b"", b"x", b"\xff"]))  # fmt: skip
def test_decode_verify_as_before(command: str, body: bytes, tail: bytes) -> None:
    body += tail
    assert _outcome(codec.decode_verify, command, body) == _outcome(
        ref_decode_verify, command, body
    )


@given(st.sampled_from(["DC", "EC", "M8"]),
       st.sampled_from([b"DD", b"ED", b"M9", b"JF", b"XX"]).flatmap(
           lambda c: st.sampled_from([b"00", b"01", b"10", b"0", b"\xff1", b""]).map(
               lambda e: c + e)),
       st.sampled_from([b"", b"x", b"\xff"]))  # fmt: skip
def test_verify_decoder_as_decode_verify(command: str, body: bytes, tail: bytes) -> None:
    body += tail
    assert _outcome(codec.verify_decoder(command), body) == _outcome(
        ref_decode_verify, command, body
    )


def test_command_counters_stay_bounded() -> None:
    before = len(server._COUNTERS)
    for i in range(300):
        server.count_command(i.to_bytes(2, "big"), b"00")  # junk command codes
        server.count_command(b"DC", f"{i:03d}".encode()[:2] + b"\xff")  # junk codes
    server.count_command(b"DC", b"00")
    assert len(server._COUNTERS) <= before + 1


# --- the pool's choice of HSM against the loop it replaced ---------------------


class _Node:
    def __init__(self, up: bool, conns: int) -> None:
        self.up = up
        self.conns = [object()] * conns


def ref_choose(pool: Any, tried: Any) -> Any:
    nodes = pool.nodes
    n = len(nodes)
    fallback = None
    for i in range(n):
        node = nodes[(pool._rr + i) % n]
        if node.up and node.conns:
            if node not in tried:
                pool._rr = (pool._rr + i + 1) % n
                return node
            fallback = fallback or node
    return fallback


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 2)), min_size=1, max_size=5),
       st.integers(0, 10), st.lists(st.integers(0, 4), max_size=5), st.integers(1, 6))  # fmt: skip
def test_choose_as_before(states: list[tuple[bool, int]], rr: int, tried_at: list[int],
                          rounds: int) -> None:  # fmt: skip
    nodes = [_Node(up, conns) for up, conns in states]
    tried = tuple(nodes[i] for i in tried_at if i < len(nodes))
    fast, ref = (type("P", (), {})() for _ in range(2))
    for p in (fast, ref):
        p.nodes, p._rr = nodes, rr % len(nodes)  # type: ignore[attr-defined]
    for _ in range(rounds):
        assert pool.HsmPool._choose(fast, tried) is ref_choose(ref, tried)  # type: ignore[arg-type]
        assert fast._rr == ref._rr  # type: ignore[attr-defined]
