"""PIN commands: CA, CC (translate), DC, EC (verify Visa PVV), DG (make a PVV), BA, JE, JG.

The clear PIN lives only in local variables of these functions.
"""

from __future__ import annotations

import re

from hsm import errors
from hsm.context import HsmContext
from hsm.crypto import cipher_for, has_odd_parity
from hsm.errors import HsmError
from hsm.fields import Reader
from hsm.lmk import PVK, TPK, ZPK, KeyType
from hsm.pinblock import (
    SUPPORTED_FORMATS,
    check_account,
    check_format,
    decode_pin_block,
    decrypt_pin_lmk,
    encode_pin_block,
    encrypt_pin_lmk,
    visa_pvv,
)


def _clear_pin(key: bytes, block_hex: str, fmt: str, account12: str) -> str:
    """Check the format and account, then decrypt and decode a PIN block."""
    if fmt not in SUPPORTED_FORMATS:
        check_format(fmt)  # raises the error for an unknown or a disabled format
    if len(account12) != 12 or not account12.isdigit():
        check_account(account12)  # raises 22
    clear = cipher_for(key).decrypt(bytes.fromhex(block_hex))
    return decode_pin_block(clear, fmt, account12)


def _pin_fields(r: Reader) -> tuple[str, str, str]:
    """The fields PIN block 16H, format 2N, account 12N."""
    block = r.hex(16)
    fmt = r.digits(2, errors.INVALID_PIN_FORMAT)
    return block, fmt, r.text(12)


def _translate(ctx: HsmContext, r: Reader, source: KeyType) -> bytes:
    src = ctx.key_under_lmk(source, r.key(), errors.SOURCE_KEY_PARITY)
    dst = ctx.key_under_lmk(ZPK, r.key(), errors.DEST_KEY_PARITY)
    max_len = int(r.digits(2))
    block = r.hex(16)
    src_fmt = r.digits(2, errors.INVALID_PIN_FORMAT)
    dst_fmt = r.digits(2, errors.INVALID_PIN_FORMAT)
    account = r.text(12)
    check_format(dst_fmt)
    pin = _clear_pin(src, block, src_fmt, account)
    if len(pin) > max_len:
        raise HsmError(errors.PIN_LENGTH, "PIN longer than the maximum")
    out = cipher_for(dst).encrypt(encode_pin_block(pin, dst_fmt, account, ctx.random_bytes))
    return b"00" + f"{len(pin):02d}{out.hex().upper()}{dst_fmt}".encode()


def ca(ctx: HsmContext, r: Reader) -> bytes:
    return _translate(ctx, r, TPK)


def cc(ctx: HsmContext, r: Reader) -> bytes:
    return _translate(ctx, r, ZPK)


def _pvk(ctx: HsmContext, r: Reader, parity_error: str) -> bytes:
    """A PVK pair: U+32H, or 32H = PVK-A and PVK-B each 16H under LMK 14-15.

    Its parity error is 11 in DC/EC (the PVK is the second key) and 10 in DG.
    """
    first = r.peek()
    if first == ord("U"):
        return ctx.key_under_lmk(PVK, r.key(), parity_error)
    if first in (ord("T"), ord("Z")):
        raise HsmError(errors.INCOMPATIBLE_KEY_LENGTH, "PVK must be double length")
    left = r.hex(16)
    right = r.hex(16)
    pvk = ctx.lmk.decrypt_key(PVK, left) + ctx.lmk.decrypt_key(PVK, right)
    if not has_odd_parity(pvk):
        raise HsmError(parity_error, "PVK parity")
    return pvk


def _pvki(r: Reader) -> str:
    """PVKI 1N, 0-6 (THALES.md §5); 21, invalid index, otherwise."""
    pvki = r.digits(1)
    if pvki > "6":
        raise HsmError(errors.INVALID_INDEX, "PVKI must be 0-6")
    return pvki


