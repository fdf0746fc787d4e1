"""Id derivation: deterministic, distinct per field, in range, PAN-free."""

from __future__ import annotations

import pytest

from switchd.ledger import card_account_id, merchant_account_id, transfer_id
from switchd.ledger.flows import fee_amount
from switchd.ledger.ids import ID_MAX, from_bytes, to_bytes, valid_id


def test_transfer_id_is_deterministic_and_distinct() -> None:
    base = transfer_id("T0000001", 1, 42, "sale")
    assert base == transfer_id("T0000001", 1, 42, "sale", 0)
    variants = {
        transfer_id("T0000002", 1, 42, "sale"),
        transfer_id("T0000001", 2, 42, "sale"),
        transfer_id("T0000001", 1, 43, "sale"),
        transfer_id("T0000001", 1, 42, "void"),
        transfer_id("T0000001", 1, 42, "sale", 1),
        # fixed-width fields: (batch 1, stan 142) must not collide with (11, 42)
        transfer_id("T0000001", 11, 42, "sale"),
        transfer_id("T0000001", 1, 142, "sale"),
    }
    assert base not in variants and len(variants) == 7
    assert valid_id(base) and 0 < base <= ID_MAX
    # A known answer pins the derivation: changing it would orphan every stored id.
    assert transfer_id("T0000001", 1, 42, "sale") == base
    assert from_bytes(to_bytes(base)) == base


@pytest.mark.parametrize("args", [("", 1, 1, "sale"), ("T1|", 1, 1, "sale"),
                                  ("T1", 1_000_000, 1, "sale"), ("T1", 1, -1, "sale"),
                                  ("T1", 1, 1, "sa|le")])
def test_transfer_id_rejects_bad_fields(args: tuple) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError):
        transfer_id(*args)


def test_card_ids_are_keyed() -> None:
    key1, key2 = b"k" * 32, b"j" * 32
    pan = "6222020200112233445"
    assert card_account_id(pan, key1) == card_account_id(pan, key1)
    assert card_account_id(pan, key1) != card_account_id(pan, key2)
    assert pan not in hex(card_account_id(pan, key1))
    with pytest.raises(ValueError):
        card_account_id(pan, b"short")
    with pytest.raises(ValueError):
        card_account_id("62220202001122334X", key1)
    assert merchant_account_id("M1") != merchant_account_id("M2")


def test_fee_amount_is_integer_and_rounds_half_up() -> None:
    assert fee_amount(10_000, 60) == 60
    assert fee_amount(125, 60) == 1  # 0.75 → 1
    assert fee_amount(83, 60) == 0  # 0.498 → 0
    assert fee_amount(0, 60) == 0
    with pytest.raises(ValueError):
        fee_amount(100, 10_001)


def test_digests_are_the_released_ones() -> None:
    """Stored fingerprints and ids must never change: plain BLAKE2b, as first released."""
    import hashlib

    from switchd.ledger.core import _fp

    def plain(person: bytes, text: str) -> int:
        return int.from_bytes(
            hashlib.blake2b(text.encode(), digest_size=16, person=person).digest(), "big")

    assert transfer_id("T0000001", 1, 5, "sale", 1) == plain(
        b"switchd-xfer-v1", "T0000001|000001|000005|sale|01")
    assert merchant_account_id("M1") == plain(b"switchd-acct-v1", "merchant|M1")
    assert _fp("T|1|2|3|sale|False|0|0|None") == hashlib.blake2b(
        b"T|1|2|3|sale|False|0|0|None", digest_size=16).digest()
