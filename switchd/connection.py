"""One terminal connection: read frames, answer each in order, coalesce writes.

A connection is one task. It reads what the socket has, splits it into
frames, processes up to ``max_inflight_frames`` of them one after the other
(a terminal expects answers in request order) and sends all their answers
in one write. Frames beyond the cap stay in the splitter and are processed
before the next read, so a client that pipelines a flood is slowed to the
pace of its answers instead of growing our buffers.

Timeouts: a connection with no partial frame buffered may stay idle for
``idle_timeout_s``; one that has started a frame must finish it within
``frame_timeout_s`` (a stalled or slowloris client cannot pin memory); a
write must complete within ``WRITE_TIMEOUT_S`` (a client that stops reading
is dropped rather than blocking its task forever).

The read timeouts are kept by the listeners' sweeper (listener.py), not by a
deadline per read: while a connection waits for data it is listed in
``owner.reading`` with the time it may wait until, and the sweeper cancels
the connection's scope past it. A trio deadline per read cost a cancel
scope and two heap operations on every request, and the stale heap entries
a periodic prune (about a tenth of the switch's scheduling time at 1,000
terminals); the price is a timeout accurate to the sweep interval.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable

import trio

from fastpath.errors import FrameError
from fastpath.framing import FrameSplitter
from switchd import metrics
from switchd.listener import Listeners

log = logging.getLogger("switchd.connection")

#: Longest a response write may take before the peer is deemed gone.
WRITE_TIMEOUT_S = 10.0
#: Bytes asked of the kernel per read: dozens of frames, bounded memory.
READ_SIZE = 65536

FrameHandler = Callable[[bytes], Awaitable[bytes | None]]


def connection_handler(
    handle_frame: FrameHandler,
) -> Callable[[trio.SocketStream, Listeners], Awaitable[None]]:
    """A Listeners handler that runs ``handle_frame`` on each frame body."""

    async def serve(stream: trio.SocketStream, owner: Listeners) -> None:
        cfg = owner.cfg.terminals
        splitter = FrameSplitter(max_length=cfg.max_frame)
        out = bytearray()
        peer = _peer(stream)
        fd = stream.socket.fileno()
        reading = owner.reading
        # Cancelled only by the sweeper or a drain, and only while listed in
        # `reading`, that is while waiting for bytes: never mid-transaction.
        with trio.CancelScope() as waiting:
            while not owner.draining:
                timeout = cfg.frame_timeout_s if len(splitter) else cfg.idle_timeout_s
                reading[waiting] = trio.current_time() + timeout
                try:
                    data = await _receive(fd)
                finally:
                    del reading[waiting]
                if not data:
                    return
                splitter.feed(data)
                if not await _answer(stream, splitter, out, handle_frame, cfg.max_inflight_frames,
                                     peer):  # fmt: skip
                    return
        if waiting.cancelled_caught and not owner.draining:
            reason = "stalled mid-frame" if len(splitter) else "idle"
            metrics.FRAMES_REJECTED.labels("timeout" if len(splitter) else "idle").inc()
            log.info("closing connection from %s: %s", peer, reason)

    return serve


async def _answer(
    stream: trio.SocketStream, splitter: FrameSplitter, out: bytearray,
    handle_frame: FrameHandler, max_inflight: int, peer: str,
) -> bool:
    """Answer every whole frame buffered, in order; False when the connection must close.

    A frame with an impossible length ends the connection (nothing after it
    can be framed), but the whole frames before it are answered first.
    """
    while True:
        batch, error = _take(splitter, max_inflight)
        for body in batch:
            answer = await handle_frame(body)
            if answer:
                out += answer
        if error is not None:
            metrics.FRAMES_REJECTED.labels("length").inc()
            log.warning("closing connection from %s: %s", peer, error)
            await _flush(stream, out, peer)
            return False
        if not batch:
            return True
        if not await _flush(stream, out, peer):
            return False


async def _receive(fd: int) -> bytes:
    """The bytes the socket has, once it has any; b"" when the peer is gone.

    Waits first, then reads once. trio's receive_some reads first and waits
    only on EAGAIN, the right order for a stream that usually has data; a
    terminal's next request comes only after it has read our answer, so that
    first read nearly always failed: a wasted system call and a raised
    BlockingIOError per request, under an async context manager.
    """
    while True:
        try:
            await trio.lowlevel.wait_readable(fd)
        except trio.ClosedResourceError:
            return b""  # the socket was closed under us (shutdown)
        try:
            return os.read(fd, READ_SIZE)
        except BlockingIOError:
            continue  # a spurious wake-up: nothing to read after all
        except OSError:
            return b""  # ECONNRESET and the like: the peer is gone


def _take(splitter: FrameSplitter, n: int) -> tuple[list[bytes], FrameError | None]:
    """Up to n whole frames, and the framing error that stopped the taking, if one did."""
    batch: list[bytes] = []
    while len(batch) < n:
        try:
            body = splitter.next_frame()
        except FrameError as exc:
            return batch, exc
        if body is None:
            break
        batch.append(body)
    return batch, None


async def _flush(stream: trio.SocketStream, out: bytearray, peer: str) -> bool:
    """Send what is buffered in one write; False when the peer is gone.

    First one plain write(2) on the socket, which is non-blocking: with a
    terminal that reads its answers the kernel takes the whole buffer at once,
    and that costs one system call instead of trio's send_all (a conflict
    detector, a memoryview, a checkpoint) inside a deadline scope (a heap
    entry pushed and popped): measured, 6 % less switch CPU per sale (5,000
    terminals at 1,900 sales/s). Only what the kernel would not take goes
    through send_all, under the write timeout.
    """
    if not out:
        return True
    try:
        sent = os.write(stream.socket.fileno(), out)
    except BlockingIOError:
        sent = 0
    except OSError:
        # EPIPE, ECONNRESET, or a socket already closed (EBADF): peer gone.
        out.clear()
        return False
    if sent == len(out):
        out.clear()
        return True
    rest = bytes(out[sent:])
    out.clear()
    with trio.CancelScope(deadline=trio.current_time() + WRITE_TIMEOUT_S) as scope:
        try:
            await stream.send_all(rest)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
    if scope.cancelled_caught:
        metrics.FRAMES_REJECTED.labels("write_timeout").inc()
        log.warning("closing connection from %s: not reading its answers (%d bytes unsent"
                    " after %.0f s)", peer, len(rest), WRITE_TIMEOUT_S)  # fmt: skip
        return False
    return True


def _peer(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return "?"
    return f"{host}:{port}"