# DC/EC as the switch sends them: both keys U + 32H, every field well formed.
# One match checks them all (101 characters); any other request goes through
# the field-by-field reads, which give the errors.
_VERIFY_FIELDS = re.compile(
    rb"U[0-9A-F]{32}U[0-9A-F]{32}[0-9A-F]{16}[0-9]{2}.{12}[0-6][0-9]{4}", re.DOTALL
)
_VERIFY_SIZE = 101


def _verify(ctx: HsmContext, r: Reader, source: KeyType) -> bytes:
    f = r.fixed(_VERIFY_FIELDS, _VERIFY_SIZE)
    if f is None:
        key = ctx.key_under_lmk(source, r.key(), errors.SOURCE_KEY_PARITY)
        pvk = _pvk(ctx, r, errors.DEST_KEY_PARITY)
        block, fmt, account = _pin_fields(r)
        pvki = _pvki(r)
        pvv = r.digits(4)
    else:
        # The same checks, in the same order, as the reads above make.
        key = ctx.key_under_lmk(source, f[:33], errors.SOURCE_KEY_PARITY)
        pvk = ctx.key_under_lmk(PVK, f[33:66], errors.DEST_KEY_PARITY)
        block, fmt, account, pvki, pvv = f[66:82], f[82:84], f[84:96], f[96], f[97:]
    pin = _clear_pin(key, block, fmt, account)
    return b"00" if visa_pvv(pvk, account, pvki, pin) == pvv else b"01"


def dc(ctx: HsmContext, r: Reader) -> bytes:
    return _verify(ctx, r, TPK)


def ec(ctx: HsmContext, r: Reader) -> bytes:
    return _verify(ctx, r, ZPK)


def dg(ctx: HsmContext, r: Reader) -> bytes:
    # The PIN under LMK has no length field: it is what is left before the
    # account (12N) and PVKI (1N).
    pvk = _pvk(ctx, r, errors.SOURCE_KEY_PARITY)
    pin_len = r.rest_before_trailer() - 13
    if pin_len < 1:
        raise HsmError(errors.INVALID_INPUT, "message too short")
    pin_field = r.text(pin_len)
    account = r.text(12)
    pvki = _pvki(r)
    check_account(account)
    pin = decrypt_pin_lmk(ctx.lmk.pin_cipher(), pin_field, account)
    return b"00" + visa_pvv(pvk, account, pvki, pin).encode()


def ba(ctx: HsmContext, r: Reader) -> bytes:
    """Encrypt a clear PIN (4-12 digits, F-padding allowed) for the account: BB + PIN under LMK."""
    pin_len = r.rest_before_trailer() - 12
    if pin_len < 1:
        raise HsmError(errors.INVALID_INPUT, "message too short")
    pin = r.text(pin_len).rstrip("F")
    account = r.text(12)
    check_account(account)
    if not pin.isdigit() or not 4 <= len(pin) <= 12:
        raise HsmError(errors.PIN_LENGTH, "PIN must be 4-12 digits")
    return b"00" + encrypt_pin_lmk(ctx.lmk.pin_cipher(), pin, account).encode()


def je(ctx: HsmContext, r: Reader) -> bytes:
    zpk = ctx.key_under_lmk(ZPK, r.key(), errors.SOURCE_KEY_PARITY)
    block, fmt, account = _pin_fields(r)
    pin = _clear_pin(zpk, block, fmt, account)
    return b"00" + encrypt_pin_lmk(ctx.lmk.pin_cipher(), pin, account).encode()


def jg(ctx: HsmContext, r: Reader) -> bytes:
    zpk = ctx.key_under_lmk(ZPK, r.key(), errors.DEST_KEY_PARITY)
    fmt = r.digits(2, errors.INVALID_PIN_FORMAT)
    account = r.text(12)
    pin_len = r.rest_before_trailer()
    pin_field = r.text(pin_len)
    check_format(fmt)
    check_account(account)
    pin = decrypt_pin_lmk(ctx.lmk.pin_cipher(), pin_field, account)
    block = encode_pin_block(pin, fmt, account, ctx.random_bytes)
    return b"00" + cipher_for(zpk).encrypt(block).hex().upper().encode()
