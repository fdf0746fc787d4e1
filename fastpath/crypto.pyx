"""DES/3DES keys, the CUP POS MAC, ANSI X9.9/X9.19 MACs, PIN blocks, KCVs.

The DES itself is C (des.h); a :class:`DesKey` holds its key schedule, so a
session builds one per working key at sign-on and every MAC after that does
no key work. Keys are 8 (single DES), 16 (2-key 3DES) or 24 bytes (3-key).
"""

from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memcpy

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE

cdef const char *HEX_UPPER = b"0123456789ABCDEF"


class CryptoError(ValueError):
    """A key, block or PIN argument of the wrong shape."""


cdef class DesKey:
    """A DES (8-byte) or triple-DES (16/24-byte) key with its schedule."""

    def __cinit__(self, key):
        cdef const uint8_t[::1] view = key
        cdef Py_ssize_t n = view.shape[0]
        if n != 8 and n != 16 and n != 24:
            raise CryptoError(f"a DES key is 8, 16 or 24 bytes, not {n}")
        tdes_setup(&self.key, &view[0], <int>n)
        self.length = <int>n

    def __repr__(self):
        # Never the key itself: keys must not reach logs.
        return f"<DesKey {self.length * 8}-bit>"

    def encrypt(self, data) -> bytes:
        """ECB-encrypt a whole number of 8-byte blocks."""
        return _ecb(self, data, False)

    def decrypt(self, data) -> bytes:
        """ECB-decrypt a whole number of 8-byte blocks."""
        return _ecb(self, data, True)


cdef bytes _ecb(DesKey self, data, bint decrypt):
    # bytes (every caller in practice) are read in place: taking a typed
    # memoryview of them costs more than a 3DES block. Other buffers
    # (bytearray, memoryview) still go through the view.
    cdef const uint8_t[::1] view
    cdef const uint8_t *p
    cdef Py_ssize_t n
    if type(data) is bytes:
        p = <const uint8_t *>PyBytes_AS_STRING(data)
        n = PyBytes_GET_SIZE(data)
        return _ecb_raw(self, p, n, decrypt)
    view = data
    n = view.shape[0]
    return _ecb_raw(self, &view[0] if n else <const uint8_t *>b"", n, decrypt)


cdef bytes _ecb_raw(DesKey self, const uint8_t *p, Py_ssize_t n, bint decrypt):
    cdef Py_ssize_t i
    if n % 8:
        raise CryptoError(f"ECB input must be a multiple of 8 bytes, not {n}")
    out = PyBytes_FromStringAndSize(NULL, n)
    cdef uint8_t *o = <uint8_t *>PyBytes_AS_STRING(out)
    for i in range(0, n, 8):
        if decrypt:
            des_store64(o + i, tdes_decrypt64(&self.key, des_load64(p + i)))
        else:
            des_store64(o + i, tdes_encrypt64(&self.key, des_load64(p + i)))
    return out


cdef inline uint64_t _xor_blocks(const uint8_t *data, Py_ssize_t n) noexcept nogil:
    """XOR of all 8-byte blocks, the last one padded with 00."""
    cdef uint64_t r = 0
    cdef uint8_t last[8]
    cdef Py_ssize_t i = 0
    while i + 8 <= n:
        r ^= des_load64(data + i)
        i += 8
    if i < n:
        for j in range(8):
            last[j] = 0
        memcpy(last, data + i, n - i)
        r ^= des_load64(last)
    return r


cdef uint64_t cup_mac_raw(DesKey key, const uint8_t *data, Py_ssize_t n) noexcept nogil:
    """The CUP "ECB" POS MAC of PROTOCOL.md §5 as 8 ASCII hex chars packed in 64 bits.

    R = XOR of the blocks; H1, H2 = the upper-case hex of R's halves;
    E2 = E(E(H1) ^ H2); the MAC is the first 8 hex characters of E2.
    """
    cdef uint64_t r = _xor_blocks(data, n), e
    cdef uint8_t hexr[16]
    cdef uint8_t out[8]
    cdef int i
    for i in range(8):
        hexr[2 * i] = HEX_UPPER[(r >> (60 - 8 * i)) & 15]
        hexr[2 * i + 1] = HEX_UPPER[(r >> (56 - 8 * i)) & 15]
    e = tdes_encrypt64(&key.key, des_load64(hexr))
    e = tdes_encrypt64(&key.key, e ^ des_load64(hexr + 8))
    for i in range(4):
        out[2 * i] = HEX_UPPER[(e >> (60 - 8 * i)) & 15]
        out[2 * i + 1] = HEX_UPPER[(e >> (56 - 8 * i)) & 15]
    return des_load64(out)


