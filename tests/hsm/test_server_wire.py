"""The software HSM over a real socket: THALES.md §6 vectors byte for byte, framing, bad input."""

from __future__ import annotations

from functools import partial

import pytest
import trio

from hsm.core import COMMANDS, reply_code
from hsm.lmk import LmkSet
from hsm.pinblock import visa_pvv
from hsm.server import serve_hsm
from hsm.testing import key_under_lmk, pin_block

from .conftest import LOCALHOST, Connect, RawClient

# THALES.md §6 vector 1: the generated key is random, so the server is given
# a random source that yields the vector's clear ZPK.
VECTOR1_CLEAR_ZPK = bytes.fromhex("5B012F0E75970D5DB96EE65249F1D949")


async def test_vector1_a0_export_under_zmk(nursery: trio.Nursery, lmk: LmkSet) -> None:
    def fixed(n: int) -> bytes:
        return VECTOR1_CLEAR_ZPK[:n]

    port = await nursery.start(partial(serve_hsm, lmk, LOCALHOST, 0, 4, random_bytes=fixed))
    c = RawClient(await trio.open_tcp_stream(LOCALHOST, port))
    reply = await c.ask(b"0001A01001UU0A26760BD07871026B6702C5F9BA25B3U")
    assert reply == (
        b"0001A100U61F612B4FD859AA204D0D2414F18C29FU631EAA5F7E6A6C9EB5A1701259A7AB54B3E1C8"
    )


@pytest.mark.parametrize(
    ("request_", "reply"),
    [
        # §6 vector 2: A6 import with the parity-corrected warning 01.
        (
            b"0002A6001UE13D662B185F5F3B08594F89F1FF903AX7BC09407A015F72FC59C32147D2AAE57U",
            b"0002A701U0B7C6F68A38FA3C2CB42C2991576A986DA24FF",
        ),
        # §6 vector 3: MAC algorithm 3 with a TAK and with a ZAK (M6 mode 0, binary, 16H).
        (
            b"0003M600130003U90A17A99E4BA32475E692D7AAE177BBD00101234567887654321",
            b"0003M700934F05263310B6D3",
        ),
        (
            b"0004M600130008U2549A1834EFDDC9629CBD8DC5C982D7500101234567887654321",
            b"0004M700A1C911EBA50563C9",
        ),
        (
            b"0005M800130008U2549A1834EFDDC9629CBD8DC5C982D7500101234567887654321A1C911EBA50563C9",
            b"0005M900",
        ),
        (
            b"0006M800130008U2549A1834EFDDC9629CBD8DC5C982D7500101234567887654321A1C911EBA50563C8",
            b"0006M901",
        ),
        # §6 vector 4: CC, ISO format 1 (05) to format 0 (01), PIN of 5 digits.
        (
            b"0007CCT971803BA969012152827CC97A98D18D50BE6559CDFF6F7E1U247078713614BE11F819054C5FFB08FF"
            b"12F2B66A1070EADC470501000001000376",
            b"0007CD0005DBEEBF06C9ED0A4801",
        ),
        # §3: echo, with the header 9999 of the example.
        (b"9999B20004PING", b"9999B300PING"),
    ],
)
async def test_vectors_over_the_wire(raw_client: Connect, request_: bytes, reply: bytes) -> None:
    c = await raw_client()
    assert await c.ask(request_) == reply


async def test_nc_reports_lmk_check_and_firmware(raw_client: Connect) -> None:
    c = await raw_client()
    reply = await c.ask(b"HDR1NC")
    assert reply[:8] == b"HDR1ND00"
    assert len(reply) == 8 + 16 + 9
    assert reply[8:24] == b"7D22274C5745C5A1"  # KCV of test LMK pair 00-01 (our choice)
    assert reply[28:29] == b"-"


