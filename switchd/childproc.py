"""A Python child process for blocking database work, reached over a socket.

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

A child may also be shared by several parents (``serve_shared``, reached
with ``Remote``): with ``switchd run --workers N`` one ledger writer and one
journal writer serve every worker, so their writes share commits (the
ledger's, fsyncs too) instead of taking turns on the database's write lock.

Error handling: a lost child (killed, crashed) shows as ``ChildLost`` on the
parent's side; what to do with the request in flight is the caller's policy.
"""

from __future__ import annotations

import logging
import selectors
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


class _Framed:
    """Frames to and from a child over one stream socket: what `Child` and
    `Remote` share. ``call`` is one request and its reply. A caller that
    pipelines uses ``send`` and ``receive`` itself: the child answers in
    request order, and the caller must make sure only one task receives at a
    time."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._stream: trio.SocketStream | None = None
        self._buf = bytearray()

    @property
    def running(self) -> bool:
        return self._stream is not None

    async def _hello(self, hello: bytes) -> None:
        """Send the start-up message; return once the child answered READY.

        On any failure the connection (and a child of our own) is forgotten
        first: a child that answered late would have its READY taken for the
        reply to the next request.
        """
        try:
            with trio.fail_after(START_TIMEOUT_S):
                ready = await self.call(hello)
            if ready != READY:
                raise ChildLost(f"{self.name} did not start: {ready.decode(errors='replace')}")
        except BaseException as exc:
            with trio.CancelScope(shield=True):
                await self.reap()
            if isinstance(exc, trio.TooSlowError):
                raise ChildLost(f"{self.name} did not start in {START_TIMEOUT_S:.0f} s") from None
            raise

    async def reap(self) -> int | None:
        """Forget a broken connection; the child's exit code where it is ours."""
        raise NotImplementedError

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

    async def _close_stream(self) -> None:
        if self._stream is not None:
            await self._stream.aclose()
            self._stream = None


class Child(_Framed):
    """The parent's end of one child process of its own."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(name)
        # `module` must define `child_main(fd: int) -> int` (see `serve`).
        self._code = (
            f"import sys; from {module} import child_main; sys.exit(child_main(int(sys.argv[1])))"
        )
        self._proc: trio.Process | None = None

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
        await self._hello(hello)

    async def reap(self) -> int | None:
        """Forget a broken child: kill it if it still runs; its exit code."""
        await self._close_stream()
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.returncode is None:
            proc.kill()
        return await proc.wait()

    async def aclose(self) -> None:
        """Close the socket (the child finishes and exits) and wait for it."""
        await self._close_stream()
        proc, self._proc = self._proc, None
        if proc is not None:
            with trio.move_on_after(10) as waited:
                await proc.wait()
            if waited.cancelled_caught:
                log.error("%s did not exit; killing it", self.name)
                proc.kill()
                await proc.wait()


class Remote(_Framed):
    """The parent's end of a child shared with other processes (``serve_shared``),
    reached at a Unix socket. Same use as `Child`; the child's process is
    someone else's (the supervisor starts it again when it dies), so
    ``start`` connects, ``reap`` and ``aclose`` only disconnect."""

    def __init__(self, path: str, name: str) -> None:
        super().__init__(name)
        self.path = path

    @property
    def pid(self) -> int | None:
        return None

    async def start(self, hello: bytes) -> None:
        try:
            stream = await trio.open_unix_socket(self.path)
        except OSError as exc:
            raise ChildLost(f"{self.name} at {self.path}: {exc}") from exc
        self._stream = stream
        self._buf.clear()
        await self._hello(hello)

    async def reap(self) -> int | None:
        await self._close_stream()
        return None

    async def aclose(self) -> None:
        await self._close_stream()


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
    request (its reply), then ``close``. A child shared by several parents
    (``serve_shared``) also ``greet``s each parent's start-up message and
    handles together what several parents sent at once (``handle_many``)."""

    def handle(self, body: bytes) -> bytes:
        raise NotImplementedError

    def greet(self, hello: bytes) -> bytes:
        """A shared child's answer to a parent's start-up message: READY or why not."""
        return READY

    def handle_many(self, bodies: list[bytes]) -> list[bytes]:
        """The replies to requests that arrived together, in their order."""
        return [self.handle(body) for body in bodies]

    def close(self) -> None:
        pass


def _open(sock: socket.socket, name: str,
          open_handler: Callable[[bytes], Handler]) -> Handler | int:  # fmt: skip
    """A child's start: the handler, from the owner's start-up message on
    `sock`, or the exit code when there is none."""
    # The owner decides when this process ends (by closing the socket).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sock.setblocking(True)
    hello = _read_frame(sock)
    if hello is None:
        return 0
    try:
        return open_handler(hello)
    except Exception as exc:
        log.exception("%s: cannot start", name)
        _write_frame(sock, f"{type(exc).__name__}: {exc}".encode())
        return 1


