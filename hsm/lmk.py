"""Variant LMKs: the LMK pairs, key types, and encrypting keys under them (THALES.md §2).

A key of each type is encrypted under its own LMK pair and variant, so a ZPK
decrypted as a TPK yields garbage (usually a parity error), never the key:
that is what stops a key of one type being used as another. The
construction is the payShield one, so keys made here work on a real payShield
loaded with the same LMKs, and the reverse.

LMK file format (a real deployment's file is never committed)::

    # comment lines and blank lines are ignored
    00-01 = 0101010101010101 7902CD1FD36EF8BA
    02-03 = 2020202020202020 3131313131313131
    ...
    38-39 = 0101010101010101 0101010101010101

All twenty pairs 00-01 to 38-39 are required, each 32 hex digits (spaces
inside are ignored) with odd parity; `load_lmk_file` names the line of any
error.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

from hsm.crypto import BlockCipher, cipher_for, encrypt, has_odd_parity

PAIR_COUNT = 20  # 00-01 .. 38-39

# Key-type variants applied to the first byte of the LMK pair's left key.
TYPE_VARIANTS = {1: 0xA6, 2: 0x5A, 3: 0x6A, 4: 0xDE, 5: 0x2B, 6: 0x50, 7: 0x74, 8: 0x9C, 9: 0xFA}
# Per-part variants on the first byte of the right key: double, then triple length.
DOUBLE_PARTS = (0xA6, 0x5A)
TRIPLE_PARTS = (0x6A, 0xDE, 0x2B)

# LMK code (the PP of a VPP key type) -> index of the LMK pair (pair 04-05 is index 2).
LMK_CODES = {
    "00": 2, "01": 3, "02": 7, "03": 8, "04": 9, "05": 10,
    "06": 11, "07": 12, "08": 13, "09": 14, "0A": 15, "0B": 16,
}  # fmt: skip

PIN_PAIR = 1  # 02-03: PINs for host storage

# Key scheme tag -> key length in bytes. Under the LMK only Z/U/T exist; X/Y
# are the X9.17 forms used under a ZMK/TMK.
SCHEME_LENGTH = {"Z": 8, "U": 16, "T": 24, "X": 16, "Y": 24}
LMK_SCHEMES = frozenset("ZUT")
ZMK_SCHEMES = frozenset("ZUTXY")

# The published Thales test LMK set (see hsm/README.md for the sources).
TEST_LMK_PAIRS = (
    "01010101010101017902CD1FD36EF8BA",  # 00-01
    "20202020202020203131313131313131",  # 02-03
    "40404040404040405151515151515151",  # 04-05
    "61616161616161617070707070707070",  # 06-07
    "80808080808080809191919191919191",  # 08-09
    "A1A1A1A1A1A1A1A1B0B0B0B0B0B0B0B0",  # 10-11
    "C1C1010101010101D0D0010101010101",  # 12-13
    "E0E0010101010101F1F1010101010101",  # 14-15
    "1C587F1C13924FEF0101010101010101",  # 16-17
    "01010101010101010101010101010101",  # 18-19
    "02020202020202020404040404040404",  # 20-21
    "07070707070707071010101010101010",  # 22-23
    "13131313131313131515151515151515",  # 24-25
    "16161616161616161919191919191919",  # 26-27
    "1A1A1A1A1A1A1A1A1C1C1C1C1C1C1C1C",  # 28-29
    "23232323232323232525252525252525",  # 30-31
    "26262626262626262929292929292929",  # 32-33
    "2A2A2A2A2A2A2A2A2C2C2C2C2C2C2C2C",  # 34-35
    "2F2F2F2F2F2F2F2F3131313131313131",  # 36-37
    "01010101010101010101010101010101",  # 38-39
)


class LmkError(Exception):
    """The LMK file or set is unusable (the message names the line or pair)."""


class KeyTypeError(Exception):
    """The key type code names no key this HSM knows (Thales error 04)."""


class KeyType(NamedTuple):
    """A key type: a tuple, so that hashing and comparing it (the key of the
    decrypted-key cache, on every key of every command) run in C, not in a
    dataclass's generated Python __hash__ and __eq__."""

    code: str  # VPP, e.g. "001"
    pair: int  # index of the LMK pair
    variant: int  # 0-9