async def test_a0_export_under_tmk_decrypts_to_the_same_key(
    raw_client: Connect, lmk: LmkSet
) -> None:
    from hsm.crypto import kcv
    from hsm.lmk import decrypt_under_zmk
    from hsm.testing import clear_key

    tmk_clear = bytes.fromhex("70F2A84CCBC2AE8625CBB0F2C22AB923")
    tmk = key_under_lmk(lmk, "002", tmk_clear)
    c = await raw_client()
    reply = (await c.ask(b"0000A01003U;1" + tmk.encode() + b"X")).decode()
    assert reply[:8] == "0000A100"
    under_lmk, under_tmk, check = reply[8:41], reply[41:74], reply[74:]
    clear = clear_key(lmk, "003", under_lmk)  # a TAK, under LMK 16-17
    assert decrypt_under_zmk(tmk_clear, under_tmk) == clear
    assert check == kcv(clear)[:6]


async def test_trailer_is_echoed(raw_client: Connect) -> None:
    c = await raw_client()
    assert await c.ask(b"0000B20002OK\x19TRAIL") == b"0000B300OK\x19TRAIL"


async def test_pipelined_and_coalesced_frames(raw_client: Connect) -> None:
    c = await raw_client()
    messages = [b"%04dB20004%04d" % (i, i) for i in range(300)]
    await c.send(*messages)  # one write: 300 frames coalesced
    replies = await c.recv(300)
    assert replies == [b"%04dB300%04d" % (i, i) for i in range(300)]


async def test_partial_frames_byte_by_byte(raw_client: Connect) -> None:
    from hsm.framing import encode_frame

    c = await raw_client()
    data = encode_frame(b"0001NC") + encode_frame(b"0002B20001Z")
    for i in range(len(data)):
        await c.stream.send_all(data[i : i + 1])
        await trio.sleep(0)
    replies = await c.recv(2)
    assert replies[0].startswith(b"0001ND00")
    assert replies[1] == b"0002B300Z"


@pytest.mark.parametrize(
    ("request_", "reply"),
    [
        (b"0000XY", b"0000XZ99"),  # unknown command: code + 1, error 99 (chosen)
        (b"0000", b"0000ZZ15"),  # no command code at all
        (b"0000A0", b"0000A115"),  # truncated
        (b"0000A09001U", b"0000A115"),  # bad mode
        (b"0000A00999U", b"0000A104"),  # unknown key type
        (b"0000A00001Q", b"0000A126"),  # bad LMK scheme
        (b"0000A00001UEXTRA", b"0000A115"),  # data after the last field
        (b"0000B2000GAB", b"0000B315"),  # length not hex
        (b"0000B20010AB", b"0000B315"),  # length longer than the data
        (b"0000BU021UGG338F74A19E3BB39062A5A479473FC8", b"0000BV15"),  # non-hex key
        (b"0000BU029U77338F74A19E3BB39062A5A479473FC8", b"0000BV05"),  # bad length flag
        (b"0000BU021Q77338F74A19E3BB39062A5A479473FC8", b"0000BV26"),  # bad key tag
        (b"0000M690130003U90A17A99E4BA32475E692D7AAE177BBD0001A", b"0000M702"),
        (b"0000M609130003U90A17A99E4BA32475E692D7AAE177BBD0001A", b"0000M703"),
        (b"0000M600150003U90A17A99E4BA32475E692D7AAE177BBD0001A", b"0000M704"),
        (b"0000M600139003U90A17A99E4BA32475E692D7AAE177BBD0001A", b"0000M709"),
        (b"0000M600130009U90A17A99E4BA32475E692D7AAE177BBD0001A", b"0000M705"),
        (b"0000M600130003U90A17A99E4BA32475E692D7AAE177BBDFFFF", b"0000M706"),
        # A length beyond the data is 06 too (message length), not 15.
        (b"0000M600130003U90A17A99E4BA32475E692D7AAE177BBD0010A", b"0000M706"),
        # An M8 whose length takes in the MAC that should follow it.
        (b"0000M800130003U90A17A99E4BA32475E692D7AAE177BBD000C12345678ABCD", b"0000M906"),
        (b"\xff\xfe\x00\x01\x80\x81", b"\xff\xfe\x00\x01\x80\x8299"),  # binary junk
    ],
)
async def test_malformed_commands_get_error_replies(
    raw_client: Connect, request_: bytes, reply: bytes
) -> None:
    c = await raw_client()
    assert await c.ask(request_) == reply
    # The connection survives every malformed command.
    assert await c.ask(b"0001B20002OK") == b"0001B300OK"