def serve(fd: int, name: str, open_handler: Callable[[bytes], Handler]) -> int:
    """The child's main loop; its exit code."""
    sock = socket.socket(fileno=fd)
    opened = _open(sock, name, open_handler)
    if not isinstance(opened, Handler):
        return opened
    handler = opened
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


#: How long a shared child waits for a parent to take a reply before it drops
#: that parent (which then reconnects and sends again what was unanswered).
SEND_TIMEOUT_S = 10.0


class _Peer:
    """A parent of a shared child: its socket and what it sent that is not a whole frame yet."""

    __slots__ = ("buf", "closed", "greeted", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.greeted = False
        self.closed = False

    def frames(self) -> list[bytes]:
        out = []
        buf = self.buf
        while len(buf) >= 4:
            (n,) = _LEN.unpack_from(buf)
            if len(buf) < 4 + n:
                break
            out.append(bytes(buf[4 : 4 + n]))
            del buf[: 4 + n]
        return out

    def send(self, body: bytes) -> None:
        data = _LEN.pack(len(body)) + body
        try:
            n = self.sock.send(data)
        except BlockingIOError:
            n = 0
        if n < len(data):  # a parent slow to read: wait for it, up to a point
            self.sock.settimeout(SEND_TIMEOUT_S)
            try:
                self.sock.sendall(data[n:])
            finally:
                self.sock.setblocking(False)


def serve_shared(lifeline_fd: int, listen_fd: int, name: str,
                 open_handler: Callable[[bytes], Handler]) -> int:  # fmt: skip
    """A child shared by several parents; its exit code.

    Its owner (``switchd run --workers``' supervisor) sends the start-up
    message on the lifeline, a socket pair, and keeps the lifeline open while
    the child is to run: the child leaves when it closes (the owner is done,
    or died). Parents connect to the listening socket ``listen_fd`` (the
    owner's, which outlives the child: a parent connecting while a new child
    starts waits in its backlog instead of being refused), say hello (each
    gets ``greet``'s answer), then send requests. Each turn of the loop takes
    every whole request that has arrived from every parent and hands them to
    ``handle_many`` together, so that for the ledger's writer one commit and
    one fsync serve all the workers. Each parent gets its replies in the
    order it sent its requests.

    Error handling: a parent that closes, or does not take a reply within
    ``SEND_TIMEOUT_S``, is dropped; what its requests committed stays
    committed, and it sends them again once reconnected (ids are idempotent).
    """
    lifeline = socket.socket(fileno=lifeline_fd)
    listener = socket.socket(fileno=listen_fd)
    listener.setblocking(False)
    opened = _open(lifeline, name, open_handler)
    if not isinstance(opened, Handler):
        return opened
    handler = opened
    peers: dict[int, _Peer] = {}
    selector = selectors.DefaultSelector()

    def drop(peer: _Peer, why: object) -> None:
        if not peer.closed:
            peer.closed = True
            if why is not None:
                log.warning("%s: dropping a parent: %s", name, why)
            selector.unregister(peer.sock)
            del peers[peer.sock.fileno()]
            peer.sock.close()

    try:
        _write_frame(lifeline, READY)
        selector.register(lifeline, selectors.EVENT_READ)
        selector.register(listener, selectors.EVENT_READ)
        while True:
            work: list[tuple[_Peer, bytes]] = []
            for key, _ in selector.select():
                sock = key.fileobj
                if sock is lifeline:
                    try:
                        more = lifeline.recv(1)
                    except OSError:  # reset: the owner closed it with our READY unread
                        more = b""
                    if not more:
                        return 0  # the owner closed it: done
                elif sock is listener:
                    while True:
                        try:
                            conn, _ = listener.accept()
                        except (BlockingIOError, InterruptedError):
                            break
                        except OSError as exc:  # EMFILE and the like: the next turn retries
                            log.error("%s: accept failed: %s", name, exc)
                            break
                        conn.setblocking(False)
                        peers[conn.fileno()] = _Peer(conn)
                        selector.register(conn, selectors.EVENT_READ)
                else:
                    peer = peers[sock.fileno()]  # type: ignore[union-attr]
                    try:
                        data = peer.sock.recv(1 << 20)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError as exc:
                        drop(peer, exc)
                        continue
                    if not data:
                        drop(peer, None)  # it closed: the worker left or is starting over
                        continue
                    peer.buf += data
                    for frame in peer.frames():
                        if peer.greeted:
                            work.append((peer, frame))
                        else:
                            peer.greeted = True
                            try:
                                peer.send(handler.greet(frame))
                            except OSError as exc:
                                drop(peer, exc)
            if work:
                replies = handler.handle_many([frame for _, frame in work])
                for (peer, _), reply in zip(work, replies, strict=True):
                    if not peer.closed:
                        try:
                            peer.send(reply)
                        except OSError as exc:
                            drop(peer, exc)
    finally:
        for peer in list(peers.values()):
            peer.sock.close()
        handler.close()
