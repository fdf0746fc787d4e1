"""Sans-I/O framing of the Thales host port: a 2-byte big-endian length, then the message.

`FrameSplitter` is fed whatever the socket returned (half a frame, or fifty
frames coalesced) and hands back complete messages; like h11's receive
buffer, `next_frame` returns nothing until a whole unit has arrived.

Goal: O(n) in the bytes received whatever the peer does. The buffer is a
bytearray consumed from an offset and compacted only once the consumed part
is at least half of it, so a peer trickling one byte at a time or sending
thousands of tiny frames in one segment costs linear time, never quadratic.

Known limit: a length above `max_frame` cannot be resynchronised (the stream
has no delimiter), so it raises `FrameTooLarge` and the owner must close the
connection.
"""

from __future__ import annotations

# payShield messages are at most a few kilobytes (the largest here is an M6
# with up to 8 KiB of hex data); a larger length means a peer that is not
# speaking this protocol.
DEFAULT_MAX_FRAME = 32 * 1024


class FrameTooLarge(Exception):
    """The peer announced a frame longer than allowed; the stream is unusable."""

    def __init__(self, length: int) -> None:
        super().__init__(f"frame length {length} exceeds the limit")
        self.length = length


def encode_frame(message: bytes) -> bytes:
    """Prefix `message` with its 2-byte big-endian length."""
    if len(message) > 0xFFFF:
        raise ValueError("message longer than 65535 bytes")
    return len(message).to_bytes(2, "big") + message


class FrameSplitter:
    """Collects bytes and yields complete frames (without their length prefix)."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._max = max_frame

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next_frame(self) -> bytes | None:
        """The next complete frame, or None until more bytes arrive."""
        buf, pos = self._buf, self._pos
        if len(buf) - pos < 2:
            self._compact()
            return None
        length = (buf[pos] << 8) | buf[pos + 1]
        if length > self._max:
            raise FrameTooLarge(length)
        end = pos + 2 + length
        if len(buf) < end:
            self._compact()
            return None
        frame = bytes(buf[pos + 2 : end])
        self._pos = end
        return frame

    def frames(self) -> list[bytes]:
        """Every complete frame now buffered."""
        out: list[bytes] = []
        while (frame := self.next_frame()) is not None:
            out.append(frame)
        return out

    def _compact(self) -> None:
        if self._pos and self._pos * 2 >= len(self._buf):
            del self._buf[: self._pos]
            self._pos = 0

    @property
    def pending(self) -> int:
        """Bytes received but not yet returned as a frame."""
        return len(self._buf) - self._pos