async def test_parity_errors(raw_client: Connect, lmk: LmkSet) -> None:
    from hsm.testing import clear_key

    good_tpk = key_under_lmk(lmk, "002", bytes.fromhex("0123456789ABCDEFFEDCBA9876543210"))
    good_zpk = key_under_lmk(lmk, "001", bytes.fromhex("89ABCDEF01234567FEDCBA9876543210"))
    # A ZPK used where a TPK is expected decrypts under the wrong LMK pair:
    # the parity check catches it (error 10 source, 11 destination).
    assert clear_key(lmk, "002", good_zpk) != clear_key(lmk, "001", good_zpk)
    block = pin_block(lmk, "002", good_tpk, "1234", "123456789012")
    c = await raw_client()
    wrong_src = b"0000CA" + good_zpk.encode() + good_zpk.encode() + b"12" + block.encode()
    assert await c.ask(wrong_src + b"0101123456789012") == b"0000CB10"
    wrong_dst = b"0000CA" + good_tpk.encode() + good_tpk.encode() + b"12" + block.encode()
    assert await c.ask(wrong_dst + b"0101123456789012") == b"0000CB11"
    ok = b"0000CA" + good_tpk.encode() + good_zpk.encode() + b"12" + block.encode()
    assert (await c.ask(ok + b"0101123456789012"))[:10] == b"0000CB0004"


async def test_bad_pin_blocks(raw_client: Connect, lmk: LmkSet) -> None:
    tpk = key_under_lmk(lmk, "002", bytes.fromhex("0123456789ABCDEFFEDCBA9876543210"))
    zpk = key_under_lmk(lmk, "001", bytes.fromhex("89ABCDEF01234567FEDCBA9876543210"))
    head = b"0000CA" + tpk.encode() + zpk.encode()
    block = pin_block(lmk, "002", tpk, "1234", "123456789012").encode()
    c = await raw_client()
    # Decoding with the wrong account turns the block into garbage: error 20.
    assert (await c.ask(head + b"12" + block + b"0101999999999999"))[6:8] in (b"20", b"24")
    assert await c.ask(head + b"12" + block + b"9901123456789012") == b"0000CB23"
    assert await c.ask(head + b"12" + block + b"0301123456789012") == b"0000CB69"
    assert await c.ask(head + b"12" + block + b"01011234567890AB") == b"0000CB22"
    assert await c.ask(head + b"04" + b"Z" * 16 + b"0101123456789012") == b"0000CB15"
    six = pin_block(lmk, "002", tpk, "123456", "123456789012").encode()
    assert await c.ask(head + b"05" + six + b"0101123456789012") == b"0000CB24"


async def test_absurd_length_closes_the_connection(raw_client: Connect) -> None:
    c = await raw_client()
    await c.stream.send_all(b"\xff\xff" + b"0000NC")
    with pytest.raises((EOFError, trio.BrokenResourceError)):
        await c.recv(1)


async def test_header_length_option(nursery: trio.Nursery, lmk: LmkSet) -> None:
    port = await nursery.start(serve_hsm, lmk, LOCALHOST, 0, 6)
    c = RawClient(await trio.open_tcp_stream(LOCALHOST, port))
    assert await c.ask(b"ABCDEFB20001x") == b"ABCDEFB300x"


async def test_many_concurrent_connections(raw_client: Connect) -> None:
    async def one(i: int) -> None:
        c = await raw_client()
        for j in range(5):
            assert await c.ask(b"%04dB20001%d" % (i, j)) == b"%04dB300%d" % (i, j)
        await c.stream.aclose()

    async with trio.open_nursery() as n:
        for i in range(100):
            n.start_soon(one, i)


