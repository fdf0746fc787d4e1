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

import logging
from collections.abc import Sequence

import msgspec

from switchd import childproc

from . import metrics
from .config import LedgerConfig
from .core import Group
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
        self.child = childproc.Child(__name__, "ledger writer process")
        self.restarts = 0

    async def start(self) -> None:
        start = _Start(self.config, logging.getLogger().getEffectiveLevel())
        await self.child.start(_encode(start))

    async def apply(self, groups: Sequence[Group], now_us: int) -> list[list[Result]]:
        payload = _encode(_Batch(now_us, list(groups)))
        for attempt in (1, 2):
            try:
                if not self.child.running:
                    await self.start()
                reply = _decode_reply(await self.child.call(payload))
                break
            except childproc.ChildLost as exc:
                code = await self.child.reap()
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
        await self.child.aclose()


# --- the child ---------------------------------------------------------------


class _Writer(childproc.Handler):
    def __init__(self, hello: bytes) -> None:
        start = _decode_start(hello)
        from switchd import jsonlog

        jsonlog.setup(start.log_level)
        from .engine import make_backend

        self.backend = make_backend(start.config)
        self.backend.open()

    def handle(self, body: bytes) -> bytes:
        batch = _decode_batch(body)
        try:
            return _encode(_Reply(results=self.backend.apply(batch.groups, batch.now_us)))
        except CommitFailed as exc:
            return _encode(_Reply(commit_failed=str(exc)))
        except Exception as exc:
            log.exception("ledger writer process: unexpected error applying a batch")
            return _encode(_Reply(error=repr(exc)))

    def close(self) -> None:
        self.backend.close()


def child_main(fd: int) -> int:
    return childproc.serve(fd, "ledger writer process", _Writer)
