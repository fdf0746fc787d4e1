"""Reading the fields of a host command (sans-I/O, shared by the server handlers).

Every read that runs past the end of the message or finds a character its
field type does not allow raises HsmError 15 (invalid input data), so a
malformed command always becomes a Thales error reply.
"""

from __future__ import annotations

import re

from hsm import errors
from hsm.errors import HsmError

_HEX_CHARS = b"0123456789ABCDEF"
_DIGIT_CHARS = b"0123456789"
_HEX = frozenset(_HEX_CHARS)
TRAILER_MARK = 0x19  # X'19' then up to 32 characters of trailer, echoed in the reply
MAX_TRAILER = 32

# A key field: tag -> number of hex digits after it (THALES.md §1, "Parse").
_KEY_TAGS = {ord("U"): 32, ord("T"): 48, ord("X"): 32, ord("Y"): 48, ord("Z"): 16}


class Reader:
    """A cursor over the fields of one command (the bytes after the command code)."""

    __slots__ = ("_data", "_end", "pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self._data = data
        self.pos = pos
        self._end = len(data)

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > self._end:
            raise HsmError(errors.INVALID_INPUT, "message too short")
        out = self._data[self.pos : end]
        self.pos = end
        return out

    def text(self, n: int) -> str:
        return self.take(n).decode("latin-1")

    # The character checks delete the allowed bytes and look for any left:
    # one C call instead of a set lookup per byte.

    def hex(self, n: int) -> str:
        raw = self.take(n)
        if raw.translate(None, _HEX_CHARS):
            raise HsmError(errors.INVALID_INPUT, "hex field")
        return raw.decode("ascii")

    def digits(self, n: int, code: str = errors.INVALID_INPUT) -> str:
        raw = self.take(n)
        if raw.translate(None, _DIGIT_CHARS):
            raise HsmError(code, "decimal field")
        return raw.decode("ascii")

    def peek(self) -> int | None:
        return self._data[self.pos] if self.pos < self._end else None

    def accept(self, char: str) -> bool:
        """Consume `char` if it is next (optional delimiters like ';')."""
        if self.pos < self._end and self._data[self.pos] == ord(char):
            self.pos += 1
            return True
        return False

    def key(self) -> str:
        """A key field: 16H, or a tag letter U/T/X/Y/Z followed by its hex digits."""
        first = self.peek()
        if first is None:
            raise HsmError(errors.INVALID_INPUT, "missing key")
        if first in _HEX:
            return self.hex(16)
        n = _KEY_TAGS.get(first)
        if n is None:
            raise HsmError(errors.INVALID_KEY_SCHEME, "key scheme tag")
        self.pos += 1
        return chr(first) + self.hex(n)

    def fixed(self, pattern: re.Pattern[bytes], size: int) -> str | None:
        """The next `size` bytes as text when `pattern` (of exactly that size) matches
        them, consumed; else None and nothing consumed. For a handler to read a
        common, well-formed run of fixed-width fields at once and slice it."""
        if pattern.match(self._data, self.pos, self._end) is None:
            return None
        pos = self.pos
        self.pos = pos + size
        return self._data[pos : pos + size].decode("latin-1")

    def remaining(self) -> int:
        return self._end - self.pos

    def rest_before_trailer(self) -> int:
        """Bytes left before an X'19' trailer, for fields sized by what remains."""
        idx = self._data.rfind(bytes((TRAILER_MARK,)), self.pos)
        if idx >= 0 and self._end - idx - 1 <= MAX_TRAILER:
            return idx - self.pos
        return self._end - self.pos

    def trailer(self) -> bytes:
        """Check that only an optional trailer remains; return it (with X'19') to echo."""
        if self.pos == self._end:
            return b""
        if self._data[self.pos] == TRAILER_MARK and self._end - self.pos - 1 <= MAX_TRAILER:
            return self._data[self.pos :]
        raise HsmError(errors.INVALID_INPUT, "unexpected data after the last field")
