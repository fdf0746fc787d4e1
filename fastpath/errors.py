"""The fast path's typed errors: each says what is wrong and where."""

from __future__ import annotations


class CodecError(ValueError):
    """Base of every error the fast path raises on bad input."""


class FrameError(CodecError):
    """The byte stream cannot be split into frames (a length out of bounds).

    The stream cannot be resynchronised after one: close the connection.
    """


class DecodeError(CodecError):
    """A frame whose ISO 8583 message is malformed.

    ``field`` is the field number (0 for the MTI, 1 for the bitmap, None for
    the frame as a whole), ``offset`` the byte offset in the decoded buffer
    where the problem was found. ``start`` is where what could be read ends:
    the first byte of the field that failed (every field before it decoded),
    or the end of the last field when bytes trail it; -1 when nothing past
    the bitmap was read. An answer can echo what lies before it.
    """

    def __init__(self, reason: str, field: int | None = None, offset: int = 0,
                 start: int = -1) -> None:  # fmt: skip
        self.reason = reason
        self.field = field
        self.offset = offset
        self.start = start
        where = f"field {field}" if field is not None else "message"
        super().__init__(f"{where} at offset {offset}: {reason}")


class EncodeError(CodecError):
    """A value that cannot be encoded into the named field."""

    def __init__(self, reason: str, field: int | None = None) -> None:
        self.reason = reason
        self.field = field
        where = f"field {field}" if field is not None else "message"
        super().__init__(f"{where}: {reason}")
