"""The ledger's writer in a process of its own (``LedgerConfig.writer = "process"``).

Why: in one process the writer thread (the rules core in Python, then
SQLite or psycopg) and the event loop share one GIL. Under load the loop
holds it, and the writer waits for it after every database call, so its
commits stretch and its CPU is taken from the terminals' requests. In its
own process the writer has its own interpreter, and the switch's process
keeps only the encoding of each batch (JSON by msgspec, about a
microsecond an operation).

Plan: the engine hands each batch to ``ProcessWriter.apply``, which sends it
over a socket pair to a child Python running ``child_main`` and waits,
without a thread, for the child's reply. The child opens its own
backend from the same ``LedgerConfig`` and does exactly what the thread
writer does: ``backend.apply`` (one transaction, durable before it answers).
Frames both ways are a 4-byte big-endian length and a JSON body; the
first frame to the child is its configuration (it may hold a DSN with a
password, so it is never put on the command line), and the child answers
``ready`` once its database is open.

Error handling: a ``CommitFailed`` in the child reaches the batch's callers
as the same ``CommitFailed``; any other exception as a ``WriterError``. If
the child dies (killed, out of memory), its batch may or may not have
committed: the writer starts a new child and sends the same batch once
more, which is safe because operation ids are idempotent (an operation that
did commit answers as its own duplicate, with the first result). If the
batch kills that child too, its callers get ``CommitFailed`` and the next
batch starts another child. The child ignores SIGINT/SIGTERM (a Ctrl-C on the
terminal reaches the whole process group, and a commit must not be cut
short): it leaves when its socket closes, that is when the switch closes
the ledger or dies.
"""

from __future__ import annotations

import logging
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Sequence

import msgspec
import trio

from . import metrics
from .config import LedgerConfig
from .core import Group
from .model import CommitFailed, Result

log = logging.getLogger("switchd.ledger")

_LEN = struct.Struct(">I")
_CHILD = (
    "import sys; from switchd.ledger.writer_process import child_main;"
    " sys.exit(child_main(int(sys.argv[1])))"
)
#: How long a new child may take to import, open its database and run migrations.
START_TIMEOUT_S = 60.0


class WriterError(Exception):
    """The writer process failed a batch with something other than CommitFailed."""


class _Start(msgspec.Struct, array_like=True):
    config: LedgerConfig
    log_level: int


class _Batch(msgspec.Struct, array_like=True):
    now_us: int
    groups: list[Group]


class _Reply(msgspec.Struct, array_like=True):
    results: list[list[Result]] | None = None
    commit_failed: str | None = None  # CommitFailed's message
    error: str | None = None  # anything else, as repr


# JSON, not msgpack: ids are 128-bit integers, which msgpack cannot carry.
_encode = msgspec.json.Encoder().encode
_decode_reply = msgspec.json.Decoder(_Reply).decode
_decode_batch = msgspec.json.Decoder(_Batch).decode
_decode_start = msgspec.json.Decoder(_Start).decode


class ProcessWriter:
    """The parent's end; one batch at a time (the engine's single writer task)."""

    def __init__(self, config: LedgerConfig) -> None:
        self.config = config
        self._proc: trio.Process | None = None
        self._stream: trio.SocketStream | None = None
        self._buf = bytearray()
        self.restarts = 0

    async def start(self) -> None:
        parent, child = socket.socketpair()
        try:
            self._proc = await trio.lowlevel.open_process(
                [sys.executable, "-c", _CHILD, str(child.fileno())],
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
        start = _Start(self.config, logging.getLogger().getEffectiveLevel())
        with trio.fail_after(START_TIMEOUT_S):
            await self._send(_encode(start))
            ready = await self._receive()
        if ready != b"ready":
            raise WriterError(f"ledger writer process did not start: {ready!r}")

    async def apply(self, groups: Sequence[Group], now_us: int) -> list[list[Result]]:
        payload = _encode(_Batch(now_us, list(groups)))
        for attempt in (1, 2):
            try:
                if self._stream is None:
                    await self.start()
                await self._send(payload)
                reply = _decode_reply(await self._receive())
                break
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError,
                    EOFError, trio.TooSlowError, WriterError) as exc:  # fmt: skip
                code = await self._reap()
                self.restarts += 1
                metrics.WRITER_RESTARTS.inc()
                then = "sending it again to a new one" if attempt == 1 else "failing it"
                log.error("ledger writer process lost (%s, exit %s) on a batch of %d groups; %s",
                          exc, code, len(groups), then)  # fmt: skip
        else:
            raise CommitFailed(
                f"ledger writer process died twice on a batch of {len(groups)}; nothing of it"
                " is acknowledged (resubmit: ids are idempotent)"
            )
        if reply.results is not None:
            return reply.results
        if reply.commit_failed is not None:
            raise CommitFailed(reply.commit_failed)
        raise WriterError(f"ledger writer process: {reply.error}")

    async def aclose(self) -> None:
        """Close the socket (the child commits nothing more and exits) and wait for it."""
        if self._stream is not None:
            await self._stream.aclose()
            self._stream = None
        proc, self._proc = self._proc, None
        if proc is not None:
            with trio.move_on_after(10) as waited:
                await proc.wait()
            if waited.cancelled_caught:
                proc.kill()
                await proc.wait()

    async def _reap(self) -> int | None:
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

    async def _send(self, body: bytes) -> None:
        assert self._stream is not None
        await self._stream.send_all(_LEN.pack(len(body)) + body)

    async def _receive(self) -> bytes:
        assert self._stream is not None
        buf = self._buf
        while True:
            if len(buf) >= 4:
                (n,) = _LEN.unpack_from(buf)
                if len(buf) >= 4 + n:
                    body = bytes(buf[4 : 4 + n])
                    del buf[: 4 + n]
                    return body
            data = await self._stream.receive_some(1 << 20)
            if not data:
                raise EOFError("the ledger writer process closed its socket")
            buf += data


# --- the child ---------------------------------------------------------------


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


def child_main(fd: int) -> int:
    # The parent decides when this process ends (by closing the socket).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sock = socket.socket(fileno=fd)
    sock.setblocking(True)
    first = _read_frame(sock)
    if first is None:
        return 0
    start = _decode_start(first)
    from switchd import jsonlog

    jsonlog.setup(start.log_level)
    from .engine import make_backend

    backend = make_backend(start.config)
    try:
        backend.open()
    except Exception as exc:
        log.exception("ledger writer process: cannot open the database")
        _write_frame(sock, f"open failed: {exc!r}".encode())
        return 1
    try:
        _write_frame(sock, b"ready")
        while (frame := _read_frame(sock)) is not None:
            batch = _decode_batch(frame)
            try:
                reply = _Reply(results=backend.apply(batch.groups, batch.now_us))
            except CommitFailed as exc:
                reply = _Reply(commit_failed=str(exc))
            except Exception as exc:
                log.exception("ledger writer process: unexpected error applying a batch")
                reply = _Reply(error=repr(exc))
            _write_frame(sock, _encode(reply))
    except OSError as exc:
        # The switch went away (killed) with a batch in flight: what committed
        # stays committed, and the switch's next writer is told by the ids.
        log.warning("ledger writer process: the switch is gone (%s); exiting", exc)
    finally:
        backend.close()
    return 0

