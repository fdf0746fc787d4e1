"""The published vectors (tests/vectors/security.json) against fastpath.crypto and the codec."""

from __future__ import annotations

from typing import Any

import pytest

from fastpath.codec import decode, encode
from fastpath.crypto import (
    DesKey,
    cup_mac,
    decrypt_working_key,
    encrypt_working_key,
    key_check_value,
    parse_pin_block_format0,
    pin_block_format0,
    x99_mac,
    x919_mac,
)


def h(s: str) -> bytes:
    return bytes.fromhex(s)


def test_cup_ecb_mac_over_the_published_mab(vectors: dict[str, Any]) -> None:
    for v in vectors["cup_ecb_mac"]:
        mac = cup_mac(DesKey(h(v["mak"])), h(v["mab"]))
        assert mac == v["field64_ascii"].encode()
        assert mac == h(v["field64_hex"])


def test_captured_0830_decodes_field_by_field(vectors: dict[str, Any]) -> None:
    v = vectors["cup_ecb_mac"][0]
    iso = h(v["mab"]) + h(v["field64_hex"])
    msg = decode(iso)
    assert msg.mti == "0830"
    assert msg.fields == (39, 41, 42, 60, 62, 64)
    assert msg.response_code == "00"
    assert msg.tid == "67004642"
    assert msg.mid == "897370179323002"
    assert msg[60] == "00000001372"
    assert (msg.msg_type_code, msg.batch, msg.network_code) == ("00", "000001", "372")
    f62 = msg[62]
    assert len(f62) == 277
    # Parameter download payload: CA public key index records, TLV from 9F06.
    assert f62.startswith(h("319F0605A000000333"))
    assert msg.mac == b"5FE058DB"
    assert msg.mac_input() == h(v["mab"])
    assert msg.verify_mac(DesKey(h(v["mak"])))


def test_captured_0830_reencodes_to_the_same_bytes(vectors: dict[str, Any]) -> None:
    v = vectors["cup_ecb_mac"][0]
    iso = h(v["mab"]) + h(v["field64_hex"])
    msg = decode(iso)
    fields = {f: msg[f] for f in msg.fields if f != 64}
    assert encode(msg.mti, fields, DesKey(h(v["mak"]))) == iso
    # and with the MAC given literally, as a capture replay would
    assert encode(msg.mti, {**fields, 64: msg.mac}) == iso


def test_captured_0830_fails_mac_under_another_key(vectors: dict[str, Any]) -> None:
    v = vectors["cup_ecb_mac"][0]
    msg = decode(h(v["mab"]) + h(v["field64_hex"]))
    assert not msg.verify_mac(DesKey(bytes(16)))


def test_working_key_under_tmk(vectors: dict[str, Any]) -> None:
    for v in vectors["working_key_under_tmk"]:
        clear = decrypt_working_key(h(v["tmk"]), h(v["ciphertext"]))
        assert clear == h(v["clear"])
        assert encrypt_working_key(h(v["tmk"]), clear) == h(v["ciphertext"])


@pytest.mark.parametrize("index", range(4))
def test_pin_block_format0(vectors: dict[str, Any], index: int) -> None:
    v = vectors["pin_block_iso9564_format0"][index]
    block = pin_block_format0(v["pin"], v["pan"])
    assert block == h(v["clear_block"])
    assert parse_pin_block_format0(block, v["pan"]) == v["pin"]


def test_x9_9_cbc_mac(vectors: dict[str, Any]) -> None:
    for v in vectors["ansi_x9_9_cbc_mac"]:
        assert x99_mac(DesKey(h(v["key"])), v["data_ascii"].encode()) == h(v["mac"])


def test_x9_19_retail_mac(vectors: dict[str, Any]) -> None:
    for v in vectors["ansi_x9_19_retail_mac"]:
        assert x919_mac(h(v["key"]), v["data_ascii"].encode()) == h(v["mac"])


def test_key_check_value(vectors: dict[str, Any]) -> None:
    for v in vectors["key_check_value"]:
        assert key_check_value(h(v["key"])) == h(v["kcv_full"])
        assert key_check_value(h(v["key"]), 4) == h(v["kcv_full"])[:4]
        assert key_check_value(h(v["key"]), 3) == h(v["kcv_full"])[:3]
