"""The ledger's writer in a process of its own (``LedgerConfig.writer = "process"``).

Why: in one process the writer thread (the rules core in Python, then
SQLite or psycopg) and the event loop share one GIL. Under load the loop
holds it, and the writer waits for it after every database call, so its
commits stretch and its CPU is taken from the terminals' requests. In its
own process the writer has its own interpreter, and the switch's process
keeps only the encoding of each batch (JSON by msgspec, about a
microsecond an operation).

Plan: the engine hands each batch to ``ProcessWriter.apply``, which sends it
(JSON) to a child Python (``switchd.childproc``: socket pair, frames) and
waits, without a thread, for the child's reply. The child opens its own
backend from the same ``LedgerConfig`` and does exactly what the thread
writer does: ``backend.apply`` (one transaction, durable before it answers).

Error handling: a ``CommitFailed`` in the child reaches the batch's callers
as the same ``CommitFailed``; any other exception as a ``WriterError``. If
the child dies (killed, out of memory), its batch may or may not have
committed: the writer starts a new child and sends the same batch once
more, which is safe because operation ids are idempotent (an operation that
did commit answers as its own duplicate, with the first result). If the
batch kills that child too, its callers get ``CommitFailed`` and the next
batch starts another child. The child leaves when the ledger closes or the
switch dies (its socket closes).
"""

from __future__ import annotations

import functools
import logging
from collections import deque
from collections.abc import Sequence

import msgspec
import trio

from switchd import childproc

from . import metrics
from .config import LedgerConfig
from .core import OK_ONLY, Group, all_plain_ok
from .model import CommitFailed, Result

log = logging.getLogger("switchd.ledger")


class WriterError(Exception):
    """The writer process failed a batch with something other than CommitFailed."""


class _Start(msgspec.Struct, array_like=True):
    config: LedgerConfig
    log_level: int


class _Batch(msgspec.Struct, array_like=True):
    now_us: int
    groups: list[Group]


class _Reply(msgspec.Struct, array_like=True):
    #: One entry per group; null when every operation of the group got the
    #: plain OK, as nearly every group does (a sale and its fee, say): the
    #: parent decodes no Result and no list for it.
    results: list[Sequence[Result] | None] | None = None
    commit_failed: str | None = None  # CommitFailed's message
    error: str | None = None  # anything else, as repr


# JSON, not msgpack: ids are 128-bit integers, which msgpack cannot carry.
_encode = msgspec.json.Encoder().encode
_decode_reply = msgspec.json.Decoder(_Reply).decode
_decode_batch = msgspec.json.Decoder(_Batch).decode
_decode_start = msgspec.json.Decoder(_Start).decode


class _Flight:
    """One batch sent to the child whose reply has not been read yet."""

    __slots__ = ("attempts", "payload", "size", "turn")

    def __init__(self, payload: bytes, size: int) -> None:
        self.payload = payload
        self.size = size
        self.attempts = 1
        self.turn = trio.Event()  # set when this flight is the oldest: its reply is next


def start_message(config: LedgerConfig) -> bytes:
    """A writer's start-up message (its own child's, or a shared writer's)."""
    return _encode(_Start(config, logging.getLogger().getEffectiveLevel()))


@functools.cache
def _plain_oks(n: int) -> Sequence[Result]:
    """The results of a group of n operations that all got the plain OK: shared."""
    return OK_ONLY * n


