"""M6 generate MAC and M8 verify MAC (payShield 9000+ layout, THALES.md §5).

Modes: 0 a whole message; 1 first, 2 middle, 3 final block of a message
split over several commands. Modes 1 and 2 return the 16H chaining value
the next command passes back as its IV; they need whole 8-byte blocks.
"""

from __future__ import annotations

import binascii
import hmac

from hsm import errors
from hsm.context import HsmContext
from hsm.crypto import mac_chain, mac_finish, pad
from hsm.errors import HsmError
from hsm.fields import Reader
from hsm.lmk import TAK, ZAK

MAC_KEY_TYPES = {"003": TAK, "008": ZAK}
MAX_MESSAGE = 8192  # bytes of message per command, as payShield's limit for M6


def _mac(ctx: HsmContext, r: Reader, verify: bool = False) -> tuple[str, int, str]:
    """Read an M6/M8 request up to its message; return (MAC hex, MAC size in H, mode).

    `verify`: an M8, whose final block is followed by the MAC to check.
    """
    mode = r.text(1)
    if mode not in ("0", "1", "2", "3"):
        raise HsmError(errors.INVALID_MODE, "mode flag")
    in_fmt = r.text(1)
    if in_fmt not in ("0", "1", "2"):
        raise HsmError(errors.INVALID_INPUT_FORMAT, "input format")
    size = r.text(1)
    if size not in ("0", "1"):
        raise HsmError(errors.INVALID_INPUT, "MAC size")
    algorithm = r.text(1)
    if algorithm not in ("1", "3"):
        raise HsmError(errors.INVALID_KEY_TYPE_CODE, "MAC algorithm")
    padding = r.text(1)
    if padding not in ("0", "1", "2"):
        raise HsmError(errors.INVALID_PADDING, "padding method")
    kt = MAC_KEY_TYPES.get(r.text(3))
    if kt is None:
        raise HsmError(errors.INVALID_KEY_LENGTH_FLAG, "MAC key type")
    key = ctx.key_under_lmk(kt, r.key(), errors.SOURCE_KEY_PARITY)
    iv = bytes(8)
    if mode in ("2", "3"):
        iv = bytes.fromhex(r.hex(16))
    length = int(r.hex(4), 16)
    if length > 2 * MAX_MESSAGE or (in_fmt != "1" and length > MAX_MESSAGE):
        raise HsmError(errors.INVALID_MESSAGE_LENGTH, "message length")
    final = mode in ("0", "3")
    # A length beyond the data is error 06 (THALES.md §5), as is one too long
    # to accept; an M8's final block leaves room for the MAC after it.
    after = (8 if size == "0" else 16) if verify and final else 0
    if length > r.remaining() - after:
        raise HsmError(errors.INVALID_MESSAGE_LENGTH, "message length beyond the data")
    data = r.take(length)
    if in_fmt == "1":
        try:
            data = binascii.unhexlify(data)
        except (binascii.Error, ValueError):
            raise HsmError(errors.INVALID_INPUT, "hex-encoded message") from None
    if final:
        data = pad(data, int(padding))
    if len(data) % 8 or (final and not data):
        raise HsmError(errors.INVALID_MESSAGE_LENGTH, "message is not whole blocks")
    alg = int(algorithm)
    state = mac_chain(key, alg, iv, data)
    if not final:
        return state.hex().upper(), 16, mode
    mac = mac_finish(key, alg, state).hex().upper()
    width = 8 if size == "0" else 16
    return mac[:width], width, mode


def m6(ctx: HsmContext, r: Reader) -> bytes:
    mac, _, _ = _mac(ctx, r)
    return b"00" + mac.encode()


def m8(ctx: HsmContext, r: Reader) -> bytes:
    mac, width, mode = _mac(ctx, r, verify=True)
    if mode in ("1", "2"):
        return b"00" + mac.encode()  # not final yet: hand back the chaining value
    given = r.hex(width)
    return b"00" if hmac.compare_digest(given, mac) else b"01"
