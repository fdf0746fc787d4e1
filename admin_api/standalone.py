"""`switchd admin`: the admin API on its own, against the switch's databases.

It opens what the switch opens (the switch database, the ledger, and an HSM:
the configured external ones, or with the embedded setup a software HSM of
its own on the same LMK, so keys it imports are usable by the switch) and
serves until SIGINT/SIGTERM. Changes reach a running switch through the
``data_version`` bump.
"""

from __future__ import annotations

import logging
import signal
from contextlib import AsyncExitStack
from pathlib import Path

import trio

from hsm.client import open_hsm_client
from hsm.lmk import load_lmk
from hsm.server import serve_hsm
from hsm.testing import key_under_lmk
from switchd import store
from switchd.config import Config, kek_bytes
from switchd.daemon import ledger_config, open_database
from switchd.ledger import open_ledger

from .context import AdminContext
from .migrations import ensure_demo_tokens, migrate
from .server import serve_admin

log = logging.getLogger("admin_api")


async def _until_signalled() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("signal %s: stopping the admin API", signal.Signals(signum).name)
            return


async def run(cfg: Config, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the admin API on cfg.admin until SIGINT/SIGTERM; reports the bound port."""
    Path(cfg.data_dir).mkdir(parents=True, exist_ok=True)
    db = open_database(cfg)
    try:
        await store.migrate(db)
        await migrate(db)
        if cfg.demo.enabled:
            await ensure_demo_tokens(db)
        # The software HSM's nursery outlives the client, ledger and server inside it.
        async with trio.open_nursery() as hsm_nursery:
            kek_zmk_lmk = cfg.security.kek_lmk
            if cfg.hsm.embedded:
                lmk = load_lmk(cfg.hsm.lmk)
                hsm_port = await hsm_nursery.start(
                    serve_hsm, lmk, "127.0.0.1", 0, cfg.hsm.header_len
                )
                addresses = [f"127.0.0.1:{hsm_port}"]
                kek_zmk_lmk = kek_zmk_lmk or key_under_lmk(lmk, "000", kek_bytes(cfg))
            else:
                addresses = list(cfg.hsm.addresses)
            async with AsyncExitStack() as stack:
                hsm = None
                if addresses:
                    hsm = await stack.enter_async_context(
                        open_hsm_client(
                            addresses,
                            pool_size=cfg.hsm.pool_size,
                            timeout=cfg.hsm.timeout_s,
                            header_len=cfg.hsm.header_len,
                        )
                    )
                ledger = await stack.enter_async_context(open_ledger(ledger_config(cfg)))
                ctx = AdminContext(
                    cfg=cfg,
                    db=db,
                    ledger=ledger,
                    pan_key=cfg.security.pan_key.encode(),
                    hsm=hsm,
                    kek_zmk_lmk=kek_zmk_lmk,
                )
                async with trio.open_nursery() as serving:
                    port = await serving.start(serve_admin, ctx, cfg.admin.host, cfg.admin.port)
                    task_status.started(port)
                    await _until_signalled()
                    serving.cancel_scope.cancel()
            hsm_nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await db.aclose()
