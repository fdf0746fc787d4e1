"""The ledger's Prometheus metrics: batch size, commit latency, queue depth, failures."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

BATCH_SIZE = Histogram(
    "switchd_ledger_batch_operations",
    "Operation groups committed together in one database transaction (group commit).",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 4096),
)
COMMIT_SECONDS = Histogram(
    "switchd_ledger_commit_duration_seconds",
    "Time to apply and durably commit one batch.",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
QUEUE_DEPTH = Gauge(
    "switchd_ledger_queue_depth",
    "Operation groups waiting for the writer when it last took a batch.",
    multiprocess_mode="livesum",
)
COMMITS_FAILED = Counter(
    "switchd_ledger_commits_failed", "Batches whose commit failed (every operation in it failed)."
)
WRITER_RESTARTS = Counter(
    "switchd_ledger_writer_process_restarts",
    "Ledger writer child processes lost and started again (their batch was sent again).",
)
