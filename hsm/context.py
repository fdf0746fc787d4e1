"""What every command handler works with: the LMKs, a random source, and key helpers."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from hsm import errors
from hsm.crypto import RandomSource, has_odd_parity
from hsm.errors import HsmError
from hsm.lmk import LMK_SCHEMES, SCHEME_LENGTH, KeyType, KeyTypeError, LmkSet, key_type

FIRMWARE = "0001-SWH1"  # 9A "xxxx-xxxx" as NC returns it: this software HSM, version 1


@dataclass
class HsmContext:
    lmk: LmkSet
    # Injectable so tests can make A0 reproduce a published vector byte for byte.
    random_bytes: RandomSource = field(default=secrets.token_bytes)
    firmware: str = FIRMWARE

    def key_under_lmk(self, kt: KeyType, key_field: str, parity_error: str) -> bytes:
        """The clear key of a key field stored under the LMK as type `kt`.

        X/Y only exist under a ZMK, so they are a scheme error here. A key
        decrypted under the wrong type's LMK variant almost always fails the
        odd-parity check, which is how a key used as another type is caught.
        """
        if key_field[0] in "XY":
            raise HsmError(errors.INVALID_KEY_SCHEME, "X/Y scheme under the LMK")
        clear = self.lmk.decrypt_key(kt, key_field)
        if not has_odd_parity(clear):
            raise HsmError(parity_error, "key parity")
        return clear


def parse_key_type(code: str) -> KeyType:
    try:
        return key_type(code)
    except KeyTypeError:
        raise HsmError(errors.INVALID_KEY_TYPE_CODE, "key type") from None


def lmk_scheme(char: str) -> int:
    """Key length in bytes for an LMK key scheme character (Z, U, T)."""
    if char not in LMK_SCHEMES:
        raise HsmError(errors.INVALID_KEY_SCHEME, "LMK key scheme")
    return SCHEME_LENGTH[char]


def key_length(key_field: str) -> int:
    """Length in bytes of the key a key field holds."""
    return (len(key_field) - (0 if key_field[0] in "0123456789ABCDEF" else 1)) // 2
