"""A Python child process for blocking database work, reached over a socket pair.

The switch serves terminals on one event loop, and in one process every
thread shares its GIL: a writer thread (the ledger's, the journal's) waits
for the GIL after each database call while the loop is busy, and its Python
work is taken from the terminals'. A writer in a child process has a GIL of
its own. This module holds what such writers share: spawning the child,
framing, and the child's serving loop.

Frames both ways are a 4-byte big-endian length and a body. The parent's
first frame is the child's start-up message (configuration; it may hold a
DSN with a password, so it never goes on the command line); the child
answers ``ready`` once its database is open, then answers each request
frame with one reply frame, in order. The child ignores SIGINT/SIGTERM (a
Ctrl-C on the terminal reaches the whole process group, and a commit must
not be cut short): it leaves when its socket closes, that is when the parent
closes it or dies.

Error handling: a lost child (killed, crashed) shows as ``ChildLost`` on the
parent's side; what to do with the request in flight is the caller's policy.
"""

from __future__ import annotations

import logging
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Callable

import trio

log = logging.getLogger("switchd.childproc")

_LEN = struct.Struct(">I")
READY = b"ready"
#: How long a new child may take to import, open its database and run migrations.
START_TIMEOUT_S = 60.0


class ChildLost(Exception):
    """The child died, closed its socket, or did not start."""


class Child:
    """The parent's end of one child.

    ``call`` is one request and its reply. A caller that pipelines uses
    ``send`` and ``receive`` itself: the child answers in request order, and
    the caller must make sure only one task receives at a time.
    """

    def __init__(self, module: str, name: str) -> None:
        # `module` must define `child_main(fd: int) -> int` (see `serve`).
        self._code = (
            f"import sys; from {module} import child_main; sys.exit(child_main(int(sys.argv[1])))"
        )
        self.name = name
        self._proc: trio.Process | None = None
        self._stream: trio.SocketStream | None = None
        self._buf = bytearray()

    @property
    def running(self) -> bool:
        return self._stream is not None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self, hello: bytes) -> None:
        parent, child = socket.socketpair()
        try:
            self._proc = await trio.lowlevel.open_process(
                [sys.executable, "-c", self._code, str(child.fileno())],
                pass_fds=(child.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        self._stream = trio.SocketStream(trio.socket.from_stdlib_socket(parent))
        self._buf.clear()
        try:
            with trio.fail_after(START_TIMEOUT_S):
                ready = await self.call(hello)
            if ready != READY:
                raise ChildLost(f"{self.name} did not start: {ready.decode(errors='replace')}")
        except BaseException as exc:
            # No half-started child is left behind: one that answered late
            # would have its READY taken for the reply to the next request.
            with trio.CancelScope(shield=True):
                await self.reap()
            if isinstance(exc, trio.TooSlowError):
                raise ChildLost(f"{self.name} did not start in {START_TIMEOUT_S:.0f} s") from None
            raise

    async def call(self, body: bytes) -> bytes:
        """Send one request frame; its reply frame."""
        await self.send(body)
        return await self.receive()

    async def send(self, body: bytes) -> None:
        """Send one request frame without waiting for its reply."""
        if self._stream is None:
            raise ChildLost(f"{self.name} is not running")
        try:
            await self._stream.send_all(_LEN.pack(len(body)) + body)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ChildLost(f"{self.name}: {exc}") from exc

    async def receive(self) -> bytes:
        """The next reply frame."""
        if self._stream is None:
            raise ChildLost(f"{self.name} is not running")
        try:
            return await self._receive(self._stream)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ChildLost(f"{self.name}: {exc}") from exc

    async def _receive(self, stream: trio.SocketStream) -> bytes:
        buf = self._buf
        while True:
            if len(buf) >= 4:
                (n,) = _LEN.unpack_from(buf)
                if len(buf) >= 4 + n:
                    body = bytes(buf[4 : 4 + n])
                    del buf[: 4 + n]
                    return body
            data = await stream.receive_some(1 << 20)
            if not data:
                raise ChildLost(f"{self.name} closed its socket")
            buf += data

    async def reap(self) -> int | None:
        """Forget a broken child: kill it if it still runs; its exit code."""
        if self._stream is not None:
            await self._stream.aclose()
            self._stream = None
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.returncode is None:
            proc.kill()
        return await proc.wait()

    async def aclose(self) -> None:
        """Close the socket (the child finishes and exits) and wait for it."""
        if self._stream is not None:
            await self._stream.aclose()
            self._stream = None
        proc, self._proc = self._proc, None
        if proc is not None:
            with trio.move_on_after(10) as waited:
                await proc.wait()
            if waited.cancelled_caught:
                log.error("%s did not exit; killing it", self.name)
                proc.kill()
                await proc.wait()


# --- the child's side ----------------------------------------------------------


def _read_exact(sock: socket.socket, n: int) -> bytes | None:
    chunks = []
    while n:
        data = sock.recv(min(n, 1 << 20))
        if not data:
            return None
        chunks.append(data)
        n -= len(data)
    return b"".join(chunks)


def _read_frame(sock: socket.socket) -> bytes | None:
    head = _read_exact(sock, 4)
    if head is None:
        return None
    return _read_exact(sock, _LEN.unpack(head)[0])


def _write_frame(sock: socket.socket, body: bytes) -> None:
    sock.sendall(_LEN.pack(len(body)) + body)


class Handler:
    """What a child does: ``open`` from the start-up message, then ``handle`` each
    request (its reply), then ``close``."""

    def handle(self, body: bytes) -> bytes:
        raise NotImplementedError

    def close(self) -> None:
        pass


def serve(fd: int, name: str, open_handler: Callable[[bytes], Handler]) -> int:
    """The child's main loop; its exit code."""
    # The parent decides when this process ends (by closing the socket).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sock = socket.socket(fileno=fd)
    sock.setblocking(True)
    hello = _read_frame(sock)
    if hello is None:
        return 0
    try:
        handler = open_handler(hello)
    except Exception as exc:
        log.exception("%s: cannot start", name)
        _write_frame(sock, f"{type(exc).__name__}: {exc}".encode())
        return 1
    try:
        _write_frame(sock, READY)
        while (frame := _read_frame(sock)) is not None:
            _write_frame(sock, handler.handle(frame))
    except OSError as exc:
        # The parent went away (killed) with a request in flight: what the
        # request committed stays committed; the parent's next child is told
        # by the ids.
        log.warning("%s: the switch is gone (%s); exiting", name, exc)
    finally:
        handler.close()
    return 0
