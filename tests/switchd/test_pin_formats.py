"""F53 (PROTOCOL.md §2): digit 1 says how the PIN block was formed; over real sockets."""

from __future__ import annotations

from fastpath import requests as rq
from fastpath.crypto import DesKey, decrypt_working_key, encrypt_pin_block
from switchd.daemon import Switch

from .conftest import Conn, connect
from .test_transactions import PIN, available, card, signed_on

NO_PIN, WITHOUT_PAN, WITH_PAN = "0600000000000000", "1600000000000000", "2600000000000000"


def block_without_pan(pik: DesKey, pin: str) -> bytes:
    """ANSI X9.8 with no account: 0 + length + PIN + F fill, not XORed with the PAN."""
    return pik.encrypt(bytes.fromhex(f"0{len(pin):X}{pin}".ljust(16, "F")))


async def sale_with(c: Conn, seq: int, amount: int, block: bytes, f53: str):  # type: ignore[no-untyped-def]
    t = c.term
    assert t.pik is not None
    mti, fields = rq.sale(t.ident, card(seq), t.next_stan(), amount, PIN, t.pik)
    fields[52], fields[53] = block, f53
    return await c.call(t.frame(mti, fields))


async def test_a_block_formed_without_the_pan_is_verified_as_such(switch: Switch) -> None:
    c = await signed_on(switch, "10000017")
    assert c.term.pik is not None
    before = await available(switch, 37)
    r = await sale_with(c, 37, 2_00, block_without_pan(c.term.pik, PIN), WITHOUT_PAN)
    assert r.rc == "00" and r.mac_ok
    assert await available(switch, 37) == before - 2_00
    r = await sale_with(c, 37, 2_00, block_without_pan(c.term.pik, "654321"), WITHOUT_PAN)
    assert r.rc == "55"
    # The same block said to be formed with the PAN is not this PIN.
    r = await sale_with(c, 37, 2_00, block_without_pan(c.term.pik, PIN), WITH_PAN)
    assert r.rc in ("55", "99")
    assert await available(switch, 37) == before - 2_00


async def test_a_block_formed_with_the_pan_is_not_read_without_it(switch: Switch) -> None:
    c = await signed_on(switch, "10000018")
    t = c.term
    assert t.pik is not None
    with_pan = encrypt_pin_block(t.pik, PIN, card(38).pan)
    assert (await sale_with(c, 38, 1_00, with_pan, WITH_PAN)).rc == "00"
    assert (await sale_with(c, 38, 1_00, with_pan, WITHOUT_PAN)).rc in ("55", "99")


async def test_a_pin_block_that_f53_says_is_absent_is_refused(switch: Switch) -> None:
    c = await signed_on(switch, "10000019")
    t = c.term
    assert t.pik is not None
    before = await available(switch, 39)
    for f53 in (NO_PIN, "7600000000000000"):
        r = await sale_with(c, 39, 1_00, encrypt_pin_block(t.pik, PIN, card(39).pan), f53)
        assert r.rc == "99" and r.mac_ok
        assert r.msg.header[2] & 0x0F == 3  # sign on again
    assert await available(switch, 39) == before


async def test_a_resent_99_asks_to_sign_on_again_as_the_first_did(switch: Switch) -> None:
    # A duplicate gets its first answer again (PROTOCOL.md §3), header included:
    # the replay of a 99 still asks the terminal to sign on (nibble 3).
    c = await signed_on(switch, "10000016")
    t = c.term
    assert t.pik is not None
    mti, fields = rq.sale(t.ident, card(36), t.next_stan(), 1_00, PIN, t.pik)
    fields[53] = NO_PIN
    frame = t.frame(mti, fields)
    first, again = await c.call(frame), await c.call(frame)
    for r in (first, again):
        assert r.rc == "99" and r.mac_ok
        assert r.msg.header[2] & 0x0F == 3
    assert again.msg.iso == first.msg.iso


async def test_encrypted_tracks_are_not_supported(switch: Switch) -> None:
    """F53 digit 3 = 1 (tracks under the TDK): 40, nothing read or posted."""
    c = await signed_on(switch, "10000020")
    t = c.term
    assert t.pik is not None
    before = await available(switch, 40)
    block = encrypt_pin_block(t.pik, PIN, card(40).pan)
    r = await sale_with(c, 40, 1_00, block, "2610000000000000")
    assert r.rc == "40" and r.mac_ok
    assert await available(switch, 40) == before


async def test_f53s_algorithm_digit_is_not_checked_against_the_session(switch: Switch) -> None:
    """F53 digit 2 (0 single DES, 6 3DES) is what the terminal declares; the
    PIK's length is what its sign-on gave it (60.3 001: single, 003/004:
    double), and the PIN block is read with that key. A wrong digit over a
    block made with the session's PIK is harmless: approved. A block really
    made with another algorithm does not decrypt to a PIN block: 99, sign on
    again, and no PIN try is counted."""
    c = await connect(switch, "10000015")
    r = await c.sign_on("003")  # double-length PIK
    t = c.term
    assert t.pik is not None
    block = encrypt_pin_block(t.pik, PIN, card(35).pan)
    assert (await sale_with(c, 35, 1_00, block, "2000000000000000")).rc == "00"
    # Single DES under the left half of the double-length PIK: refused 99,
    # as often as pin_tries and more, and the card's PIN still works after.
    left = DesKey(decrypt_working_key(t.tmk, r.msg[62][:16])[:8])
    single = encrypt_pin_block(left, PIN, card(35).pan)
    for _ in range(4):
        r = await sale_with(c, 35, 1_00, single, "2000000000000000")
        assert r.rc == "99" and r.mac_ok and r.msg.header[2] & 0x0F == 3
    assert (await sale_with(c, 35, 1_00, block, "2600000000000000")).rc == "00"

    c = await connect(switch, "10000014")
    await c.sign_on("001")  # single-length PIK: "3DES" with it is single DES
    assert c.term.pik is not None
    block = encrypt_pin_block(c.term.pik, PIN, card(34).pan)
    assert (await sale_with(c, 34, 1_00, block, "2600000000000000")).rc == "00"
    assert await available(switch, 34) == 100_000_00 - 1_00
