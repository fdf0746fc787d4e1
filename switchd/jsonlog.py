"""JSON-lines logging (orjson): one object per line, one line per transaction.

Nothing secret is ever logged: PANs are masked to first 6 + last 4, and
tracks (35, 36), PIN blocks (52), ICC data (55) and keys are never read
here at all.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TYPE_CHECKING

import orjson

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


def setup(level: int = logging.INFO, stream: object = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def log_txn(txn: Txn, rc: str, elapsed_s: float) -> None:
    if not txn_log.isEnabledFor(logging.INFO):
        return
    from switchd.context import mask_pan

    msg = txn.msg
    fields = {
        "event": "transaction",
        "kind": txn.kind.name.lower(),
        "mti": msg.mti,
        "tid": msg.tid,
        "mid": msg.mid,
        "stan": msg.stan,
        "batch": msg.batch,
        "amount": txn.amount,
        "pan": mask_pan(txn.pan),
        "rc": rc,
        "latency_ms": round(elapsed_s * 1000, 3),
    }
    if txn.orig_kind is not None:
        fields["original_kind"] = txn.orig_kind.name.lower()
    txn_log.info("transaction", extra={"fields": fields})