async def test_pvk_parity_and_length_errors(raw_client: Connect, lmk: LmkSet) -> None:
    tpk = key_under_lmk(lmk, "002", bytes.fromhex("0123456789ABCDEFFEDCBA9876543210"))
    zpk = key_under_lmk(lmk, "001", bytes.fromhex("89ABCDEF01234567FEDCBA9876543210"))
    block = pin_block(lmk, "002", tpk, "1234", "123456789012").encode()
    tail = block + b"01" + b"123456789012" + b"1" + b"1234"
    c = await raw_client()
    # A ZPK given as the PVK: parity error 11 in DC (second key), 10 in DG.
    assert await c.ask(b"0000DC" + tpk.encode() + zpk.encode() + tail) == b"0000DD11"
    assert await c.ask(b"0000DG" + zpk.encode() + b"12345" + b"123456789012" + b"1") == b"0000DH10"
    single = key_under_lmk(lmk, "002", bytes.fromhex("0123456789ABCDEF"))
    assert await c.ask(b"0000DC" + tpk.encode() + b"Z" + single.encode() + tail) == b"0000DD27"
    # The untagged form: PVK-A and PVK-B, each 16H under LMK 14-15.
    pvk_a = key_under_lmk(lmk, "002", bytes.fromhex("0123456789ABCDEF"))
    pvk_b = key_under_lmk(lmk, "002", bytes.fromhex("FEDCBA9876543210"))
    from hsm.pinblock import visa_pvv

    good = visa_pvv(bytes.fromhex("0123456789ABCDEFFEDCBA9876543210"), "123456789012", "1", "1234")
    request = b"0000DC" + tpk.encode() + (pvk_a + pvk_b).encode() + block + b"01123456789012"
    assert await c.ask(request + b"1" + good.encode()) == b"0000DD00"


async def test_a_pvk_of_identical_halves_is_used_as_given(raw_client: Connect, lmk: LmkSet) -> None:
    """27 is "PVK not double length" (THALES.md §5): the PVK's length, which its
    field's form gives (Z or a bare 16H single, U+32H or a PVK-A, PVK-B pair
    double; see test_pvk_parity_and_length_errors). Halves that are equal make
    a double-length key as strong as single DES, but THALES.md does not call
    that an error and the simulators it cites (PT, NT) check the form only; a
    real payShield's answer is not public. So it is used as given: DC/EC
    answer 00 or 01 by the PVV, DG makes the PVV under it."""
    half = bytes.fromhex("0123456789ABCDEF")
    account, pin = "123456789012", "1234"
    good = visa_pvv(half + half, account, "1", pin)
    tpk = key_under_lmk(lmk, "002", bytes.fromhex("0123456789ABCDEFFEDCBA9876543210"))
    zpk = key_under_lmk(lmk, "001", bytes.fromhex("89ABCDEF01234567FEDCBA9876543210"))
    pvk_half = key_under_lmk(lmk, "002", half)
    c = await raw_client()
    under_lmk = (await c.ask(b"0000BA" + pin.encode() + b"F" + account.encode()))[8:]
    wrong = f"{(int(good) + 1) % 10_000:04d}".encode()
    for pvk in (key_under_lmk(lmk, "002", half + half), pvk_half + pvk_half):
        for cmd, key, reply in ((b"DC", tpk, b"DD"), (b"EC", zpk, b"ED")):
            block = pin_block(lmk, "002" if cmd == b"DC" else "001", key, pin, account).encode()
            head = b"0000" + cmd + key.encode() + pvk.encode() + block + b"01" + account.encode()
            assert await c.ask(head + b"1" + good.encode()) == b"0000" + reply + b"00"
            assert await c.ask(head + b"1" + wrong) == b"0000" + reply + b"01"
        dg = b"0000DG" + pvk.encode() + under_lmk + account.encode() + b"1"
        assert await c.ask(dg) == b"0000DH00" + good.encode()


async def test_m6_m8_message_length_counts_the_characters_sent(raw_client: Connect) -> None:
    """THALES.md §5 gives "message length 4H" without saying of what. For input
    format 1 (hex-encoded binary) it counts the hex characters sent, as UT's M8
    test frame has it (0008 before ABCDEF12) and NT reads it (the message is
    that many characters whatever the format); for binary and text the bytes
    are the characters. A byte count for hex input leaves characters unread:
    refused 15, never a MAC over half the message."""
    tak = b"U90A17A99E4BA32475E692D7AAE177BBD"
    c = await raw_client()
    m7 = await c.ask(b"0000M6" + b"00031003" + tak + b"0004" + bytes.fromhex("ABCDEF12"))
    assert m7[:8] == b"0000M700" and len(m7) == 16
    mac = m7[8:]
    assert await c.ask(b"0000M6" + b"01031003" + tak + b"0008ABCDEF12") == m7
    assert await c.ask(b"0000M8" + b"01031003" + tak + b"0008ABCDEF12" + mac) == b"0000M900"
    assert await c.ask(b"0000M8" + b"01031003" + tak + b"0004ABCDEF12" + mac) == b"0000M915"


