"""Sans-I/O parts: framing, codec round trips through the HSM core, LMK files, crypto."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hsm import codec
from hsm.codec import HsmCommandError, HsmProtocolError
from hsm.context import HsmContext
from hsm.core import HsmCore, reply_code
from hsm.crypto import fix_parity, has_odd_parity, kcv, retail_mac
from hsm.framing import FrameSplitter, FrameTooLarge, encode_frame
from hsm.lmk import TEST_LMK_PAIRS, LmkError, LmkSet, parse_lmk_text, thales_test_lmk
from hsm.pinblock import account12_from_pan, decode_pin_block, encode_pin_block
from hsm.testing import key_under_lmk, pin_block

# --- framing -------------------------------------------------------------------


@given(st.lists(st.binary(max_size=300), max_size=30), st.integers(1, 50))
def test_splitter_any_chunking(messages: list[bytes], chunk: int) -> None:
    stream = b"".join(encode_frame(m) for m in messages)
    splitter = FrameSplitter()
    out: list[bytes] = []
    for i in range(0, len(stream), chunk):
        splitter.feed(stream[i : i + chunk])
        out += splitter.frames()
    assert out == messages
    assert splitter.pending == 0


def test_splitter_waits_for_whole_frames() -> None:
    splitter = FrameSplitter()
    splitter.feed(b"\x00")
    assert splitter.next_frame() is None
    splitter.feed(b"\x05abc")
    assert splitter.next_frame() is None
    splitter.feed(b"de\x00")
    assert splitter.next_frame() == b"abcde"
    assert splitter.next_frame() is None


def test_splitter_rejects_absurd_length() -> None:
    splitter = FrameSplitter(max_frame=100)
    splitter.feed(b"\x00\x65" + b"x" * 101)
    with pytest.raises(FrameTooLarge):
        splitter.next_frame()


def test_reply_code() -> None:
    assert reply_code(b"NC") == b"ND"
    assert reply_code(b"A0") == b"A1"
    assert reply_code(b"M8") == b"M9"


# --- codec round trips through the core (no sockets) ----------------------------------


@pytest.fixture
def core(lmk: LmkSet) -> HsmCore:
    return HsmCore(HsmContext(lmk))


def ask(core: HsmCore, body: bytes) -> bytes:
    reply = core.handle(b"0042" + body)
    assert reply[:4] == b"0042"
    return reply[4:]


def test_codec_round_trips(core: HsmCore, lmk: LmkSet) -> None:
    diag = codec.decode_nc(ask(core, codec.nc()))
    assert diag.firmware == "0001-SWH1"
    assert codec.decode_b2(ask(core, codec.b2(b"\x00\x19binary"))) == b"\x00\x19binary"
    tmk = key_under_lmk(lmk, "002", bytes(range(16)))
    key = codec.decode_a0(ask(core, codec.a0("003", export_key=tmk, export_flag="1")), True)
    assert key.under_zmk and key.under_zmk[0] == "X"
    assert codec.decode_bu(ask(core, codec.bu("003", key.under_lmk))) == key.kcv
    tpk = key_under_lmk(lmk, "002", bytes(range(16, 32)))
    zpk = key_under_lmk(lmk, "001", bytes(range(32, 48)))
    block = pin_block(lmk, "002", tpk, "123456", "123456789012")
    out = codec.decode_translate("CA", ask(core, codec.ca(tpk, zpk, block, "123456789012")))
    assert out.pin_length == 6
    mac = codec.decode_m6(ask(core, codec.m6("003", key.under_lmk, b"abc")))
    assert codec.decode_verify("M8", ask(core, codec.m8("003", key.under_lmk, b"abc", mac)))


def test_codec_decoders_reject_bad_replies() -> None:
    with pytest.raises(HsmProtocolError):
        codec.decode_nc(b"XY00")  # not ND
    with pytest.raises(HsmProtocolError):
        codec.decode_nc(b"ND0")  # too short
    with pytest.raises(HsmProtocolError):
        codec.decode_nc(b"NDxx")  # error code not digits
    with pytest.raises(HsmProtocolError):
        codec.decode_translate("CA", b"CB0004ABC")
    with pytest.raises(HsmCommandError) as err:
        codec.decode_translate("CA", b"CB20")
    assert err.value.code == "20"
    assert codec.decode_verify("DC", b"DD01") is False
    with pytest.raises(HsmCommandError):
        codec.decode_verify("DC", b"DD10")


def test_mac_modes_chain_like_one_message(core: HsmCore, lmk: LmkSet) -> None:
    tak = "U90A17A99E4BA32475E692D7AAE177BBD"
    data = b"0123456789ABCDEF" * 4
    whole = ask(core, codec.m6("003", tak, data))[4:]
    first = ask(core, b"M610130003" + tak.encode() + b"0010" + data[:16])[4:]
    middle = ask(core, b"M620130003" + tak.encode() + first + b"0010" + data[16:32])[4:]
    final = ask(core, b"M630130003" + tak.encode() + middle + b"0020" + data[32:])[4:]
    assert final == whole
    # Hex-encoded input gives the same MAC as binary.
    hex_len = b"%04X" % (2 * len(data))
    hexed = ask(core, b"M601130003" + tak.encode() + hex_len + data.hex().encode())
    assert hexed[4:] == whole


# --- crypto, PIN blocks, LMK file ----------------------------------------------------------


def test_published_vectors(vectors: dict[str, Any]) -> None:
    v = vectors["key_check_value"][0]
    assert kcv(bytes.fromhex(v["key"])) == v["kcv_full"]
    m = vectors["ansi_x9_19_retail_mac"][0]
    assert retail_mac(bytes.fromhex(m["key"]), m["data_ascii"].encode()).hex().upper() == m["mac"]
    for p in vectors["pin_block_iso9564_format0"]:
        acct = account12_from_pan(p["pan"])
        clear = encode_pin_block(p["pin"], "01", acct, bytes)
        assert clear.hex().upper() == p["clear_block"]
        assert decode_pin_block(clear, "01", acct) == p["pin"]


@given(st.binary(min_size=16, max_size=16))
def test_parity(key: bytes) -> None:
    fixed = fix_parity(key)
    assert has_odd_parity(fixed)
    assert bytes(b & 0xFE for b in fixed) == bytes(b & 0xFE for b in key)
    # The definition: every byte has an odd number of 1 bits.
    assert has_odd_parity(key) == all(bin(b).count("1") % 2 == 1 for b in key)


def _lmk_text() -> str:
    return "\n".join(
        f"{2 * i:02d}-{2 * i + 1:02d} = {p[:16]} {p[16:]}  # pair {i}"
        for i, p in enumerate(TEST_LMK_PAIRS)
    )


def test_lmk_file_format(lmk: LmkSet) -> None:
    loaded = parse_lmk_text("# test LMKs\n\n" + _lmk_text())
    assert loaded.check_value == lmk.check_value


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("04-05 =", "04-06 ="), "not an LMK pair name"),
        (lambda t: t.replace("4040404040404040", "4040404040404041"), "parity"),
        (lambda t: t.replace("4040404040404040", "40404040404040"), "32 hex digits"),
        (lambda t: "\n".join(t.splitlines()[:-1]), "lacks pairs 38-39"),
        (lambda t: t + "\n00-01 = 0101010101010101 0101010101010101", "given twice"),
        (lambda t: t.replace("02-03 =", "02-03"), "line 2"),
    ],
)
def test_lmk_file_errors(edit: Callable[[str], str], message: str) -> None:
    with pytest.raises(LmkError, match=message):
        parse_lmk_text(edit(_lmk_text()))


# --- fuzzing the core: every input gets a well-formed reply, never an internal error -------

_FUZZ_CORE = HsmCore(HsmContext(thales_test_lmk()))
_VALID = [
    b"A01001UU0A26760BD07871026B6702C5F9BA25B3U",
    b"A0002U;1U0A26760BD07871026B6702C5F9BA25B3X",
    b"A6001UE13D662B185F5F3B08594F89F1FF903AX7BC09407A015F72FC59C32147D2AAE57U",
    b"A8001UE13D662B185F5F3B08594F89F1FF903AU0B7C6F68A38FA3C2CB42C2991576A986X",
    b"BUFF1U0B7C6F68A38FA3C2CB42C2991576A986;001;001",
    b"M600130003U90A17A99E4BA32475E692D7AAE177BBD00101234567887654321",
    b"M800130008U2549A1834EFDDC9629CBD8DC5C982D7500101234567887654321A1C911EBA50563C9",
    b"CCT971803BA969012152827CC97A98D18D50BE6559CDFF6F7E1U247078713614BE11F819054C5FFB08FF"
    b"12F2B66A1070EADC470501000001000376",
    b"CAU61F612B4FD859AA204D0D2414F18C29FU247078713614BE11F819054C5FFB08FF"
    b"12F2B66A1070EADC470101000001000376",
    b"DCU61F612B4FD859AA204D0D2414F18C29FU61F612B4FD859AA204D0D2414F18C29F"
    b"F2B66A1070EADC47010000010003761234",
    b"DGU61F612B4FD859AA204D0D2414F18C29F123450000010003761",
    b"BA1234F0000010003761",
    b"JEU247078713614BE11F819054C5FFB08FFF2B66A1070EADC4701000001000376",
    b"JGU247078713614BE11F819054C5FFB08FF0100000100037612345",
    b"B20004PING",
    b"NC",
]
_MUTANT_CHARS = st.sampled_from(list(b"0123456789ABCDEFUTXYZ;\x19LQ%\x00\xff"))


@given(st.sampled_from(_VALID), st.integers(0, 200), st.integers(0, 3), _MUTANT_CHARS)
def test_core_never_fails_internally(valid: bytes, at: int, how: int, char: int) -> None:
    """Truncated, altered, extended or shortened versions of valid commands."""
    at = 2 + at % (len(valid) - 1)  # keep the command code
    if how == 0:
        fields = valid[:at]
    elif how == 1:
        fields = valid[:at] + bytes((char,)) + valid[at + 1 :]
    elif how == 2:
        fields = valid[:at] + bytes((char,)) + valid[at:]
    else:
        fields = valid[:at] + valid[at + 1 :]
    reply = _FUZZ_CORE.handle(b"HDR1" + fields)
    assert reply[:4] == b"HDR1"
    assert reply[4:6] == reply_code(valid[:2])
    code = reply[6:8]
    assert code.isdigit() and code != b"41", (fields, reply)


def test_degenerate_3des_keys_work_as_single_des() -> None:
    from hsm.crypto import encrypt

    single = bytes.fromhex("0808080808080808")
    expected = encrypt(single, bytes(8))
    assert encrypt(single * 2, bytes(8)) == expected  # THALES.md vector 1's ZMK
    assert encrypt(single + bytes.fromhex("0909090909090909"), bytes(8)) == expected  # parity bits
    assert encrypt(single * 3, bytes(8)) == expected
