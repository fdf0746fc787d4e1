"""switchd.logsink: log lines never wait for whoever reads the log stream."""

from __future__ import annotations

import os
import threading
import time

import orjson

from switchd.logsink import LogSink


class _Reader(threading.Thread):
    """Reads a pipe to its end, as a log shipper would once it wakes up."""

    def __init__(self, fd: int) -> None:
        super().__init__(daemon=True)
        self.fd = fd
        self.data = b""

    def run(self) -> None:
        while chunk := os.read(self.fd, 65536):
            self.data += chunk


def test_a_stream_nobody_reads_costs_dropped_lines_not_a_blocked_writer() -> None:
    r, w = os.pipe()
    stream = os.fdopen(w, "wb")
    sink = LogSink(stream, max_buffered=8 * 1024)
    drops: list[int] = []
    sink.on_drop = drops.append
    try:
        line = b'{"msg":"' + b"x" * 90 + b'"}\n'  # 100 bytes
        started = time.monotonic()
        for _ in range(5_000):  # 500 KB: the pipe holds 64 KiB, the sink 8 KiB
            sink.write(line)
        # Nobody reads the pipe: the writes were queued or dropped, never waited.
        assert time.monotonic() - started < 1.0
        assert sink.dropped > 0 and sum(drops) == sink.dropped

        # Once the stream takes writes again, a line says how many were lost.
        reader = _Reader(r)
        reader.start()
        assert sink.flush(timeout=10)
        sink.write(b'{"msg":"after"}\n')
        assert sink.flush(timeout=10)
        stream.close()  # the reader sees the end
        reader.join(10)
        lines = reader.data.splitlines()
        notes = [orjson.loads(x) for x in lines if b'"switchd.log"' in x]
        assert notes and {n["level"] for n in notes} == {"warning"}
        assert sum(int(n["msg"].split()[0]) for n in notes) == sink.dropped
        # What was not dropped arrived whole, in order, and "after" came last.
        kept = [x for x in lines if x.startswith(b'{"msg":"x')]
        assert all(x == line.rstrip() for x in kept)
        assert len(kept) + sink.dropped == 5_000
        assert lines[-1] == b'{"msg":"after"}'
    finally:
        sink.close(timeout=1)
        if not stream.closed:
            stream.close()
        os.close(r)


def test_close_gives_up_on_a_stuck_stream() -> None:
    r, w = os.pipe()
    stream = os.fdopen(w, "wb")
    sink = LogSink(stream)
    try:
        for _ in range(2_000):
            sink.write(b"y" * 99 + b"\n")  # 200 KB: more than the pipe holds
        started = time.monotonic()
        sink.close(timeout=0.3)  # the process can exit though nobody reads
        assert time.monotonic() - started < 1.0
    finally:
        os.close(r)  # the writer thread's pending write fails (EPIPE): it is dropped
