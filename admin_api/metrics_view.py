"""/metrics, /healthz and /readyz.

/metrics serves the process's default Prometheus registry (the switch's and
the HSM client's metrics are defined at import in switchd.metrics and
hsm.metrics, plus the process and platform collectors), or, when
PROMETHEUS_MULTIPROC_DIR is set (several worker processes), a fresh
registry with a MultiProcessCollector that merges every worker's files at
each scrape, as prometheus_client's multiprocess mode requires.

The ledger's metrics are its own (switchd.ledger.metrics).
"""

from __future__ import annotations

import os
import time

import trio
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.responses import Response

import hsm.metrics  # noqa: F401  (defines the HSM client metrics in the registry)
import switchd.ledger.metrics  # defines the ledger metrics in the registry
import switchd.metrics  # noqa: F401  (defines the switch metrics in the registry)
from switchd.ledger import AccountKind, CreateAccount, LedgerError, suspense_account_id

from . import schemas as s
from .api import OPS, PUBLIC, Api, Req, json_response
from .context import AdminContext

api = Api()

#: How long a readiness probe waits for one ledger round trip.
READY_TIMEOUT_S = 2.0


def build_registry(ctx: AdminContext) -> CollectorRegistry:
    """What /metrics serves, chosen once per app (see the module docstring)."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    # Process metrics are per process and not merged; these are the serving process's.
    ProcessCollector(registry=registry)
    return registry


@api.op(
    "GET",
    "/metrics",
    "Prometheus metrics (text format)",
    tag="operations",
    roles=OPS,
    media_type="text/plain",
)
async def metrics(req: Req) -> Response:
    registry: CollectorRegistry = req.request.app.state.registry
    body = await trio.to_thread.run_sync(generate_latest, registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


@api.op(
    "GET",
    "/healthz",
    "Liveness: the process answers",
    tag="operations",
    roles=PUBLIC,
    response=s.Health,
)
async def healthz(req: Req) -> s.Health:
    return s.Health(status="ok")


async def readiness(ctx: AdminContext) -> dict[str, str]:
    checks: dict[str, str] = {}
    cur = ctx.currency
    # A real round trip through the ledger writer: an idempotent create of the
    # suspense account commits nothing new but proves the writer commits.
    try:
        with trio.fail_after(READY_TIMEOUT_S):
            r = await ctx.ledger.execute(
                CreateAccount(suspense_account_id(cur), AccountKind.SUSPENSE, cur, "demo funding")
            )
        checks["ledger"] = "ok" if r.ok else f"refused: {r.code}"
    except trio.TooSlowError:
        checks["ledger"] = "timeout"
    except LedgerError as exc:
        checks["ledger"] = f"error: {exc}"
    if ctx.hsm is None:
        checks["hsm"] = "not configured"
    else:
        up = [n.name for n in ctx.hsm.pool.nodes if n.up]
        checks["hsm"] = "ok" if up else "no HSM in rotation"
    if ctx.switch is not None:
        lst = ctx.switch.listeners
        listening = lst is not None and bool(lst.addresses) and not lst.draining
        checks["listeners"] = "ok" if listening else "not listening"
    return checks


@api.op(
    "GET",
    "/readyz",
    "Readiness: ledger writable, an HSM healthy, listeners up (503 when not)",
    tag="operations",
    roles=OPS,
    response=s.Readiness,
)
async def readyz(req: Req) -> Response:
    t0 = time.monotonic()
    checks = await readiness(req.ctx)
    bad = {k: v for k, v in checks.items() if v not in ("ok", "not configured")}
    checks["elapsed_ms"] = f"{(time.monotonic() - t0) * 1000:.1f}"
    body = s.Readiness(status="not ready" if bad else "ready", checks=checks)
    return json_response(body, 503 if bad else 200)