def key_type(code: str) -> KeyType:
    """Parse a 3H key type code (THALES.md §2.2); raises KeyTypeError."""
    if len(code) != 3 or not code[0].isdigit() or code[1:] not in LMK_CODES:
        raise KeyTypeError(code)
    return _key_type(code)


@lru_cache(maxsize=256)
def _key_type(code: str) -> KeyType:
    return KeyType(code, LMK_CODES[code[1:]], int(code[0]))


ZMK = KeyType("000", 2, 0)
ZPK = KeyType("001", 3, 0)
TPK = KeyType("002", 7, 0)  # also TMK and PVK
TMK = TPK
PVK = TPK
TAK = KeyType("003", 8, 0)
ZAK = KeyType("008", 13, 0)
DEK = KeyType("00B", 16, 0)


def _with_first_byte(key: bytes, mask: int) -> bytes:
    return bytes((key[0] ^ mask,)) + key[1:]


def _part_ciphers(left: bytes, right: bytes, parts: tuple[int, ...]) -> tuple[BlockCipher, ...]:
    return tuple(cipher_for(left + _with_first_byte(right, v)) for v in parts)


class LmkSet:
    """The twenty LMK pairs, with every cipher the variant scheme needs built once."""

    def __init__(self, pairs: list[bytes]) -> None:
        if len(pairs) != PAIR_COUNT:
            raise LmkError(f"expected {PAIR_COUNT} LMK pairs, got {len(pairs)}")
        for i, pair in enumerate(pairs):
            if len(pair) != 16:
                raise LmkError(f"LMK pair {2 * i:02d}-{2 * i + 1:02d} is not 16 bytes")
            if not has_odd_parity(pair):
                raise LmkError(f"LMK pair {2 * i:02d}-{2 * i + 1:02d} has a parity error")
        self._pairs = tuple(pairs)
        # (pair, variant) -> ciphers for scheme Z, U parts, T parts. Built
        # lazily but kept forever: there are at most 20 x 10 of them.
        self._ciphers: dict[tuple[int, int], tuple[BlockCipher, tuple[BlockCipher, ...],
                                                   tuple[BlockCipher, ...]]] = {}
        # Decrypting a stored key is the hot path of every PIN command and
        # the same TPK/ZPK/PVK fields come back again and again.
        self.decrypt_key = lru_cache(maxsize=16384)(self._decrypt_key)
        self.check_value = self._check_value()

    # -- ciphers ---------------------------------------------------------------

    def _ciphers_for(
        self, pair: int, variant: int
    ) -> tuple[BlockCipher, tuple[BlockCipher, ...], tuple[BlockCipher, ...]]:
        found = self._ciphers.get((pair, variant))
        if found is None:
            lmk = self._pairs[pair]
            left, right = lmk[:8], lmk[8:]
            if variant:
                left = _with_first_byte(left, TYPE_VARIANTS[variant])
            found = (
                cipher_for(left + right),
                _part_ciphers(left, right, DOUBLE_PARTS),
                _part_ciphers(left, right, TRIPLE_PARTS),
            )
            self._ciphers[(pair, variant)] = found
        return found

    # -- keys under the LMK ----------------------------------------------------

    def encrypt_key(self, kt: KeyType, clear: bytes) -> str:
        """The key field for `clear` under the LMK: 16H, U+32H or T+48H by length."""
        single, double, triple = self._ciphers_for(kt.pair, kt.variant)
        if len(clear) == 8:
            return single.encrypt(clear).hex().upper()
        parts = double if len(clear) == 16 else triple
        tag = "U" if len(clear) == 16 else "T"
        out = b"".join(c.encrypt(clear[8 * i : 8 * i + 8]) for i, c in enumerate(parts))
        return tag + out.hex().upper()

    def _decrypt_key(self, kt: KeyType, field: str) -> bytes:
        """Clear key from a key field under the LMK (field already validated as hex)."""
        single, double, triple = self._ciphers_for(kt.pair, kt.variant)
        tag = field[0]
        if tag == "U":
            data = bytes.fromhex(field[1:])
            return double[0].decrypt(data[:8]) + double[1].decrypt(data[8:])
        if tag == "T":
            data = bytes.fromhex(field[1:])
            return b"".join(c.decrypt(data[8 * i : 8 * i + 8]) for i, c in enumerate(triple))
        if tag == "Z":
            field = field[1:]
        return single.decrypt(bytes.fromhex(field))

    # -- the PIN pair 02-03 ------------------------------------------------------

    def pin_cipher(self) -> BlockCipher:
        return self._ciphers_for(PIN_PAIR, 0)[0]

    def _check_value(self) -> str:
        # Chosen (the real construction is not public): the KCV of pair 00-01.
        return encrypt(self._pairs[0], bytes(8)).hex().upper()


