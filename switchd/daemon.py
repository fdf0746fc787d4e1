"""The switch process: wire the parts together, serve, and shut down cleanly.

Start-up order: the switch database (migrations), the HSM (embedded software
HSM or a pool to external ones), the ledger (migrations, writer), the demo
data on first start, the journal's repair (rows a crash lost, rebuilt from
the ledger: journal_repair.py), the reference data, then the listeners,
last, so that no terminal is accepted before everything it needs is up.

Signals: SIGTERM/SIGINT drain (stop accepting, finish every transaction in
flight and answer it, flush the journal and the ledger, exit 0); SIGHUP
reloads the configuration file's routing table, issuers, limits and
parameters, and the reference data, without dropping a connection.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
from pathlib import Path

import msgspec
import trio

from admin_api.context import AdminContext
from admin_api.migrations import ensure_demo_tokens
from admin_api.migrations import migrate as admin_migrate
from admin_api.server import serve_admin
from hsm.client import open_hsm_client
from hsm.lmk import load_lmk
from hsm.pool import Address
from hsm.server import HsmServer, serve_hsm
from hsm.testing import key_under_lmk
from switchd import config as config_mod
from switchd import demo, gcpolicy, journal_repair, looplag, shared_writer, store
from switchd.config import Config, ConfigError, kek_bytes
from switchd.connection import connection_handler
from switchd.db import Database, PostgresDatabase, SqliteDatabase
from switchd.journal import Journal
from switchd.journal_writer import DatabaseSpec, JournalWriter
from switchd.jsonlog import TXN_LOG
from switchd.ledger import Ledger, LedgerConfig, PostgresConfig, SqliteConfig, open_ledger
from switchd.listener import Listeners
from switchd.processor import Processor
from switchd.services import Services
from switchd.supervisor import REPLACES_DEAD_ENV

log = logging.getLogger("switchd")


def ledger_config(cfg: Config) -> LedgerConfig:
    """The ledger's configuration; in a worker of `switchd run --workers N`, with
    the supervisor's shared writer (shared_writer.py)."""
    return shared_writer.worker_config(LedgerConfig(
        backend=cfg.ledger.backend,
        data_dir=cfg.data_dir,
        sqlite=SqliteConfig(path=cfg.ledger.sqlite_path),
        postgres=PostgresConfig(
            dsn=cfg.ledger.postgres_dsn,
            schema=cfg.ledger.postgres_schema,
            pool_max=cfg.ledger.pool_size,
        ),
        writer=cfg.ledger.writer,
    ))


def open_database(cfg: Config) -> Database:
    if cfg.ledger.backend == "postgres":
        return PostgresDatabase(
            cfg.ledger.postgres_dsn, cfg.ledger.postgres_schema + "_switch", cfg.ledger.pool_size
        )
    return SqliteDatabase(Path(cfg.data_dir) / "switch.sqlite")


def database_spec(cfg: Config) -> DatabaseSpec:
    """What a child process needs to open the database `open_database` opens."""
    if cfg.ledger.backend == "postgres":
        return DatabaseSpec("postgres", postgres_dsn=cfg.ledger.postgres_dsn,
                            postgres_schema=cfg.ledger.postgres_schema + "_switch")  # fmt: skip
    return DatabaseSpec("sqlite", sqlite_path=str(Path(cfg.data_dir) / "switch.sqlite"))


