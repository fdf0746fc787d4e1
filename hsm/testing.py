"""Helpers for tests, benchmarks and card provisioning against the *software* HSM.

They work with the LMKs directly (which only the software HSM's own process
or a test has), to make what a terminal or a card issuer would hold: a PIN
block under a TPK, a key under the LMK from a clear test key, a PIN under
the LMK. Never used by the switch at run time.
"""

from __future__ import annotations

import secrets

from hsm.crypto import cipher_for, fix_parity
from hsm.lmk import KeyType, LmkSet, key_type
from hsm.pinblock import encode_pin_block, encrypt_pin_lmk, visa_pvv


def clear_key(lmk: LmkSet, type_code: str, key_under_lmk: str) -> bytes:
    return lmk.decrypt_key(key_type(type_code), key_under_lmk)


def key_under_lmk(lmk: LmkSet, type_code: str, clear: bytes) -> str:
    kt: KeyType = key_type(type_code)
    return lmk.encrypt_key(kt, fix_parity(clear))


def pin_block(
    lmk: LmkSet, type_code: str, key: str, pin: str, account12: str, fmt: str = "01"
) -> str:
    """The PIN block a terminal (type 002 TPK) or a zone (001 ZPK) would send."""
    clear = encode_pin_block(pin, fmt, account12, secrets.token_bytes)
    return cipher_for(clear_key(lmk, type_code, key)).encrypt(clear).hex().upper()


def pin_under_lmk(lmk: LmkSet, pin: str, account12: str) -> str:
    return encrypt_pin_lmk(lmk.pin_cipher(), pin, account12)


def pvv(lmk: LmkSet, pvk: str, account12: str, pvki: str, pin: str) -> str:
    return visa_pvv(clear_key(lmk, "002", pvk), account12, pvki, pin)