def cup_mac(DesKey key not None, data) -> bytes:
    """F64 for a MAB (MTI through field 63): 8 ASCII upper-case hex characters."""
    cdef const uint8_t[::1] view = data
    cdef uint8_t out[8]
    cdef const uint8_t *p = &view[0] if view.shape[0] else <const uint8_t *>b""
    des_store64(out, cup_mac_raw(key, p, view.shape[0]))
    return PyBytes_FromStringAndSize(<char *>out, 8)


cdef uint64_t _cbc_mac(DesKey key, const uint8_t[::1] view) noexcept:
    """Single-key CBC-MAC with zero padding (ISO 9797-1 method 1)."""
    cdef Py_ssize_t n = view.shape[0], i = 0
    cdef uint64_t state = 0
    cdef uint8_t last[8]
    while i + 8 <= n:
        state = tdes_encrypt64(&key.key, state ^ des_load64(&view[i]))
        i += 8
    if i < n or n == 0:
        for j in range(8):
            last[j] = 0
        if i < n:
            memcpy(last, &view[i], n - i)
        state = tdes_encrypt64(&key.key, state ^ des_load64(last))
    return state


def x99_mac(DesKey key not None, data) -> bytes:
    """ANSI X9.9 CBC-MAC (ISO 9797-1 algorithm 1) with zero padding, 8 bytes."""
    cdef uint8_t out[8]
    des_store64(out, _cbc_mac(key, data))
    return PyBytes_FromStringAndSize(<char *>out, 8)


def x919_mac(key, data) -> bytes:
    """ANSI X9.19 retail MAC (ISO 9797-1 algorithm 3), zero padding, 8 bytes.

    Single-DES CBC under the left half, then decrypt under the right half
    and encrypt under the left half again on the last block only.
    """
    cdef const uint8_t[::1] k = key
    if k.shape[0] != 16:
        raise CryptoError(f"an X9.19 MAC key is 16 bytes, not {k.shape[0]}")
    cdef DesKey left = DesKey(bytes(k[:8])), right = DesKey(bytes(k[8:]))
    cdef uint64_t state = _cbc_mac(left, data)
    state = tdes_encrypt64(&left.key, tdes_decrypt64(&right.key, state))
    cdef uint8_t out[8]
    des_store64(out, state)
    return PyBytes_FromStringAndSize(<char *>out, 8)


def key_check_value(key, int length=8) -> bytes:
    """E_key(8 zero bytes), truncated: CUP F62 carries 4 bytes, Thales 3 or 8."""
    if not 1 <= length <= 8:
        raise CryptoError("a check value is 1 to 8 bytes")
    return DesKey(key).encrypt(bytes(8))[:length]


def decrypt_working_key(tmk, ciphertext) -> bytes:
    """Recover a working key that arrived under the TMK (3DES-ECB)."""
    return DesKey(tmk).decrypt(ciphertext)


def encrypt_working_key(tmk, clear) -> bytes:
    """Put a working key under the TMK (3DES-ECB), as the host does in F62."""
    return DesKey(tmk).encrypt(clear)


def _pan_block(str pan) -> bytes:
    if not (13 <= len(pan) <= 19 and pan.isdigit() and pan.isascii()):
        raise CryptoError("a PAN is 13 to 19 digits")
    # ISO 9564 format 0: the 12 rightmost digits excluding the check digit.
    n = len(pan)
    return bytes.fromhex("0000" + pan[n - 13 : n - 1])


def pin_block_format0(str pin, str pan) -> bytes:
    """The clear ISO 9564 format 0 block: 0L PIN F..F XOR 0000 PAN12.

    For tests and the terminal simulator only: the switch never sees a PIN.
    """
    if not (4 <= len(pin) <= 12 and pin.isdigit() and pin.isascii()):
        raise CryptoError("a PIN is 4 to 12 digits")
    field = bytes.fromhex(f"{len(pin):02X}{pin}".ljust(16, "F"))
    return bytes(a ^ b for a, b in zip(field, _pan_block(pan), strict=True))


def parse_pin_block_format0(block, str pan) -> str:
    """The PIN in a clear format 0 block; CryptoError if it is not one."""
    if len(block) != 8:
        raise CryptoError("a PIN block is 8 bytes")
    field = bytes(a ^ b for a, b in zip(block, _pan_block(pan), strict=True)).hex().upper()
    n = int(field[1], 16)
    if field[0] != "0" or not 4 <= n <= 12:
        raise CryptoError("not a format 0 PIN block")
    pin, pad = field[2 : 2 + n], field[2 + n :]
    if not pin.isdigit() or pad != "F" * len(pad):
        raise CryptoError("not a format 0 PIN block")
    return pin


def encrypt_pin_block(pik, str pin, str pan) -> bytes:
    """A format 0 PIN block under the PIK (bytes, or a DesKey to skip the key
    schedule), as a terminal's PIN pad sends it."""
    cdef DesKey key = pik if isinstance(pik, DesKey) else DesKey(pik)
    return key.encrypt(pin_block_format0(pin, pan))
