"""Prometheus metrics of the HSM client pool and the software HSM server.

Defined once per process (prometheus_client refuses duplicates); labels are
low-cardinality: command codes from a fixed set, a result from a fixed set,
and the configured HSM addresses.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from hsm.cheap_metrics import cheap

REQUESTS = Counter(
    "hsm_client_requests",
    "HSM commands sent by the client pool, by command and result "
    "(ok, hsm_error, timeout, link_error, unavailable).",
    ["command", "result"],
)
LATENCY = Histogram(
    "hsm_client_request_duration_seconds",
    "Time from a command's submission to its reply, retries included.",
    ["command"],
    buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
# multiprocess_mode: with several switch workers, connections add up and an
# HSM is up if any worker reaches it (ignored in a single process).
POOL_CONNECTIONS = Gauge(
    "hsm_client_pool_connections",
    "Open connections to each HSM.",
    ["hsm"],
    multiprocess_mode="livesum",
)
HSM_UP = Gauge(
    "hsm_client_hsm_up",
    "1 when the HSM is in rotation, 0 when it is out (failed or slow).",
    ["hsm"],
    multiprocess_mode="livemax",
)
SERVER_COMMANDS = Counter(
    "hsm_server_commands",
    "Commands answered by the software HSM, by command and error code.",
    ["command", "code"],
)


_CHILDREN: dict[tuple[Any, ...], Any] = {}


def labelled(metric: MetricWrapperBase, *values: str) -> Any:
    """`metric.labels(*values)` for a Counter or Histogram, remembered, with the
    same `inc()` / `observe(amount)`: labels() takes a lock and checks its
    arguments on every call, a cost paid once per command otherwise, and the
    child's own update costs more than it needs to (hsm/cheap_metrics.py).
    The label values are from fixed sets (see above), so the cache stays small."""
    key = (metric, *values)
    child = _CHILDREN.get(key)
    if child is None:
        child = _CHILDREN[key] = cheap(metric.labels(*values))
    return child
