"""Processes the end-to-end benchmark and the soak start: the switch, the ceiling, the HSM.

Each runs in its own process (its own interpreter and GIL, as in
production), is found by the address it prints on start, has its log
written to a file (a pipe nobody drains would block it), and is stopped with
SIGTERM, then SIGKILL after a grace period. Only loopback addresses.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from hsm.lmk import load_lmk
from hsm.testing import key_under_lmk
from switchd import config as switch_config
from switchd import demo

START_TIMEOUT_S = 300.0  # a first start creates the demo data (PVVs through the HSM)


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def rss(self) -> int:
        """Resident memory in bytes, with its children's (workers); 0 once gone."""
        try:
            proc = psutil.Process(self.pid)
            return sum(p.memory_info().rss for p in (proc, *proc.children(recursive=True)))
        except psutil.Error:
            return 0

    def stop(self, grace: float = 30.0) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        return self.popen.returncode

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)


def _start(argv: list[str], pattern: str, log_path: Path, cwd: Path | None = None) -> Proc:
    """Start a process whose stdout names its port in a line matching ``pattern``."""
    log = log_path.open("ab")
    popen = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=log, cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    log.close()
    assert popen.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        line = popen.stdout.readline().decode(errors="replace")
        found = re.search(pattern, line)
        if found:
            # Keep draining stdout: closing it would kill a process that prints
            # more (BrokenPipeError), leaving it full would block it.
            threading.Thread(target=popen.stdout.read, daemon=True).start()
            return Proc(popen, int(found.group(1)), log_path)
        if not line and popen.poll() is not None:
            break
    popen.kill()
    raise RuntimeError(f"{argv[2]} did not start; see {log_path}")


def write_switch_config(data_dir: Path, *, terminals_per_merchant: int = 5000,
                        cards: int = 10_000, hsm_port: int | None = None,
                        workers: int = 1) -> Path:  # fmt: skip
    """A config file for a fresh switch: port 0 (a free fixed port for several
    workers, which share it), demo data, embedded or external HSM."""
    data_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        f'data_dir = "{data_dir}"',
        "[[listeners]]", 'host = "127.0.0.1"', f"port = {0 if workers == 1 else free_port()}",
        "[admin]", "enabled = false",
        "[demo]", f"terminals_per_merchant = {terminals_per_merchant}", f"cards = {cards}",
    ]  # fmt: skip
    if hsm_port is not None:
        # An external HSM: the switch cannot derive the KEK's and the TMK's LMK
        # forms itself, so they are computed here once, as a key ceremony would.
        lmk = load_lmk("test")
        kek = switch_config.kek_bytes(switch_config.Config())
        lines.insert(lines.index("[demo]") + 1,
                     f'tmk_lmk = "{key_under_lmk(lmk, "002", demo.DEMO_TMK)}"')  # fmt: skip
        lines += [
            "[hsm]", "embedded = false", f'addresses = ["127.0.0.1:{hsm_port}"]',
            "[security]", f'kek_lmk = "{key_under_lmk(lmk, "000", kek)}"',
        ]  # fmt: skip
    path = data_dir / "switchd.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def free_port() -> int:
    """A loopback port free right now (for listeners that cannot use port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_switch(config_path: Path, log_path: Path, workers: int = 1) -> Proc:
    return _start(
        [sys.executable, "-m", "switchd.cli", "run", "--config", str(config_path),
         *(["--workers", str(workers)] if workers > 1 else [])],
        r"terminals on 127\.0\.0\.1:(\d+)", log_path,
    )  # fmt: skip


def start_ceiling(log_path: Path) -> Proc:
    return _start([sys.executable, "-m", "bench.ceiling", "--port", "0"],
                  r"listening on 127\.0\.0\.1:(\d+)", log_path)  # fmt: skip


def start_hsm(port: int, log_path: Path) -> Proc:
    """The software HSM on a fixed port (the switch's config names it)."""
    offset = log_path.stat().st_size if log_path.exists() else 0
    log = log_path.open("ab")
    popen = subprocess.Popen(
        [sys.executable, "-m", "hsm", "serve", "--listen", f"127.0.0.1:{port}", "--lmk", "test"],
        stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    log.close()
    proc = Proc(popen, port, log_path)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with log_path.open("rb") as f:
            f.seek(offset)  # only this start's lines: the log is appended across restarts
            if f"listening on 127.0.0.1:{port}".encode() in f.read():
                return proc
        if popen.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"software HSM did not start on port {port}; see {log_path}")
