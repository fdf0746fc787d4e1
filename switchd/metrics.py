"""The switch's Prometheus metrics (names by Prometheus conventions; no TID or PAN labels)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Gauges say how they add up across worker processes (prometheus_client's
# multiprocess mode, used by `switchd run --workers N`; ignored otherwise).
CONNECTIONS = Gauge(
    "switchd_terminal_connections", "Terminal connections open now.", multiprocess_mode="livesum"
)
CONNECTIONS_ACCEPTED = Counter(
    "switchd_terminal_connections_accepted", "Terminal connections accepted."
)
CONNECTIONS_REFUSED = Counter(
    "switchd_terminal_connections_refused", "Terminal connections refused (over the maximum)."
)
FRAMES_REJECTED = Counter(
    "switchd_frames_rejected", "Frames that could not be processed, by reason.", ["reason"]
)
MAC_FAILURES = Counter("switchd_mac_failures", "Requests whose MAC did not verify.")
TRANSACTIONS = Counter(
    "switchd_transactions",
    "Answered requests by kind and response code.",
    ["kind", "response_code"],
)
TRANSACTION_SECONDS = Histogram(
    "switchd_transaction_duration_seconds",
    "Time from a whole frame received to its answer encoded, by kind.",
    ["kind"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
IN_FLIGHT = Gauge(
    "switchd_transactions_in_flight",
    "Requests received and not yet answered (those waiting for a slot included).",
    multiprocess_mode="livesum",
)
WAITING = Gauge(
    "switchd_transactions_waiting",
    "Requests waiting for one of the transaction slots ([transactions] max_in_flight).",
    multiprocess_mode="livesum",
)
SHED = Counter(
    "switchd_transactions_shed",
    "Requests answered 96 without being processed: no transaction slot came within"
    " [transactions] queue_timeout_s.",
)
LOG_LINES_DROPPED = Counter(
    "switchd_log_lines_dropped",
    "Log lines dropped because the log stream (stderr) was not taking writes.",
)
EVENT_LOOP_LAG = Histogram(
    "switchd_event_loop_lag_seconds",
    "How late the event loop woke a task asleep for 0.1 s: time it was busy or stalled "
    "(CPU saturation, a garbage collection, a blocking call) while every terminal waited.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
