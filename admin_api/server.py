"""Serve the admin API with Hypercorn's trio worker, in the switch's event loop
or on its own (standalone.py)."""

from __future__ import annotations

import logging

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from .app import build_app
from .context import AdminContext
from .readers import open_reader

log = logging.getLogger("admin_api")

#: Seconds in-flight API requests get to finish when the server is cancelled.
GRACEFUL_S = 5.0


def hypercorn_config(host: str, port: int) -> HypercornConfig:
    cfg = HypercornConfig()
    cfg.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    # No access log: a card's path (/v1/cards/{pan}) holds a full PAN.
    cfg.accesslog = None
    cfg.graceful_timeout = GRACEFUL_S
    cfg.keep_alive_timeout = 30
    return cfg


async def serve_admin(
    ctx: AdminContext,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; `task_status.started` gets the bound port (port 0 works)."""
    own_reader = ctx.reader is None
    if own_reader:
        ctx.reader = open_reader(ctx.cfg, ctx.db)
    try:
        app = build_app(ctx)
        async with trio.open_nursery() as nursery:
            binds: list[str] = await nursery.start(serve, app, hypercorn_config(host, port))
            bound = int(binds[0].rsplit(":", 1)[1])
            log.info("admin API on %s:%d", host, bound)
            task_status.started(bound)
    finally:
        if own_reader and ctx.reader is not ctx.db and ctx.reader is not None:
            with trio.CancelScope(shield=True):
                await ctx.reader.aclose()
        if own_reader:
            ctx.reader = None
