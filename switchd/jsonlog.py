"""JSON-lines logging (orjson): one object per line, one line per transaction.

Nothing secret is ever logged: PANs are masked to first 6 + last 4, and
tracks (35, 36), PIN blocks (52), ICC data (55) and keys are never read
here at all.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TYPE_CHECKING, BinaryIO

import orjson

from fastpath.kinds import NAMES
from switchd import logsink, metrics

if TYPE_CHECKING:
    from switchd.context import Txn

txn_log = logging.getLogger("switchd.txn")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if fields:
            out.update(fields)
        else:
            out["msg"] = record.getMessage()
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return orjson.dumps(out).decode()


class SinkHandler(logging.Handler):
    """Hands each formatted line to the log sink (logsink.py): never blocks on the stream."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        logsink.sink().write(line.encode() + b"\n")


def setup(level: int = logging.INFO, stream: BinaryIO | None = None) -> None:
    """JSON lines on `stream` (default stderr), through the process's log sink."""
    sink = logsink.install(stream or sys.stderr.buffer)
    sink.on_drop = metrics.LOG_LINES_DROPPED.inc
    handler = SinkHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class TxnLog:
    """The per-transaction log line, written without the logging module's per-record cost.

    At thousands of transactions a second, a LogRecord, a formatter and a
    flushed write per line cost more than the transaction itself; here a line
    is one orjson call appended to a buffer, written out when it passes
    ``FLUSH_BYTES`` and at least every ``FLUSH_INTERVAL_S`` (``run``), and on
    shutdown. The lines go to the same stream as the other logs.
    """

    FLUSH_BYTES = 64 * 1024
    FLUSH_INTERVAL_S = 0.2

    def __init__(self) -> None:
        self.buf = bytearray()
        self.enabled = True
        # The formatted second, made again only when the second changes.
        self._second = -1
        self._stamp = ""

    def emit(self, fields: dict[str, object]) -> None:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        line = {"ts": f"{self._stamp}.{int(now * 1000) % 1000:03d}Z", **fields}
        self.buf += orjson.dumps(line)
        self.buf += b"\n"
        if len(self.buf) >= self.FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self.buf:
            return
        data = bytes(self.buf)
        self.buf.clear()
        logsink.sink().write(data)  # a closed or stuck stream never stops transactions

    async def run(self) -> None:
        import trio

        try:
            while True:
                await trio.sleep(self.FLUSH_INTERVAL_S)
                self.flush()
        finally:
            self.flush()


TXN_LOG = TxnLog()


def log_txn(txn: Txn, rc: str, elapsed_s: float) -> None:
    if not TXN_LOG.enabled or not txn_log.isEnabledFor(logging.INFO):
        return
    msg = txn.msg
    fields: dict[str, object] = {
        "level": "info",
        "logger": "switchd.txn",
        "event": "transaction",
        "kind": NAMES[txn.kind],
        "mti": msg.mti,
        "tid": msg.tid,
        "mid": msg.mid,
        "stan": msg.stan,
        "batch": msg.batch,
        "amount": txn.amount,
        "pan": txn.masked_pan(),
        "rc": rc,
        "latency_ms": round(elapsed_s * 1000, 3),
    }
    if txn.orig_kind is not None:
        fields["original_kind"] = NAMES[txn.orig_kind]
    TXN_LOG.emit(fields)
