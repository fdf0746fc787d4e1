"""Diagnostics and key management: NC, B2, A0, A6, A8, BU (THALES.md §3-4).

Each handler reads its fields from a Reader and returns the reply's error
code and fields; a failure raises HsmError and the dispatcher answers with
the code alone.
"""

from __future__ import annotations

from hsm import errors
from hsm.context import HsmContext, key_length, lmk_scheme, parse_key_type
from hsm.crypto import fix_parity, has_odd_parity, kcv, random_key
from hsm.errors import HsmError
from hsm.fields import Reader
from hsm.lmk import SCHEME_LENGTH, TMK, ZMK, ZMK_SCHEMES, decrypt_under_zmk, encrypt_under_zmk

# A0's ZMK/TMK flag: `0` ZMK (documented). `1` = TMK is unconfirmed in
# THALES.md; chosen here: `1` means the export key is a TMK stored under LMK
# 14-15 (type 002), which is how the switch holds terminal TMKs.
EXPORT_KEY_TYPES = {"0": ZMK, "1": TMK}


def nc(ctx: HsmContext, r: Reader) -> bytes:
    return b"00" + (ctx.lmk.check_value + ctx.firmware).encode()


def b2(ctx: HsmContext, r: Reader) -> bytes:
    length = int(r.hex(4), 16)  # byte count of the data, in hex
    return b"00" + r.take(length)


def _zmk_scheme(char: str, length: int) -> str:
    if char not in ZMK_SCHEMES or SCHEME_LENGTH[char] != length:
        raise HsmError(errors.INVALID_KEY_SCHEME, "ZMK key scheme")
    return char


def _variant_zmk(zmk: bytes, scheme: str) -> None:
    """The U/T forms put their variants on the ZMK's second half: a
    single-length ZMK has none (27, not an internal error)."""
    if scheme in ("U", "T") and len(zmk) < 16:
        raise HsmError(errors.INCOMPATIBLE_KEY_LENGTH, "variant scheme under a single-length ZMK")


def a0(ctx: HsmContext, r: Reader) -> bytes:
    mode = r.text(1)
    if mode not in ("0", "1"):
        raise HsmError(errors.INVALID_INPUT, "mode")
    kt = parse_key_type(r.text(3))
    length = lmk_scheme(r.text(1))
    export_type = ZMK
    if r.accept(";"):
        flag = r.text(1)
        if flag not in EXPORT_KEY_TYPES:
            raise HsmError(errors.INVALID_INPUT, "ZMK/TMK flag")
        export_type = EXPORT_KEY_TYPES[flag]
    zmk = b""
    scheme = ""
    if mode == "1":
        zmk = ctx.key_under_lmk(export_type, r.key(), errors.SOURCE_KEY_PARITY)
        scheme = _zmk_scheme(r.text(1), length)
        _variant_zmk(zmk, scheme)
    key = random_key(length, ctx.random_bytes)
    out = ctx.lmk.encrypt_key(kt, key)
    if mode == "1":
        out += encrypt_under_zmk(zmk, key, scheme)
    return b"00" + (out + kcv(key)[:6]).encode()


def a6(ctx: HsmContext, r: Reader) -> bytes:
    kt = parse_key_type(r.text(3))
    zmk = ctx.key_under_lmk(ZMK, r.key(), errors.SOURCE_KEY_PARITY)
    under_zmk = r.key()
    length = lmk_scheme(r.text(1))
    if key_length(under_zmk) != length:
        raise HsmError(errors.INVALID_KEY_SCHEME, "key length and LMK scheme differ")
    _variant_zmk(zmk, under_zmk[0])
    key = decrypt_under_zmk(zmk, under_zmk)
    code = b"00"
    if not has_odd_parity(key):
        # payShield imports it with the parity forced odd and warns (vector 2).
        key = fix_parity(key)
        code = b"01"
    return code + (ctx.lmk.encrypt_key(kt, key) + kcv(key)[:6]).encode()


def a8(ctx: HsmContext, r: Reader) -> bytes:
    kt = parse_key_type(r.text(3))
    zmk = ctx.key_under_lmk(ZMK, r.key(), errors.SOURCE_KEY_PARITY)
    key = ctx.key_under_lmk(kt, r.key(), errors.DEST_KEY_PARITY)
    scheme = _zmk_scheme(r.text(1), len(key))
    _variant_zmk(zmk, scheme)
    return b"00" + (encrypt_under_zmk(zmk, key, scheme) + kcv(key)[:6]).encode()


_BU_LENGTH_FLAGS = {"0": 8, "1": 16, "2": 24}


def bu(ctx: HsmContext, r: Reader) -> bytes:
    code = r.text(2)
    flag = r.text(1)
    if flag not in _BU_LENGTH_FLAGS:
        raise HsmError(errors.INVALID_KEY_LENGTH_FLAG, "key length flag")
    field = r.key()
    if key_length(field) != _BU_LENGTH_FLAGS[flag]:
        raise HsmError(errors.INVALID_KEY_LENGTH_FLAG, "key length flag and key differ")
    type_code = "0" + code
    if r.accept(";"):
        type_code = r.text(3)
    elif code == "FF":
        raise HsmError(errors.INVALID_KEY_TYPE_CODE, "FF needs ;key type")
    kcv_len = 16
    if r.accept(";"):
        r.text(2)  # key schemes ZMK/LMK: only meaningful for key blocks
        kcv_type = r.text(1)
        if kcv_type not in ("0", "1"):
            raise HsmError(errors.INVALID_INPUT, "KCV type")
        kcv_len = 16 if kcv_type == "0" else 6
    kt = parse_key_type(type_code)
    key = ctx.key_under_lmk(kt, field, errors.SOURCE_KEY_PARITY)
    return b"00" + kcv(key)[:kcv_len].encode()
