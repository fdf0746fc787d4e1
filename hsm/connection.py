"""One pipelined client connection to an HSM.

Many callers share a connection: each request gets a unique header, its
frame goes into an outbox that a writer task flushes in one send (so
concurrent callers coalesce into few syscalls), and a reader task routes
each reply to its caller by the echoed header.

A reply that cannot be trusted (unknown header, reply code that does not
answer the command, a frame longer than allowed) means the stream is out of
step: the connection closes and every request still waiting on it fails with
`HsmLinkError`, which the pool retries on another HSM.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from hsm.codec import HsmProtocolError, expected_reply_code
from hsm.framing import DEFAULT_MAX_FRAME, FrameSplitter, FrameTooLarge, encode_frame

log = logging.getLogger("hsm.client")

_HEADER_ALPHABET = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
RECEIVE_SIZE = 65536
_MAX_EXPIRED = 4096


class HsmLinkError(Exception):
    """The connection failed before the reply arrived (safe to retry elsewhere)."""


class HsmTimeout(Exception):
    """No reply within the command's timeout."""


class _Slot:
    __slots__ = ("error", "event", "expect", "reply")

    def __init__(self, expect: bytes) -> None:
        self.event = trio.Event()
        self.expect = expect
        self.reply: bytes = b""
        self.error: Exception | None = None


class HsmConnection:
    def __init__(
        self,
        stream: trio.abc.Stream,
        header_len: int,
        name: str,
        on_close: Callable[[HsmConnection, str], None] | None = None,
        max_frame: int = DEFAULT_MAX_FRAME,
    ) -> None:
        if header_len < 1:
            raise ValueError("pipelining needs a message header of at least 1 character")
        self._stream = stream
        self._hl = header_len
        self.name = name
        self._on_close = on_close
        self._max_frame = max_frame
        self._pending: dict[bytes, _Slot] = {}
        # Headers of requests that timed out: their late replies are dropped
        # quietly instead of being taken for a protocol error.
        self._expired: set[bytes] = set()
        self._outbox: list[bytes] = []
        self._wake = trio.Event()
        self._counter = 0
        self._space = len(_HEADER_ALPHABET) ** header_len
        self.closed = False
        self._cancel: trio.CancelScope | None = None
        self._reason = "closed"

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def _next_header(self) -> bytes:
        for _ in range(self._space):
            n = self._counter
            self._counter = (n + 1) % self._space
            digits = bytearray()
            for _ in range(self._hl):
                n, d = divmod(n, len(_HEADER_ALPHABET))
                digits.append(_HEADER_ALPHABET[d])
            header = bytes(digits)
            if header not in self._pending and header not in self._expired:
                return header
        raise HsmLinkError("no free message header")  # more in flight than headers

    async def request(self, body: bytes, timeout: float) -> bytes:
        """Send `body` (command code + fields); return the reply after the header."""
        if self.closed:
            raise HsmLinkError(f"connection to {self.name} is closed")
        header = self._next_header()
        slot = _Slot(expected_reply_code(body[:2]))
        self._pending[header] = slot
        self._outbox.append(encode_frame(header + body))
        self._wake.set()
        try:
            with trio.CancelScope(deadline=trio.current_time() + timeout):
                await slot.event.wait()
        finally:
            # Timed out, or the caller was cancelled: forget the request, but
            # remember its header so that its late reply is not an error.
            if not slot.event.is_set() and self._pending.pop(header, None) is not None:
                if len(self._expired) >= _MAX_EXPIRED:
                    self._expired.clear()  # very late replies then count as errors
                self._expired.add(header)
        if not slot.event.is_set():
            raise HsmTimeout(f"{body[:2].decode('latin-1')} to {self.name} timed out")
        if slot.error is not None:
            raise slot.error
        return slot.reply

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the reader and writer until the link fails or the caller cancels.

        Never raises except Cancelled, so a failing link cannot take down
        the nursery it runs in; the reason goes to `on_close`.
        """
        self._reason = "closed"
        try:
            async with self._stream, trio.open_nursery() as nursery:
                self._cancel = nursery.cancel_scope
                nursery.start_soon(self._guard, self._writer)
                nursery.start_soon(self._guard, self._reader)
                task_status.started()
        finally:
            self._shutdown(self._reason)

    async def _guard(self, loop: Callable[[], Awaitable[None]]) -> None:
        # Each of reader and writer records why it stopped and stops the
        # other; nothing but Cancelled leaves the nursery, so no exception
        # group has to be unpicked.
        try:
            await loop()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._reason = f"link failed: {type(exc).__name__}"
        except HsmProtocolError as exc:
            self._reason = f"protocol error: {exc}"
            log.warning("dropping HSM connection to %s: %s", self.name, exc)
        except HsmLinkError as exc:
            self._reason = str(exc)
        except Exception:
            self._reason = "internal error"
            log.exception("HSM connection to %s failed", self.name)
        if self._cancel is not None:
            self._cancel.cancel()

    def close(self) -> None:
        if self._cancel is not None:
            self._cancel.cancel()
        self._shutdown("closed by the pool")

    def _shutdown(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        error = HsmLinkError(f"connection to {self.name}: {reason}")
        for slot in self._pending.values():
            slot.error = error
            slot.event.set()
        self._pending.clear()
        if self._on_close is not None:
            self._on_close(self, reason)

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            data = b"".join(self._outbox)
            self._outbox.clear()
            await self._stream.send_all(data)

    async def _reader(self) -> None:
        splitter = FrameSplitter(self._max_frame)
        hl = self._hl
        pending = self._pending
        while True:
            data = await self._stream.receive_some(RECEIVE_SIZE)
            if not data:
                raise HsmLinkError(f"{self.name} closed the connection")
            splitter.feed(data)
            try:
                frames = splitter.frames()
            except FrameTooLarge as exc:
                raise HsmProtocolError(str(exc)) from None
            for frame in frames:
                header = frame[:hl]
                slot = pending.pop(header, None)
                if slot is None:
                    if header in self._expired:
                        self._expired.discard(header)
                        continue
                    raise HsmProtocolError(f"reply with unknown header {header!r}")
                self._expired.discard(header)
                body = frame[hl:]
                if body[:2] != slot.expect:
                    # Put it back so _shutdown fails it along with the rest.
                    pending[header] = slot
                    raise HsmProtocolError(f"reply code {body[:2]!r}, expected {slot.expect!r}")
                slot.reply = body
                slot.event.set()
