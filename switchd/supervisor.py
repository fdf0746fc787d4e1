"""``switchd run --workers N``: N worker processes behind the same ports.

Each worker is a whole switch (listeners, HSM pool or embedded HSM, ledger
client, admin listener) whose terminal sockets are bound with SO_REUSEPORT,
so the kernel spreads new connections over the workers and one Python
process per core does the work. What they share: the ledger and the
journal, each written by one writer process that the supervisor starts for
all the workers (shared_writer.py: one commit serves them all; with
`writer = "thread"` each worker writes itself, which is correct too: SQLite
serialises writers on its file lock, PostgreSQL with row locks); the
terminals' session keys (a worker that meets a terminal signed on elsewhere
loads its keys from the switch database); the reference data. Metrics use
prometheus_client's multiprocess mode, so any worker's /metrics shows the
sum over all of them.

The supervisor prepares the databases once (migrations, demo data, the
journal's repair after a crash: journal_repair.py), starts the shared
ledger and journal writers and the workers, restarts any of them that dies
(with backoff; workers after marking their metric files dead), forwards
SIGTERM (drain and exit), SIGINT and SIGHUP, and stops the writers once the
workers have drained.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import trio

from switchd import shared_writer
from switchd.config import Config
from switchd.shared_writer import RESTART_MAX_S, RESTART_MIN_S, SharedWriter

log = logging.getLogger("switchd.supervisor")

#: How long workers get to drain after SIGTERM before they are killed.
DRAIN_TIMEOUT_S = 60.0
POLL_S = 0.2
#: The environment variable naming a worker's ready pipe.
READY_FD_ENV = "SWITCHD_READY_FD"
#: Set for a worker started in place of one that died: it rebuilds the
#: journal rows the dead one had not written yet (journal_repair.py) before
#: it serves. The first workers need not: the preparation run did it.
REPLACES_DEAD_ENV = "SWITCHD_REPLACES_DEAD"


def run_workers(cfg: Config, config_path: str | None, workers: int) -> int:
    from switchd.daemon import Switch

    if any(lst.port == 0 for lst in cfg.listeners):
        print("switchd: --workers needs fixed listener ports (port 0 cannot be shared)",
              file=sys.stderr)  # fmt: skip
        return 2
    trio.run(Switch(cfg, config_path, prepare_only=True).run)
    metrics_dir = Path(cfg.data_dir) / "metrics"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    writers: list[SharedWriter] = []
    try:
        if cfg.ledger.writer == "process":
            from switchd.daemon import database_spec, ledger_config

            writers.append(shared_writer.ledger_writer(ledger_config(cfg), cfg.data_dir))
            writers.append(shared_writer.journal_writer(database_spec(cfg), cfg.data_dir))
        for writer in writers:
            env[writer.env_var] = writer.path
        return _supervise(cfg, env, workers, config_path, writers)
    finally:
        # After the workers have drained: what they flushed went through these.
        for writer in writers:
            writer.close()


def _supervise(cfg: Config, env: dict[str, str], workers: int, config_path: str | None,
               writers: list[SharedWriter]) -> int:  # fmt: skip
    argv = [sys.executable, "-m", "switchd.cli", "run", "--worker"]
    if config_path is not None:
        argv += ["--config", config_path]

    stopping = {"signal": 0}
    forwarded: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        if signum == signal.SIGHUP:
            forwarded.append(signum)
        else:
            stopping["signal"] = signum

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)

    procs: list[subprocess.Popen[bytes] | None] = [None] * workers
    backoff = [RESTART_MIN_S] * workers
    next_start = [0.0] * workers
    # Each worker writes a byte to its pipe once it listens; the port is
    # announced when all of them have, not before (a client reading the line
    # and connecting at once would otherwise be refused).
    ready_pipes: list[int | None] = [None] * workers
    ready = [False] * workers
    announced = False
    while not stopping["signal"]:
        now = time.monotonic()
        for writer in writers:
            writer.poll(now)
        for i, proc in enumerate(procs):
            if proc is not None and proc.poll() is not None:
                log.error("worker %d (pid %d) exited with %s; restarting", i, proc.pid,
                          proc.returncode)  # fmt: skip
                _mark_dead(proc.pid)
                procs[i] = None
                next_start[i] = now + backoff[i]
                backoff[i] = min(backoff[i] * 2, RESTART_MAX_S)
            if procs[i] is None and now >= next_start[i]:
                replaces_dead = next_start[i] > 0.0
                procs[i], ready_pipes[i] = _spawn(argv, env, i, ready_pipes[i], replaces_dead)
                ready[i] = False
                log.info("worker %d started (pid %d)", i, procs[i].pid)  # type: ignore[union-attr]
        for i, pipe in enumerate(ready_pipes):
            ready[i] = ready[i] or _said_ready(pipe)
        if not announced and all(ready):
            announced = True
            for host_port in cfg.listeners:
                print(f"switchd: terminals on {host_port.host}:{host_port.port}"
                      f" ({workers} workers)", flush=True)  # fmt: skip
        while forwarded:
            sig = forwarded.pop()
            for proc in procs:
                if proc is not None:
                    proc.send_signal(sig)
        time.sleep(POLL_S)

    for proc in procs:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    code = 0
    for proc in procs:
        if proc is None:
            continue
        try:
            rc = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        code = code or (rc if rc > 0 else 0)
    return code


def _spawn(argv: list[str], env: dict[str, str], i: int, old_pipe: int | None,
           replaces_dead: bool) -> tuple[subprocess.Popen[bytes], int]:  # fmt: skip
    """Start worker i with a fresh ready pipe; its process and the pipe's read end."""
    if old_pipe is not None:
        os.close(old_pipe)
    read, write = os.pipe()
    os.set_blocking(read, False)
    try:
        own = {"SWITCHD_WORKER": str(i), READY_FD_ENV: str(write)}
        if replaces_dead:
            own[REPLACES_DEAD_ENV] = "1"
        proc = subprocess.Popen(argv, pass_fds=(write,), env={**env, **own})
    except BaseException:
        os.close(read)
        raise
    finally:
        os.close(write)
    return proc, read


def _said_ready(pipe: int | None) -> bool:
    """Whether the worker behind `pipe` has just said it listens (its one byte)."""
    if pipe is None:
        return False
    try:
        return os.read(pipe, 1) != b""
    except BlockingIOError:
        return False


def tell_ready() -> None:
    """In a worker that listens: one byte on the pipe the supervisor gave it."""
    fd = os.environ.get(READY_FD_ENV)
    if fd is None:
        return
    try:
        os.write(int(fd), b"r")
        os.close(int(fd))
    except (OSError, ValueError) as exc:
        log.warning("cannot tell the supervisor this worker is ready: %s", exc)


def _mark_dead(pid: int) -> None:
    """Drop a dead worker's live gauges from the aggregate."""
    try:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
    except Exception:  # the directory may not be set up in tests
        pass
