"""The C DES against pycryptodome's, and the PIN block helpers' edges."""

from __future__ import annotations

import pytest
from Crypto.Cipher import DES, DES3
from hypothesis import given
from hypothesis import strategies as st

from fastpath.crypto import (
    CryptoError,
    DesKey,
    cup_mac,
    encrypt_pin_block,
    parse_pin_block_format0,
    pin_block_format0,
    x919_mac,
)

blocks = st.binary(min_size=8, max_size=64).map(lambda b: b[: len(b) // 8 * 8])


@given(key=st.binary(min_size=8, max_size=8), data=blocks)
def test_single_des_matches_pycryptodome(key: bytes, data: bytes) -> None:
    ref = DES.new(key, DES.MODE_ECB)
    assert DesKey(key).encrypt(data) == ref.encrypt(data)
    assert DesKey(key).decrypt(data) == ref.decrypt(data)


@given(key=st.binary(min_size=16, max_size=16) | st.binary(min_size=24, max_size=24), data=blocks)
def test_triple_des_matches_pycryptodome(key: bytes, data: bytes) -> None:
    try:
        ref = DES3.new(key, DES3.MODE_ECB)
    except ValueError:
        # pycryptodome refuses keys that degenerate to single DES; ours
        # computes them (EDE with K1 = K2 is DES under K3), checked below.
        return
    assert DesKey(key).encrypt(data) == ref.encrypt(data)
    assert DesKey(key).decrypt(data) == ref.decrypt(data)


def test_degenerate_triple_des_is_single_des() -> None:
    k = bytes.fromhex("0808080808080808")
    assert DesKey(k + k).encrypt(bytes(8)) == DES.new(k, DES.MODE_ECB).encrypt(bytes(8))


@given(key=st.binary(min_size=16, max_size=16), data=st.binary(max_size=100))
def test_x919_is_single_des_cbc_then_triple_des_on_the_last_block(key: bytes, data: bytes) -> None:
    padded = data + bytes(-len(data) % 8) if data else bytes(8)
    cbc = DES.new(key[:8], DES.MODE_CBC, iv=bytes(8)).encrypt(padded)[-8:]
    expected = DES.new(key[:8], DES.MODE_ECB).encrypt(DES.new(key[8:], DES.MODE_ECB).decrypt(cbc))
    assert x919_mac(key, data) == expected


@given(mak=st.binary(min_size=16, max_size=16), mab=st.binary(max_size=300))
def test_cup_mac_follows_the_spec_steps(mak: bytes, mab: bytes) -> None:
    """Recompute PROTOCOL.md §5 step by step in Python."""
    padded = mab + bytes(-len(mab) % 8)
    r = bytes(8)
    for i in range(0, len(padded), 8):
        r = bytes(a ^ b for a, b in zip(r, padded[i : i + 8], strict=True))
    hexr = r.hex().upper().encode()
    try:
        cipher = DES3.new(mak, DES3.MODE_ECB)
    except ValueError:
        cipher = DES.new(mak[:8], DES.MODE_ECB)
    e1 = cipher.encrypt(hexr[:8])
    e2 = cipher.encrypt(bytes(a ^ b for a, b in zip(e1, hexr[8:], strict=True)))
    assert cup_mac(DesKey(mak), mab) == e2.hex().upper()[:8].encode()


@pytest.mark.parametrize("n", [0, 7, 9, 15, 32])
def test_bad_key_lengths_are_refused(n: int) -> None:
    with pytest.raises(CryptoError):
        DesKey(bytes(n))


def test_ecb_refuses_partial_blocks() -> None:
    with pytest.raises(CryptoError):
        DesKey(bytes(8)).encrypt(b"1234567")


@pytest.mark.parametrize("pin", ["123", "1234567890123", "12a4", ""])
def test_bad_pins_are_refused(pin: str) -> None:
    with pytest.raises(CryptoError):
        pin_block_format0(pin, "6228480000000000018")


def test_bad_pan_is_refused() -> None:
    with pytest.raises(CryptoError):
        pin_block_format0("1234", "12345")


def test_pin_block_round_trips_through_the_pik() -> None:
    pik = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
    pan = "6228480000000000018"
    block = encrypt_pin_block(pik, "123456", pan)
    assert parse_pin_block_format0(DesKey(pik).decrypt(block), pan) == "123456"
    assert encrypt_pin_block(DesKey(pik), "123456", pan) == block  # a scheduled key: the same


def test_garbage_pin_block_is_refused() -> None:
    with pytest.raises(CryptoError):
        parse_pin_block_format0(bytes.fromhex("FFFFFFFFFFFFFFFF"), "6228480000000000018")


def test_key_repr_never_shows_the_key() -> None:
    assert "0123" not in repr(DesKey(bytes.fromhex("0123456789ABCDEF")))


@given(st.binary(min_size=16, max_size=16), blocks | st.just(b""))
def test_ecb_reads_any_buffer_alike(key: bytes, data: bytes) -> None:
    # bytes are read in place, other buffers through a memoryview: same blocks.
    k = DesKey(key)
    for buf in (data, bytearray(data), memoryview(data)):
        assert k.encrypt(buf) == k.encrypt(data) and k.decrypt(buf) == k.decrypt(data)
    assert k.decrypt(k.encrypt(data)) == data
