"""PIN blocks, the Visa PVV, and this HSM's PIN-under-LMK form.

Clear PINs exist only inside these functions and the handlers that call
them; nothing here logs.

Supported PIN block formats (Thales format codes): 01 ISO 9564 format 0, 05
ISO format 1, 34 ISO format 2, 47 ISO format 3. The other Thales codes (02
Docutel, 03 IBM 3624, 04 PLUS) are known but not implemented: error 69.
"""

from __future__ import annotations

from hsm import errors
from hsm.crypto import BlockCipher, RandomSource, encrypt
from hsm.errors import HsmError

SUPPORTED_FORMATS = frozenset({"01", "05", "34", "47"})
KNOWN_FORMATS = frozenset({"01", "02", "03", "04", "05", "34", "35", "41", "42", "47", "48"})

_HEX = frozenset("0123456789ABCDEF")


def check_format(code: str) -> None:
    if code not in KNOWN_FORMATS:
        raise HsmError(errors.INVALID_PIN_FORMAT, "unknown PIN block format")
    if code not in SUPPORTED_FORMATS:
        raise HsmError(errors.PIN_FORMAT_DISABLED, "PIN block format not implemented")


def check_account(account12: str) -> None:
    if len(account12) != 12 or not account12.isdigit():
        raise HsmError(errors.INVALID_ACCOUNT, "account number must be 12 digits")


def account12_from_pan(pan: str) -> str:
    """The 12 rightmost PAN digits excluding the check digit."""
    return pan[:-1][-12:].rjust(12, "0")


def _account_block(account12: str) -> int:
    return int(account12, 16)  # "0000" + 12 digits: the high 16 bits are zero


# Format code -> the control nibble its blocks start with.
_CONTROL = {"01": "0", "05": "1", "34": "2", "47": "3"}
# Formats whose block is XORed with the account block, and whose fill is F.
_WITH_ACCOUNT = frozenset({"01", "47"})
_F_FILL = frozenset({"01", "34"})
# The length nibble of a block -> the PIN length it gives, for 4-12 only.
_PIN_LENGTHS = {f"{n:x}": n for n in range(4, 13)}


def decode_pin_block(clear: bytes, fmt: str, account12: str) -> str:
    """The PIN in a decrypted PIN block (8 bytes); raises HsmError 20/24 on a bad block."""
    # Lower-case hex from bytes.hex(): an f-string's "016X" costs several
    # times as much, and a PIN is digits in either case.
    if fmt in _WITH_ACCOUNT:
        value = int.from_bytes(clear, "big") ^ _account_block(account12)
        text = value.to_bytes(8, "big").hex()
    else:
        text = clear.hex()
    if text[0] != _CONTROL[fmt]:
        raise HsmError(errors.PIN_BLOCK_INVALID, "control field")
    length = _PIN_LENGTHS.get(text[1])
    if length is None:
        raise HsmError(errors.PIN_LENGTH, "PIN length")
    pin = text[2 : 2 + length]
    if not pin.isdigit():
        raise HsmError(errors.PIN_BLOCK_INVALID, "PIN digits")
    fill = text[2 + length :]
    if fmt in _F_FILL:
        if fill.strip("f"):
            raise HsmError(errors.PIN_BLOCK_INVALID, "fill")
    elif fmt == "47" and fill.strip("abcdef"):
        raise HsmError(errors.PIN_BLOCK_INVALID, "fill")
    return pin


def encode_pin_block(pin: str, fmt: str, account12: str, random_bytes: RandomSource) -> bytes:
    """The clear PIN block for `pin` in format `fmt` (random fill where the format wants it)."""
    control = {"01": "0", "05": "1", "34": "2", "47": "3"}[fmt]
    head = f"{control}{len(pin):X}{pin}"
    fill_len = 16 - len(head)
    if fmt in ("01", "34"):
        fill = "F" * fill_len
    elif fmt == "05":
        fill = random_bytes(8).hex().upper()[:fill_len]
    else:  # ISO 3: random nibbles from A-F
        fill = "".join("ABCDEF"[b % 6] for b in random_bytes(fill_len))
    value = int(head + fill, 16)
    if fmt in ("01", "47"):
        value ^= _account_block(account12)
    return value.to_bytes(8, "big")


def is_hex(text: str) -> bool:
    return all(c in _HEX for c in text)


# --- Visa PVV ----------------------------------------------------------------------


# The PVV takes the decimal digits of the result first, then its letters as
# digits: one table drops the letters, the other drops the digits and maps
# a-f to 0-5 (C-level translate instead of a loop over the 16 characters).
_DROP_LETTERS = str.maketrans("", "", "abcdef")
_LETTERS_AS_DIGITS = str.maketrans("abcdef", "012345", "0123456789")


def visa_pvv(pvk: bytes, account12: str, pvki: str, pin: str) -> str:
    """The Visa PIN verification value (THALES.md §5, DG)."""
    tsp = account12[1:12] + pvki + pin[:4]
    result = encrypt(pvk, bytes.fromhex(tsp)).hex()
    digits = result.translate(_DROP_LETTERS)
    if len(digits) < 4:
        digits += result.translate(_LETTERS_AS_DIGITS)
    return digits[:4]


# --- PIN under LMK (pair 02-03) -------------------------------------------------------
#
# payShield's algorithm for PINs under the variant LMK is not public, so this
# HSM uses its own, documented in hsm/README.md: the field is LN = PIN length
# + 1 decimal digits, a check digit then the PIN, each added mod 10 to a
# keystream of decimalised nibbles of E_LMK02-03("0000" + account12). It is
# bound to the account (like the real one) and the check digit turns most
# wrong or corrupted values into error 14 instead of a wrong PIN.


def _keystream(pin_cipher: BlockCipher, account12: str) -> list[int]:
    nibbles = pin_cipher.encrypt(bytes.fromhex("0000" + account12)).hex()
    return [int(c, 16) % 10 for c in nibbles]


def _check_digit(pin: str) -> int:
    return (sum((i + 1) * int(c) for i, c in enumerate(pin)) + len(pin)) % 10


def encrypt_pin_lmk(pin_cipher: BlockCipher, pin: str, account12: str) -> str:
    clear = str(_check_digit(pin)) + pin
    ks = _keystream(pin_cipher, account12)
    return "".join(str((int(c) + ks[i]) % 10) for i, c in enumerate(clear))


def decrypt_pin_lmk(pin_cipher: BlockCipher, field: str, account12: str) -> str:
    if not field.isdigit() or not 5 <= len(field) <= 13:
        raise HsmError(errors.PIN_UNDER_LMK_INVALID, "PIN under LMK")
    ks = _keystream(pin_cipher, account12)
    clear = "".join(str((int(c) - ks[i]) % 10) for i, c in enumerate(field))
    pin = clear[1:]
    if int(clear[0]) != _check_digit(pin):
        raise HsmError(errors.PIN_UNDER_LMK_INVALID, "PIN under LMK")
    return pin
