"""Deterministic 128-bit ids for transfers and accounts.

A transfer's id is derived from what identifies the request on the wire, so
that a repeated request (a terminal retrying, a duplicate 0200, a reversal sent
twice) maps to the same id and the ledger's idempotency does the rest:

    id = BLAKE2b-128(person="switchd-xfer-v1", "tid|batch|stan|kind|leg")

BLAKE2b is in the standard library, fast, and a 128-bit digest makes an
accidental collision among the ledger's transfers negligible (birthday bound
~2**64). The fields are joined in a canonical, unambiguous form (terminal ids
are 8 printable characters, numbers are fixed-width decimal) and `leg`
separates the transfers one request creates (a sale's merchant leg 0 and fee
leg 1).

Account ids are chosen by the caller (the ledger allocates nothing), derived
the same way from a stable business key: the merchant id, the currency of
the fee account. A card's account id must not reveal the PAN: it is a *keyed*
hash (the key comes from configuration), because an unkeyed hash of a PAN can
be reversed by trying every PAN of a BIN.
"""

from __future__ import annotations

import hashlib

#: 0 and all-ones are reserved: "no id" must never match a real one.
ID_MIN = 1
ID_MAX = 2**128 - 2


#: Empty unkeyed hashers per personalization: a copy is cheaper than a new one.
_EMPTY: dict[bytes, hashlib._Hash] = {}  # type: ignore[name-defined]


def _digest(person: bytes, text: str, key: bytes = b"") -> int:
    if key:
        h = hashlib.blake2b(text.encode(), digest_size=16, person=person, key=key)
    else:
        empty = _EMPTY.get(person)
        if empty is None:
            empty = _EMPTY[person] = hashlib.blake2b(digest_size=16, person=person)
        h = empty.copy()
        h.update(text.encode())
    value = int.from_bytes(h.digest(), "big")
    # Folding the two reserved values onto valid ones keeps the function total;
    # the chance of hitting them is 2**-127.
    if value == 0:
        return 1
    if value == 2**128 - 1:
        return ID_MAX
    return value


def transfer_id(terminal_id: str, batch: int, stan: int, kind: str, leg: int = 0) -> int:
    """The id of the `leg`-th transfer a terminal request creates.

    `kind` is the wire transaction kind (sale, void, refund, reversal,
    preauth, preauth_cancel, completion, ...). A reversal (0400) carries the
    original's STAN, so its kind keeps it apart from the original.
    """
    if not terminal_id or "|" in terminal_id or "|" in kind:
        raise ValueError(f"terminal_id and kind must be non-empty and without '|': {terminal_id!r}")
    if not 0 <= batch <= 999_999 or not 0 <= stan <= 999_999 or not 0 <= leg <= 99:
        raise ValueError(f"batch/stan/leg out of range: {batch}/{stan}/{leg}")
    return _digest(b"switchd-xfer-v1", f"{terminal_id}|{batch:06d}|{stan:06d}|{kind}|{leg:02d}")


def account_id(namespace: str, key: str) -> int:
    """A stable account id for a non-secret business key, e.g. ("merchant", MID)."""
    return _digest(b"switchd-acct-v1", f"{namespace}|{key}")


def merchant_account_id(merchant_id: str) -> int:
    return account_id("merchant", merchant_id)


def fee_account_id(currency: str) -> int:
    return account_id("fee_income", currency)


def suspense_account_id(currency: str) -> int:
    return account_id("suspense", currency)


def card_account_id(pan: str, key: bytes) -> int:
    """The account id of an on-us card: a keyed hash, so the ledger never holds the PAN.

    `key` is a secret (16-64 bytes) from configuration; it must stay the same
    for the life of the ledger, or every card gets a new account.
    """
    if not 16 <= len(key) <= 64:
        raise ValueError("card id key must be 16 to 64 bytes")
    if not pan.isdigit() or not 12 <= len(pan) <= 19:
        raise ValueError("PAN must be 12 to 19 digits")
    return _digest(b"switchd-card-v1", pan, key=key)


def valid_id(value: int) -> bool:
    return isinstance(value, int) and ID_MIN <= value <= ID_MAX


def to_bytes(value: int) -> bytes:
    """Storage form: 16 bytes big-endian, so ids sort the same as integers."""
    return value.to_bytes(16, "big")


def from_bytes(raw: bytes) -> int:
    return int.from_bytes(raw, "big")
