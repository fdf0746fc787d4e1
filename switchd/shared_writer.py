"""The machine's writers for ``switchd run --workers N`` (the supervisor's side):
one ledger writer and one journal writer, each serving every worker.

Why: with a writer process per worker, the workers' commits took turns on
the database's write lock (SQLite's file lock), so each batch also waited for
the other workers' commits: with 2 workers at 3,700 sales/s the ledger
engine's commit time per batch went from 2.5 ms (1 worker) to 5.9 ms and the
p99 of the terminals' answers from 16 to 28 ms. Each ledger writer's cache
of account rows was also thrown away at every batch, since another process
had written. The journal's writers took turns the same way on the switch
database: 2 workers' journal writers took 24.6 µs of CPU per sale together,
one alone 15.9 µs.
One writer for all the workers commits what they all sent since its last
commit in one transaction (``childproc.serve_shared``; the writers are
``switchd.ledger.writer_process.shared_main`` and
``switchd.journal_writer.shared_main``).

Resource handling: the supervisor binds each writer's Unix socket (mode
0600, in the data directory, or in a private temporary directory when that
path is too long for a socket address) and keeps it for its whole life, so
a worker that connects while the writer is being started again waits in the
backlog. Workers find the socket in an environment variable (``env_var``).
Each writer's lifeline is a socket pair: it leaves when the supervisor closes
it (after the workers have drained) or dies.

Error handling: a writer that exits is started again by ``poll``, at once
the first time, then with the workers' backoff. A worker sees its connection
lost and sends again what was unanswered: the ledger's ``ProcessWriter`` its
batches (ids are idempotent), the journal its rows (the insert ignores rows
already there).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from switchd.ledger import LedgerConfig

if TYPE_CHECKING:
    from switchd.journal_writer import DatabaseSpec

log = logging.getLogger("switchd.supervisor")

#: The environment variables that give workers the shared writers' sockets.
LEDGER_SOCKET_ENV = "SWITCHD_LEDGER_SOCKET"
JOURNAL_SOCKET_ENV = "SWITCHD_JOURNAL_SOCKET"
#: Restart backoff for a process that keeps dying (a writer here, a worker in
#: supervisor.py): doubles up to the maximum.
RESTART_MIN_S = 0.5
RESTART_MAX_S = 30.0
#: Longest path a Unix socket address holds on Linux (108 bytes with the NUL).
_MAX_SOCKET_PATH = 100


class SharedWriter:
    """Owns one shared writer's socket and process; ``poll`` (re)starts it.

    `module` defines ``shared_main(lifeline_fd, listen_fd) -> int`` (see
    ``childproc.serve_shared``); `hello` is the writer's start-up message,
    sent on the lifeline (it may hold a DSN with a password: never on the
    command line); `env_var` is how the workers are told `path`.
    """

    def __init__(self, name: str, module: str, hello: bytes, data_dir: str, socket_name: str,
                 env_var: str) -> None:  # fmt: skip
        self.name = name
        self.env_var = env_var
        self._code = (
            f"import sys; from {module} import shared_main;"
            " sys.exit(shared_main(int(sys.argv[1]), int(sys.argv[2])))"
        )
        self._hello = hello
        self._tmpdir: str | None = None
        path = Path(data_dir).resolve() / socket_name
        if len(str(path)) > _MAX_SOCKET_PATH:
            self._tmpdir = tempfile.mkdtemp(prefix="switchd-")  # mode 0700
            path = Path(self._tmpdir) / socket_name
        self.path = str(path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # left by a supervisor that was killed
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            self._listener.bind(self.path)
        finally:
            os.umask(old_umask)
        self._listener.listen(128)
        self.proc: subprocess.Popen[bytes] | None = None
        self._lifeline: socket.socket | None = None
        # The first restart is at once: every worker's writes wait for it.
        self._backoff = 0.0
        self._next_start = 0.0

    def start(self) -> None:
        """Start the writer; it opens its database and serves (no wait here)."""
        ours, theirs = socket.socketpair()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", self._code, str(theirs.fileno()),
                 str(self._listener.fileno())],
                pass_fds=(theirs.fileno(), self._listener.fileno()),
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.sendall(len(self._hello).to_bytes(4, "big") + self._hello)
        self._lifeline = ours
        log.info("%s started (pid %d) at %s", self.name, self.proc.pid, self.path)

    def exited(self) -> int | None:
        """The writer's exit code if it has exited (and is to be started again)."""
        if self.proc is None or self.proc.poll() is None:
            return None
        code = self.proc.returncode
        self.proc = None
        if self._lifeline is not None:
            self._lifeline.close()
            self._lifeline = None
        return code

    def poll(self, now: float) -> None:
        """The supervisor's turn (`now` from time.monotonic): note an exit, and
        start the writer when it is not running and its backoff has passed."""
        code = self.exited()
        if code is not None:
            log.error("%s exited with %s; restarting", self.name, code)
            self._next_start = now + self._backoff
            self._backoff = min(max(self._backoff * 2, RESTART_MIN_S), RESTART_MAX_S)
        if self.proc is None and now >= self._next_start:
            self.start()

    def close(self, timeout_s: float = 10.0) -> None:
        """Close the lifeline (the writer finishes its batch and exits), then the socket."""
        if self._lifeline is not None:
            self._lifeline.close()
            self._lifeline = None
        if self.proc is not None:
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.error("%s did not exit; killing it", self.name)
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        self._listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)


def ledger_writer(config: LedgerConfig, data_dir: str) -> SharedWriter:
    """The shared ledger writer (``switchd.ledger.writer_process.shared_main``)."""
    from switchd.ledger.writer_process import start_message

    return SharedWriter("shared ledger writer", "switchd.ledger.writer_process",
                        start_message(config), data_dir, "ledger-writer.sock",
                        LEDGER_SOCKET_ENV)  # fmt: skip


def journal_writer(db: DatabaseSpec, data_dir: str) -> SharedWriter:
    """The shared journal writer (``switchd.journal_writer.shared_main``)."""
    from switchd.journal_writer import start_message

    return SharedWriter("shared journal writer", "switchd.journal_writer", start_message(db),
                        data_dir, "journal-writer.sock", JOURNAL_SOCKET_ENV)  # fmt: skip


def worker_config(config: LedgerConfig) -> LedgerConfig:
    """A worker's ledger configuration: the shared writer's, if the supervisor started one."""
    path = os.environ.get(LEDGER_SOCKET_ENV, "")
    if not path or config.writer != "process":
        return config
    return msgspec.structs.replace(config, writer_socket=path)


def journal_socket() -> str:
    """In a worker: the shared journal writer's socket, if the supervisor started one."""
    return os.environ.get(JOURNAL_SOCKET_ENV, "")
