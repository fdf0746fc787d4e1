"""The software HSM without sockets: one request message in, one reply message out.

`HsmCore.handle` never raises: every malformed, unknown or failing command
becomes a Thales error reply, and an unexpected exception in a handler
becomes error 41 (internal error) with a log line that names the command
only (never its fields, which hold PIN blocks and keys).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from hsm import errors, handlers_keys, handlers_mac, handlers_pin
from hsm.context import HsmContext
from hsm.errors import HsmError
from hsm.fields import MAX_TRAILER, TRAILER_MARK, Reader

log = logging.getLogger("hsm.server")

Handler = Callable[[HsmContext, Reader], bytes]

COMMANDS: dict[bytes, Handler] = {
    b"NC": handlers_keys.nc,
    b"B2": handlers_keys.b2,
    b"A0": handlers_keys.a0,
    b"A6": handlers_keys.a6,
    b"A8": handlers_keys.a8,
    b"BU": handlers_keys.bu,
    b"BA": handlers_pin.ba,
    b"CA": handlers_pin.ca,
    b"CC": handlers_pin.cc,
    b"DC": handlers_pin.dc,
    b"EC": handlers_pin.ec,
    b"DG": handlers_pin.dg,
    b"JE": handlers_pin.je,
    b"JG": handlers_pin.jg,
    b"M6": handlers_mac.m6,
    b"M8": handlers_mac.m8,
}


def reply_code(command: bytes) -> bytes:
    """The command code with its second character advanced by one (NC -> ND)."""
    return command[:1] + bytes(((command[1] + 1) & 0xFF,))


# The reply codes of the known commands, made once rather than per request.
_REPLY_CODES = {command: reply_code(command) for command in COMMANDS}


#: Commands whose fields may hold any byte (B2's data, M6/M8's binary message).
BINARY_DATA = frozenset({b"B2", b"M6", b"M8"})


def _trailer_of(message: bytes, start: int, command: bytes) -> bytes:
    """The trailer an error reply echoes: X'19' and at most 32 characters at the end.

    A failed request was not parsed to its end, so where its trailer starts
    is known only when no field can hold an X'19': every field is printable
    except in BINARY_DATA commands, whose error replies carry no trailer
    rather than one cut from the data (echoed "only if sent", THALES.md §1).
    """
    if command in BINARY_DATA:
        return b""
    idx = message.rfind(bytes((TRAILER_MARK,)), start)
    if idx >= 0 and len(message) - idx - 1 <= MAX_TRAILER:
        return message[idx:]
    return b""


class HsmCore:
    def __init__(self, ctx: HsmContext, header_len: int = 4) -> None:
        self.ctx = ctx
        self.header_len = header_len

    def handle(self, message: bytes) -> bytes:
        """The reply message (without length prefix) to one request message."""
        hl = self.header_len
        header = message[:hl]
        command = message[hl : hl + 2]
        if len(command) < 2:
            # Too short to hold a command code: answer something the host can
            # log rather than nothing, keeping whatever header there was.
            return header + b"ZZ" + errors.INVALID_INPUT.encode()
        handler = COMMANDS.get(command)
        code = _REPLY_CODES.get(command) or reply_code(command)
        if handler is None:
            return header + code + errors.UNKNOWN_COMMAND.encode()
        reader = Reader(message, hl + 2)
        try:
            body = handler(self.ctx, reader)
            trailer = reader.trailer()
        except HsmError as exc:
            return header + code + exc.code.encode() + _trailer_of(message, hl + 2, command)
        except Exception:
            log.exception("internal error in command %s", command.decode("latin-1"))
            trailer = _trailer_of(message, hl + 2, command)
            return header + code + errors.INTERNAL_ERROR.encode() + trailer
        return header + code + body + trailer
