"""The journal's rows, written by a child process (``[ledger] writer = "process"``).

The journal's writer task (journal.py) hands each group of rows to
``JournalWriter.write``, which sends them (msgpack) to a child Python
(``switchd.childproc``) that inserts them into the switch database in one
transaction and answers once they are committed. In this process the rows'
inserts, a database call per row, each giving up and taking back the GIL,
competed with the terminals' requests; the child has a GIL of its own.

The child opens its own connection to the same database (SQLite: the same
file, in WAL mode, so the switch's other writes wait at most a journal
commit; PostgreSQL: its own connection).

Error handling: a failed insert raises ``JournalWriteFailed`` and a lost child
``ChildLost``; the journal keeps the rows and retries with backoff (the next
write starts a new child). A retried write inserts nothing twice (the insert
ignores rows already there).
"""

from __future__ import annotations

import logging
from pathlib import Path

import msgspec

from switchd import childproc
from switchd.db import Database

log = logging.getLogger("switchd.journal")


class JournalWriteFailed(Exception):
    """The child could not insert the rows (nothing of them was committed)."""


class DatabaseSpec(msgspec.Struct, frozen=True, array_like=True):
    """Enough to open the switch database in another process."""

    backend: str  # "sqlite" or "postgres"
    sqlite_path: str = ""
    postgres_dsn: str = ""
    postgres_schema: str = ""


class _Start(msgspec.Struct, array_like=True):
    db: DatabaseSpec
    log_level: int


_encode = msgspec.msgpack.Encoder().encode
_decode_start = msgspec.msgpack.Decoder(_Start).decode
_decode_rows = msgspec.msgpack.Decoder(list[list[str | int | None]]).decode
OK = b"ok"


class JournalWriter:
    """The parent's end; one write at a time (the journal's single writer task)."""

    def __init__(self, db: DatabaseSpec) -> None:
        self.db = db
        self.child = childproc.Child(__name__, "journal writer process")

    async def start(self) -> None:
        await self.child.start(_encode(_Start(self.db, logging.getLogger().getEffectiveLevel())))

    async def write(self, rows: list[tuple]) -> None:
        """Insert the rows (journal.INSERT) in one transaction; returns once committed."""
        try:
            if not self.child.running:
                await self.start()
            reply = await self.child.call(_encode(rows))
        except childproc.ChildLost:
            await self.child.reap()
            raise
        if reply != OK:
            raise JournalWriteFailed(reply.decode(errors="replace"))

    async def aclose(self) -> None:
        await self.child.aclose()


# --- the child ---------------------------------------------------------------


def _open(spec: DatabaseSpec) -> Database:
    from switchd.db import PostgresDatabase, SqliteDatabase

    if spec.backend == "postgres":
        return PostgresDatabase(spec.postgres_dsn, spec.postgres_schema, 1)
    return SqliteDatabase(Path(spec.sqlite_path))


class _Writer(childproc.Handler):
    def __init__(self, hello: bytes) -> None:
        start = _decode_start(hello)
        from switchd import jsonlog

        jsonlog.setup(start.log_level)
        from switchd.journal import INSERT

        self.insert = INSERT
        self.db = _open(start.db)

    def handle(self, body: bytes) -> bytes:
        rows = _decode_rows(body)
        try:
            self.db.run_blocking(lambda c: c.executemany(self.insert, rows))
        except Exception as exc:
            log.error("journal writer process: %d rows not written: %s", len(rows), exc)
            return f"{type(exc).__name__}: {exc}".encode()
        return OK

    def close(self) -> None:
        self.db.close_blocking()


def child_main(fd: int) -> int:
    return childproc.serve(fd, "journal writer process", _Writer)
