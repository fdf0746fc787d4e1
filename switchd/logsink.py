"""Where log lines go: a bounded buffer that a thread of its own writes out.

A write to stderr blocks when whoever reads it (a pipe to a log shipper,
journald, a container runtime, a terminal paused with Ctrl-S) stops reading
and the pipe's 64 KiB fill up. Written from the event loop, that froze every
terminal of the switch, and in the ledger's writer child it froze commits.
So nothing but this module's thread ever writes to the log stream: loggers
append bytes to a buffer and return at once.

Resource handling: the buffer holds at most ``MAX_BUFFERED`` bytes. Past it,
lines are dropped, counted (``dropped``, and the switch's
``switchd_log_lines_dropped_total``), and once the stream takes writes again
one line says how many were lost. Memory stays bounded whatever the reader
does; no transaction ever waits for its log line.

Error handling: a write that fails (the stream closed, EPIPE, a full disk
under a redirected file) drops what it was writing, as above; the thread
goes on with the next lines. ``close`` waits at most ``CLOSE_TIMEOUT_S`` for
the buffer to drain, so a stuck reader cannot stop the process from exiting.
"""

from __future__ import annotations

import atexit
import sys
import threading
import time
from collections.abc import Callable
from typing import BinaryIO

import orjson

#: Bytes of log lines held while the stream is slow: about a minute of the
#: transaction log at 1,000 lines per second.
MAX_BUFFERED = 16 * 1024 * 1024
CLOSE_TIMEOUT_S = 2.0


class LogSink:
    def __init__(self, stream: BinaryIO, max_buffered: int = MAX_BUFFERED) -> None:
        self.stream = stream
        self.max_buffered = max_buffered
        self.dropped = 0
        #: Called with the number of lines dropped each time some are (a metric).
        self.on_drop: Callable[[int], None] | None = None
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._unreported = 0
        self._writing = False
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="log writer", daemon=True)
        self._thread.start()

    def write(self, data: bytes) -> None:
        """Queue whole lines (each ending in a newline); never blocks on the stream."""
        with self._cond:
            if self._closed or self._buffered + len(data) > self.max_buffered:
                self._drop(data.count(b"\n") or 1)
                return
            self._chunks.append(data)
            self._buffered += len(data)
            self._cond.notify()

    def _drop(self, lines: int) -> None:
        # Under self._cond.
        self.dropped += lines
        self._unreported += lines
        if self.on_drop is not None:
            self.on_drop(lines)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._chunks and not self._closed:
                    self._cond.wait()
                if not self._chunks:
                    return  # closed and drained
                chunks, self._chunks = self._chunks, []
                self._buffered = 0
                lost, self._unreported = self._unreported, 0
                self._writing = True
            data = b"".join(chunks)
            if lost:
                data = _dropped_line(lost) + data
            try:
                self.stream.write(data)
                self.stream.flush()
            except (OSError, ValueError):
                with self._cond:
                    self._drop(data.count(b"\n") or 1)
            finally:
                with self._cond:
                    self._writing = False
                    self._cond.notify_all()

    def flush(self, timeout: float = CLOSE_TIMEOUT_S) -> bool:
        """Wait until everything queued so far is written; False if the stream is stuck."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._chunks or self._writing:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()


def _dropped_line(lines: int) -> bytes:
    now = time.time()
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
    return orjson.dumps({
        "ts": ts, "level": "warning", "logger": "switchd.log",
        "msg": f"{lines} log lines dropped: the log stream was not being read",
    }) + b"\n"  # fmt: skip


_SINK: LogSink | None = None


def sink() -> LogSink:
    """The process's sink, on stderr unless ``install`` named another stream."""
    global _SINK
    if _SINK is None:
        _SINK = _new(sys.stderr.buffer)
    return _SINK


def install(stream: BinaryIO) -> LogSink:
    """Make a sink on `stream` the process's sink (the one before is closed)."""
    global _SINK
    if _SINK is not None and _SINK.stream is not stream:
        _SINK.close()
        _SINK = None
    if _SINK is None:
        _SINK = _new(stream)
    return _SINK


def _new(stream: BinaryIO) -> LogSink:
    s = LogSink(stream)
    # The last lines (a clean stop, a fatal error) are written before exit.
    atexit.register(s.close)
    return s