class Switch:
    """A running switch; ``addresses`` are the terminal listeners' (host, port)."""

    def __init__(
        self, cfg: Config, config_path: str | None = None, *, worker: bool = False,
        prepare_only: bool = False,
    ) -> None:  # fmt: skip
        self.cfg = cfg
        self.config_path = config_path
        # A worker shares its ports with its siblings (see supervisor.py).
        self.worker = worker
        # Only migrations and the demo data, then return: the supervisor does
        # this once so that workers never race to create the same rows.
        self.prepare_only = prepare_only
        self.addresses: list[tuple[str, int]] = []
        self.hsm_address: str = ""
        self.admin_port: int | None = None
        self.listeners: Listeners | None = None
        self.services: Services | None = None
        self.processor: Processor | None = None
        self._stopped = trio.Event()

    def stop(self) -> None:
        """Begin a graceful shutdown (what SIGTERM does)."""
        if self.listeners is not None:
            self.listeners.drain()
        self._stopped.set()

    def reload(self) -> None:
        """What SIGHUP does: re-read the configuration's reloadable parts."""
        if self.config_path is None or self.services is None:
            return
        try:
            new = config_mod.load(self.config_path)
        except ConfigError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            return
        # Listeners, HSM and ledger are fixed for the process's life; the rest may change.
        cfg = msgspec.structs.replace(
            self.cfg, routing=new.routing, issuers=new.issuers, limits=new.limits,
            parameters=new.parameters, transactions=new.transactions,
        )  # fmt: skip
        self.cfg = cfg
        self.services.cfg = cfg
        self.services.reload_issuers()
        assert self.processor is not None and self.listeners is not None
        self.processor.cfg = cfg
        self.processor.admission.limit = cfg.transactions.max_in_flight
        self.listeners.cfg = msgspec.structs.replace(self.listeners.cfg, terminals=new.terminals)
        self.services.store.version = -1  # reload reference data on the next poll
        log.info("configuration reloaded from %s", self.config_path)

    def _raise_fd_limit(self) -> None:
        """Thousands of terminals need thousands of descriptors: take the hard limit."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        # Besides terminals: the HSM pool, database files, the admin listener.
        if hard < self.cfg.terminals.max_connections + 100:
            log.warning("file descriptor limit %d is below terminals.max_connections + 100; "
                        "connections beyond it will fail to be accepted", hard)  # fmt: skip

    async def run(self, *, task_status: trio.TaskStatus[Switch] = trio.TASK_STATUS_IGNORED
                  ) -> None:  # fmt: skip
        cfg = self.cfg
        self._raise_fd_limit()
        Path(cfg.data_dir).mkdir(parents=True, exist_ok=True)
        db = open_database(cfg)
        try:
            await store.migrate(db)
            await admin_migrate(db)
            if cfg.demo.enabled:
                await ensure_demo_tokens(db)
            async with trio.open_nursery() as outer:
                lmk = None
                addresses: list[Address]
                if cfg.hsm.embedded:
                    lmk = load_lmk(cfg.hsm.lmk)
                    # The switch reaches its software HSM in process (hsm/local.py);
                    # the same HSM also listens on loopback for operators' tools.
                    port = await outer.start(serve_hsm, lmk, "127.0.0.1", 0, cfg.hsm.header_len)
                    addresses = [HsmServer(lmk, cfg.hsm.header_len)]
                    self.hsm_address = f"127.0.0.1:{port}"
                else:
                    addresses = list(cfg.hsm.addresses)
                    self.hsm_address = ",".join(cfg.hsm.addresses)
                async with open_hsm_client(
                    addresses, pool_size=cfg.hsm.pool_size, timeout=cfg.hsm.timeout_s,
                    header_len=cfg.hsm.header_len,
                ) as hsm, open_ledger(ledger_config(cfg)) as ledger:  # fmt: skip
                    await self._serve(cfg, db, hsm, ledger, lmk, task_status)
                outer.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await db.aclose()

    async def _serve(self, cfg, db, hsm, ledger, lmk, task_status) -> None:  # type: ignore[no-untyped-def]
        kek = kek_bytes(cfg)
        pan_key = cfg.security.pan_key.encode()
        if cfg.security.kek_lmk:
            kek_zmk_lmk = cfg.security.kek_lmk
        elif lmk is not None:
            # Embedded HSM only: the KEK's ZMK form is computed from the LMK in
            # this process. An external HSM's operator sets security.kek_lmk.
            kek_zmk_lmk = key_under_lmk(lmk, "000", kek)
        else:
            raise ConfigError("security.kek_lmk is needed with an external HSM - at `$.security`")
        st = store.Store(db)
        if cfg.demo.enabled:
            tmk_lmk = cfg.demo.tmk_lmk or (
                key_under_lmk(lmk, "002", demo.DEMO_TMK) if lmk is not None else ""
            )
            if not tmk_lmk:
                raise ConfigError("demo.tmk_lmk is needed with an external HSM - at `$.demo`")
            await demo.ensure(cfg, st, ledger, hsm, tmk_lmk, pan_key)
        if not self.worker or os.environ.get(REPLACES_DEAD_ENV):
            # Before any terminal is served; with --workers, in the
            # supervisor's preparation (prepare_only), and in a worker that
            # replaces one that died (its last rows may be lost), not in
            # every worker at every start.
            await self._repair_journal(db, ledger)
        if self.prepare_only:
            return
        await st.load()
        # What is alive now lives as long as the process: out of the
        # collector's sight from here on (see gcpolicy.py).
        gcpolicy.freeze_startup()
        # In a worker of `switchd run --workers N`, the supervisor's shared writer.
        writer = (JournalWriter(database_spec(cfg), shared_writer.journal_socket())
                  if cfg.ledger.writer == "process" else None)  # fmt: skip
        try:
            if writer is not None:
                await writer.start()  # inside the try: a child that fails to start is reaped
            await self._serve_terminals(cfg, db, st, Journal(db, writer), ledger, hsm, kek,
                                        kek_zmk_lmk, pan_key, task_status)  # fmt: skip
        finally:
            if writer is not None:
                with trio.CancelScope(shield=True):
                    await writer.aclose()
        log.info("switch stopped cleanly")

    async def _repair_journal(self, db: Database, ledger: Ledger) -> None:
        """Rebuild the journal rows a crash lost from the ledger (journal_repair.py)."""
        try:
            await journal_repair.repair(db, ledger)
        except Exception:
            # No money depends on it: serve anyway, and say what is missing.
            log.exception("journal repair failed: transactions answered just before the last"
                          " crash may be missing from transaction search")  # fmt: skip

    async def _serve_terminals(self, cfg, db, st, journal, ledger, hsm, kek, kek_zmk_lmk,  # type: ignore[no-untyped-def]
                               pan_key, task_status) -> None:  # fmt: skip
        self.services = Services(
            cfg=cfg, store=st, journal=journal, ledger=ledger, hsm=hsm, kek=kek,
            kek_zmk_lmk=kek_zmk_lmk, pan_key=pan_key,
        )  # fmt: skip
        self.processor = Processor(self.services)
        self.listeners = Listeners(
            cfg, connection_handler(self.processor.handle), reuse_port=self.worker
        )
        async with trio.open_nursery() as background:
            background.start_soon(db.run_batcher)
            background.start_soon(journal.run)
            background.start_soon(journal.run_loader)
            background.start_soon(self.processor.admission.run)
            background.start_soon(self.processor.deadlines.run)
            background.start_soon(TXN_LOG.run)
            background.start_soon(st.watch)
            background.start_soon(self._signals)
            background.start_soon(gcpolicy.run_schedule)
            background.start_soon(looplag.watch)
            # With --workers, worker 0 serves the API: /metrics aggregates all.
            if cfg.admin.enabled and os.environ.get("SWITCHD_WORKER", "0") == "0":
                # In the background nursery: the API outlives the terminals'
                # drain, so /readyz can say "draining" (503) meanwhile.
                self.admin_port = await background.start(
                    serve_admin, AdminContext.from_services(self.services, self),
                    cfg.admin.host, cfg.admin.port,
                )  # fmt: skip
            async with trio.open_nursery() as serving:
                self.addresses = await serving.start(self.listeners.serve)
                log.info("terminal listeners on %s",
                         ", ".join(f"{h}:{p}" for h, p in self.addresses))  # fmt: skip
                task_status.started(self)
            # Drained: every connection has answered and closed.
            with trio.move_on_after(30):
                await journal.flush()
            background.cancel_scope.cancel()

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    self.reload()
                else:
                    log.info("signal %s: draining", signal.Signals(signum).name)
                    self.stop()
