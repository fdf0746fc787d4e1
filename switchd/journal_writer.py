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

With ``switchd run --workers N`` one such writer serves every worker
(``shared_main``, started by the supervisor: shared_writer.py), and the
groups of rows that arrive from several workers while it commits go into its
next transaction together. With a writer per worker, the workers' journal
commits took turns on SQLite's write lock, each with that worker's rows
only: 24.6 µs of the journal writers' CPU per sale with 2 workers, 15.9 µs
with 1. One shared writer: 16.9-20.0 µs, against 22.6-23.7 µs for a writer
per worker in the same runs (bench.scaling, 2 workers, 1,000 terminals, 4
runs of each, alternating). Probably (not measured) what is left above one
worker's figure is the number of commits: each worker's writes still come
every ``LINGER_S`` on their own clock, merged only when one arrives while
the other commits.

Error handling: a failed insert raises ``JournalWriteFailed`` and a lost child
``ChildLost``; the journal keeps the rows and retries with backoff (the next
write starts a new child, or, with a shared writer, connects again: the
supervisor starts a writer that died, and a worker that connects meanwhile
waits in the socket's backlog). A retried write inserts nothing twice (the
insert ignores rows already there). Groups merged into one transaction that
fails are each tried again alone, so that one worker's bad rows never hold
back another's.
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


def start_message(db: DatabaseSpec) -> bytes:
    """A writer's start-up message (its own child's, or a shared writer's)."""
    return _encode(_Start(db, logging.getLogger().getEffectiveLevel()))


class JournalWriter:
    """The parent's end; one write at a time (the journal's single writer task).

    With `socket` (a worker of ``switchd run --workers N``: see
    ``shared_writer.journal_socket``) it connects to the machine's one journal
    writer, started by the supervisor; else it starts a child of its own.
    """

    def __init__(self, db: DatabaseSpec, socket: str = "") -> None:
        self.db = db
        self.child: childproc.Child | childproc.Remote = (
            childproc.Remote(socket, "shared journal writer")
            if socket
            else childproc.Child(__name__, "journal writer process")
        )

    async def start(self) -> None:
        await self.child.start(start_message(self.db))

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
        self.spec = start.db
        self.db = _open(start.db)

    def greet(self, hello: bytes) -> bytes:
        # A worker configured for another database must not write through us.
        try:
            theirs = _decode_start(hello).db
        except msgspec.DecodeError as exc:
            return f"bad start-up message: {exc}".encode()
        if theirs != self.spec:
            return b"the shared journal writer serves another database"
        return childproc.READY

    def handle(self, body: bytes) -> bytes:
        return self.handle_many([body])[0]

    def handle_many(self, bodies: list[bytes]) -> list[bytes]:
        """Row groups that arrived together (from several workers, with a shared
        writer) are inserted in one transaction; each gets its own answer."""
        replies = [b""] * len(bodies)
        groups: list[tuple[int, list[list[str | int | None]]]] = []
        for i, body in enumerate(bodies):
            try:
                groups.append((i, _decode_rows(body)))
            except msgspec.DecodeError as exc:
                replies[i] = f"DecodeError: {exc}".encode()
        if len(groups) > 1:
            try:
                self._insert([row for _, rows in groups for row in rows])
            except Exception as exc:
                # Perhaps one group's rows are bad: each alone, or a worker
                # whose rows can never be written would hold back every other's.
                log.warning("journal writer process: %d groups together failed (%s);"
                            " writing each alone", len(groups), exc)  # fmt: skip
            else:
                for i, _ in groups:
                    replies[i] = OK
                return replies
        for i, rows in groups:
            try:
                self._insert(rows)
            except Exception as exc:
                log.error("journal writer process: %d rows not written: %s", len(rows), exc)
                replies[i] = f"{type(exc).__name__}: {exc}".encode()
            else:
                replies[i] = OK
        return replies

    def _insert(self, rows: list[list[str | int | None]]) -> None:
        """The rows in one transaction (rows already there are left as they are)."""
        self.db.run_blocking(lambda c: c.executemany(self.insert, rows))

    def close(self) -> None:
        self.db.close_blocking()


def child_main(fd: int) -> int:
    return childproc.serve(fd, "journal writer process", _Writer)


def shared_main(lifeline_fd: int, listen_fd: int) -> int:
    """The machine's one journal writer, shared by `switchd run --workers N`' workers."""
    return childproc.serve_shared(lifeline_fd, listen_fd, "shared journal writer", _Writer)