class ProcessWriter:
    """The parent's end. ``apply`` may be called by several tasks at once
    (the engine runs ``PIPELINE_DEPTH`` writer tasks): batches are sent in
    call order and the child applies them in that order, one transaction
    each, so a batch can be on its way while the one before it commits.

    The oldest flight reads the next reply (the child answers in order) and
    then hands the turn to the next one. If the child is lost, the oldest
    flight restarts it and sends every flight again, in order; only the
    oldest is charged an attempt, since the child applies batches one after
    the other and so was working on that one (or had committed it).
    """

    def __init__(self, config: LedgerConfig) -> None:
        self.config = config
        # With `switchd run --workers N`, the machine's one writer (below,
        # `shared_main`), started by the supervisor; else a child of our own.
        self.child: childproc.Child | childproc.Remote = (
            childproc.Remote(config.writer_socket, "shared ledger writer")
            if config.writer_socket
            else childproc.Child(__name__, "ledger writer process")
        )
        self.restarts = 0
        self._flights: deque[_Flight] = deque()
        # Held while sending and while a lost child is replaced: frames reach
        # the child whole and in the order their flights were queued.
        self._sending = trio.Lock()

    async def start(self) -> None:
        await self.child.start(start_message(self.config))

    async def apply(self, groups: Sequence[Group], now_us: int) -> list[Sequence[Result]]:
        flight = _Flight(_encode(_Batch(now_us, list(groups))), len(groups))
        async with self._sending:
            self._flights.append(flight)
            if len(self._flights) == 1:
                flight.turn.set()
            try:
                if not self.child.running:
                    await self.start()
                await self.child.send(flight.payload)
            except (childproc.ChildLost, OSError):
                pass  # the oldest flight's receive finds it lost and recovers
        await flight.turn.wait()
        try:
            reply = await self._receive(flight)
        finally:
            self._flights.popleft()
            if self._flights:
                self._flights[0].turn.set()
        if reply.results is not None:
            return [_plain_oks(len(g.ops)) if r is None else r
                    for g, r in zip(groups, reply.results, strict=True)]  # fmt: skip
        if reply.commit_failed is not None:
            raise CommitFailed(reply.commit_failed)
        raise WriterError(f"ledger writer process: {reply.error}")

    async def _receive(self, flight: _Flight) -> _Reply:
        """The oldest flight's reply. A lost child is replaced and every flight
        sent again; a second loss on this flight fails it (CommitFailed)."""
        while True:
            try:
                return _decode_reply(await self.child.receive())
            except childproc.ChildLost as exc:
                lost = exc
            async with self._sending:
                code = await self.child.reap()
                self.restarts += 1
                metrics.WRITER_RESTARTS.inc()
                flight.attempts += 1
                then = "failing it" if flight.attempts > 2 else "sending it again to a new one"
                # A shared writer is the supervisor's child: no exit code here.
                exited = "" if code is None else f", exit {code}"
                log.error("%s lost (%s%s) on a batch of %d groups; %s",
                          self.child.name, lost, exited, flight.size, then)  # fmt: skip
                resend = list(self._flights)
                if flight.attempts > 2:
                    resend.remove(flight)
                try:
                    if resend:
                        await self.start()
                        for f in resend:
                            await self.child.send(f.payload)
                except (childproc.ChildLost, OSError):
                    pass  # the next receive sees it and tries again (a bounded number of times)
                if flight.attempts > 2:
                    raise CommitFailed(
                        f"ledger writer process died twice on a batch of {flight.size}; nothing"
                        " of it is acknowledged (resubmit: ids are idempotent)"
                    )

    async def aclose(self) -> None:
        await self.child.aclose()


# --- the child ---------------------------------------------------------------


class _Writer(childproc.Handler):
    def __init__(self, hello: bytes) -> None:
        start = _decode_start(hello)
        from switchd import jsonlog

        jsonlog.setup(start.log_level)
        from .engine import make_backend

        self.config = start.config
        self.backend = make_backend(start.config)
        self.backend.open()

    def greet(self, hello: bytes) -> bytes:
        # A worker configured for another database must not write through us.
        try:
            theirs = msgspec.structs.replace(_decode_start(hello).config, writer_socket="")
        except msgspec.DecodeError as exc:
            return f"bad start-up message: {exc}".encode()
        if theirs != self.config:
            return b"the shared ledger writer serves another ledger configuration"
        return childproc.READY

    def handle(self, body: bytes) -> bytes:
        return self.handle_many([body])[0]

    def handle_many(self, bodies: list[bytes]) -> list[bytes]:
        """Batches that arrived together (from several workers, with a shared
        writer) go into one transaction, up to ``max_batch`` groups each."""
        replies: list[bytes] = [b""] * len(bodies)
        chunk: list[tuple[int, _Batch]] = []
        size = 0
        for i, body in enumerate(bodies):
            try:
                batch = _decode_batch(body)
            except msgspec.DecodeError as exc:
                replies[i] = _encode(_Reply(error=repr(exc)))
                continue
            if chunk and size + len(batch.groups) > self.config.max_batch:
                self._apply(chunk, replies)
                chunk, size = [], 0
            chunk.append((i, batch))
            size += len(batch.groups)
        if chunk:
            self._apply(chunk, replies)
        return replies

    def _apply(self, chunk: list[tuple[int, _Batch]], replies: list[bytes]) -> None:
        """One transaction for the chunk's batches; each batch's reply into `replies`."""
        if len(chunk) == 1:
            groups, now_us = chunk[0][1].groups, chunk[0][1].now_us
        else:
            groups = [g for _, batch in chunk for g in batch.groups]
            # Stamped by their workers within a commit's time of each other.
            now_us = max(batch.now_us for _, batch in chunk)
        try:
            results = self.backend.apply(groups, now_us)
        except CommitFailed as exc:
            failed = _encode(_Reply(commit_failed=str(exc)))
        except Exception as exc:
            log.exception("ledger writer process: unexpected error applying a batch")
            failed = _encode(_Reply(error=repr(exc)))
        else:
            k = 0
            for i, batch in chunk:
                n = len(batch.groups)
                replies[i] = _encode(
                    _Reply(results=[None if all_plain_ok(r) else r for r in results[k : k + n]])
                )
                k += n
            return
        for i, _ in chunk:
            replies[i] = failed

    def close(self) -> None:
        self.backend.close()


def child_main(fd: int) -> int:
    return childproc.serve(fd, "ledger writer process", _Writer)


def shared_main(lifeline_fd: int, listen_fd: int) -> int:
    """The machine's one ledger writer, shared by `switchd run --workers N`' workers."""
    return childproc.serve_shared(lifeline_fd, listen_fd, "shared ledger writer", _Writer)