# --- keys under a ZMK/TMK -------------------------------------------------------


def encrypt_under_zmk(zmk: bytes, key: bytes, scheme: str) -> str:
    """Export form of `key` under a clear ZMK/TMK (THALES.md §2.3, last paragraph)."""
    if scheme in ("X", "Y", "Z"):
        c = cipher_for(zmk)
        out = b"".join(c.encrypt(key[i : i + 8]) for i in range(0, len(key), 8))
    else:
        parts = DOUBLE_PARTS if scheme == "U" else TRIPLE_PARTS
        ciphers = _part_ciphers(zmk[:8], zmk[8:], parts)
        out = b"".join(c.encrypt(key[8 * i : 8 * i + 8]) for i, c in enumerate(ciphers))
    text = out.hex().upper()
    return text if scheme == "Z" else scheme + text


def decrypt_under_zmk(zmk: bytes, field: str) -> bytes:
    """Clear key from its form under a clear ZMK/TMK (tag U/T/X/Y/Z or none)."""
    tag = field[0] if not _is_hex(field[0]) else ""
    data = bytes.fromhex(field[1:] if tag else field)
    if tag in ("U", "T"):
        parts = DOUBLE_PARTS if tag == "U" else TRIPLE_PARTS
        ciphers = _part_ciphers(zmk[:8], zmk[8:], parts)
        return b"".join(c.decrypt(data[8 * i : 8 * i + 8]) for i, c in enumerate(ciphers))
    c = cipher_for(zmk)
    return b"".join(c.decrypt(data[i : i + 8]) for i in range(0, len(data), 8))


def _is_hex(ch: str) -> bool:
    return ch in "0123456789ABCDEF"


# --- loading ----------------------------------------------------------------------


def thales_test_lmk() -> LmkSet:
    """The published Thales test LMK set (never for production)."""
    return LmkSet([bytes.fromhex(p) for p in TEST_LMK_PAIRS])


def parse_lmk_text(text: str) -> LmkSet:
    """Parse the LMK file format documented at the top of this module."""
    found: dict[int, bytes] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, value = line.partition("=")
        if not sep:
            raise LmkError(f"line {lineno}: expected 'NN-NN = 32 hex digits'")
        name = name.strip()
        lo, dash, hi = name.partition("-")
        if not (dash and lo.isdigit() and hi.isdigit() and int(hi) == int(lo) + 1
                and int(lo) % 2 == 0 and int(lo) < 2 * PAIR_COUNT):
            raise LmkError(f"line {lineno}: {name!r} is not an LMK pair name like 04-05")
        hexpart = "".join(value.split()).upper()
        if len(hexpart) != 32 or any(not _is_hex(c) for c in hexpart):
            raise LmkError(f"line {lineno}: LMK pair {name} must be 32 hex digits")
        index = int(lo) // 2
        if index in found:
            raise LmkError(f"line {lineno}: LMK pair {name} given twice")
        key = bytes.fromhex(hexpart)
        if not has_odd_parity(key):
            raise LmkError(f"line {lineno}: LMK pair {name} has a parity error")
        found[index] = key
    missing = [f"{2 * i:02d}-{2 * i + 1:02d}" for i in range(PAIR_COUNT) if i not in found]
    if missing:
        raise LmkError("LMK file lacks pairs " + ", ".join(missing))
    return LmkSet([found[i] for i in range(PAIR_COUNT)])


def load_lmk(spec: str) -> LmkSet:
    """`test` for the Thales test LMKs, else a path to an LMK file."""
    if spec == "test":
        return thales_test_lmk()
    try:
        text = Path(spec).read_text(encoding="utf-8")
    except OSError as exc:
        raise LmkError(f"cannot read LMK file {spec}: {exc.strerror}") from None
    return parse_lmk_text(text)