async def test_reply_codes_are_the_commands_second_character_plus_one(
    raw_client: Connect,
) -> None:
    """A8 answers A9 (its error too), M8 M9. Every request code Thales defines
    has an even second character (0-8, A-Y) and its reply the next one, so
    none ends in 9 or Z; a code that does is an unknown command (a reply code
    sent back, say), answered error 99 with the same rule, the byte after:
    A9 -> A:, AZ -> A[. It is what a host checking "second character + 1"
    expects, and the header, not the code, matches replies to requests."""
    c = await raw_client()
    assert await c.ask(b"0000A8") == b"0000A915"
    assert all(reply_code(cmd)[1:] in b"13579BDFHJLNPRTVXZ" for cmd in COMMANDS)
    assert await c.ask(b"0000A9") == b"0000A:99"
    assert await c.ask(b"0000AZ") == b"0000A[99"


async def test_variant_forms_under_a_single_length_zmk_are_refused_27(
    raw_client: Connect, lmk: LmkSet
) -> None:
    """U/T forms need the ZMK's second half for their variants: a single-length
    ZMK gets 27 (incompatible key length) from A0, A6 and A8, not an internal error."""
    zmk = key_under_lmk(lmk, "000", bytes.fromhex("0123456789ABCDEF"))  # 16H, no tag
    zpk = key_under_lmk(lmk, "001", bytes.fromhex("5B012F0E75970D5DB96EE65249F1D949"))
    c = await raw_client()
    assert await c.ask(b"0000A01001U;0" + zmk.encode() + b"U") == b"0000A127"
    assert await c.ask(b"0000A6001" + zmk.encode() + b"U" + b"0" * 32 + b"U") == b"0000A727"
    assert await c.ask(b"0000A8001" + zmk.encode() + zpk.encode() + b"U") == b"0000A927"
    # The same ZMK still serves the forms it can: X under a single-length ZMK.
    reply = await c.ask(b"0000A01001U;0" + zmk.encode() + b"X")
    assert reply[:8] == b"0000A100" and reply[41:42] == b"X"


async def test_an_error_reply_echoes_a_trailer_only_if_one_was_sent(raw_client: Connect) -> None:
    c = await raw_client()
    # Printable fields: the X'19' can only start the trailer, which is echoed.
    assert await c.ask(b"0000A09002U\x19T1") == b"0000A115\x19T1"
    # B2's data may hold any byte: an X'19' inside it (here with a length the
    # data does not match) is not taken for a trailer nobody sent.
    assert await c.ask(b"0000B20006PI\x19NG") == b"0000B315"
    assert await c.ask(b"0000B20005PI\x19NG") == b"0000B300PI\x19NG"


async def test_a_pvki_outside_0_to_6_is_refused_21(raw_client: Connect, lmk: LmkSet) -> None:
    tpk = key_under_lmk(lmk, "002", bytes.fromhex("0123456789ABCDEFFEDCBA9876543210"))
    pvk = key_under_lmk(lmk, "002", bytes.fromhex("89ABCDEF01234567FEDCBA9876543210"))
    block = pin_block(lmk, "002", tpk, "1234", "123456789012").encode()
    c = await raw_client()
    head = b"0000DC" + tpk.encode() + pvk.encode() + block + b"01123456789012"
    assert await c.ask(head + b"7" + b"1234") == b"0000DD21"
    assert (await c.ask(head + b"6" + b"1234"))[:6] == b"0000DD"  # 6 is in range
    assert (await c.ask(head + b"6" + b"1234"))[6:8] in (b"00", b"01")
    assert await c.ask(b"0000DG" + pvk.encode() + b"12345" + b"123456789012" + b"9") == b"0000DH21"
