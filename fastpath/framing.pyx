"""Splitting a TCP byte stream into frames: [LEN 2][TPDU 5][HEADER 6][ISO].

Operations: ``feed(data)`` appends what a read returned; ``next_frame()``
returns one whole frame body (TPDU, header and ISO message, without LEN) or
None until one has fully arrived; ``frames()`` drains every complete one.

Goals: fast in the common case (one frame per read: one slice, no copy of
the rest), O(n) in the worst case whatever the peer does (data is consumed
by moving an offset; the buffer is compacted only when the consumed part
outweighs the rest, so a peer that trickles bytes cannot make it quadratic),
and bounded memory: a length over ``max_length`` is refused as soon as its
two bytes arrive, before any of the body is buffered.

Known weakness: a length error leaves the stream without frame boundaries;
there is no resynchronising, so the splitter stays failed and the caller
must close the connection (after answering, if it wants to, on a new frame).
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE

from fastpath.errors import FrameError

#: TPDU (5) + header (6) + MTI (2) + primary bitmap (8).
MIN_FRAME = 21
DEFAULT_MAX_FRAME = 2048


cdef class FrameSplitter:
    cdef bytearray buf
    cdef Py_ssize_t start
    cdef readonly int max_length
    cdef readonly int min_length
    cdef readonly object error

    def __init__(self, int max_length=DEFAULT_MAX_FRAME, int min_length=MIN_FRAME):
        if not 1 <= min_length <= max_length <= 0xFFFF:
            raise ValueError("need 1 <= min_length <= max_length <= 65535")
        self.buf = bytearray()
        self.start = 0
        self.max_length = max_length
        self.min_length = min_length
        self.error = None

    def __len__(self):
        """Bytes buffered and not yet returned as frames."""
        return PyByteArray_GET_SIZE(self.buf) - self.start

    def feed(self, data) -> None:
        if self.error is not None:
            raise self.error
        if self.start and self.start == PyByteArray_GET_SIZE(self.buf):
            # Everything consumed: restart the buffer instead of growing it.
            del self.buf[:]
            self.start = 0
        elif self.start > 4096 and self.start * 2 > PyByteArray_GET_SIZE(self.buf):
            del self.buf[: self.start]
            self.start = 0
        self.buf += data

    cpdef object next_frame(self):
        """One frame body (bytes), or None until a whole frame has arrived."""
        cdef Py_ssize_t avail = PyByteArray_GET_SIZE(self.buf) - self.start
        cdef const unsigned char *p
        cdef Py_ssize_t length
        if self.error is not None:
            raise self.error
        if avail < 2:
            return None
        p = <const unsigned char *>PyByteArray_AS_STRING(self.buf) + self.start
        length = (p[0] << 8) | p[1]
        if length > self.max_length or length < self.min_length:
            self.error = FrameError(
                f"frame length {length} outside {self.min_length}..{self.max_length}"
            )
            raise self.error
        if avail < 2 + length:
            return None
        frame = PyBytes_FromStringAndSize(<const char *>p + 2, length)
        self.start += 2 + length
        return frame

    def frames(self) -> list:
        """Every complete frame buffered now (possibly none)."""
        out = []
        while True:
            frame = self.next_frame()
            if frame is None:
                return out
            out.append(frame)


def frame(bytes body) -> bytes:
    """Prefix a frame body with its 2-byte big-endian length."""
    if len(body) > 0xFFFF:
        raise FrameError("frame body longer than 65535 bytes")
    return len(body).to_bytes(2, "big") + body
