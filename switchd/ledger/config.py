"""Ledger configuration, decoded from the `[ledger]` table of switchd.toml."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import msgspec


class SqliteConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    #: The database file; relative paths are under the data directory.
    path: str = "ledger.sqlite3"


class PostgresConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    dsn: str = "host=127.0.0.1 port=5432 dbname=switchd"
    #: A schema to use (and create) instead of the search_path default.
    schema: str | None = None
    pool_min: int = 1
    pool_max: int = 8
    connect_timeout_s: float = 10.0


class LedgerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    backend: Literal["sqlite", "postgres"] = "sqlite"
    data_dir: str = "data"
    sqlite: SqliteConfig = SqliteConfig()
    postgres: PostgresConfig = PostgresConfig()
    #: Most groups in one commit. Bounds a commit's latency and memory; beyond
    #: a few thousand the fsync is already amortized to nothing.
    max_batch: int = 4096
    #: How often the sweeper releases expired holds.
    expiry_interval_s: float = 1.0
    #: Where batches are applied: "thread" (a worker thread of this process)
    #: or "process" (a child process of its own, off this process's GIL; see
    #: writer_process.py). Reads run in this process either way.
    writer: Literal["thread", "process"] = "thread"
    #: With writer = "process": the Unix socket of a writer shared by several
    #: processes (set by `switchd run --workers N`, whose supervisor starts
    #: it) instead of a child of this process's own. Empty: our own.
    writer_socket: str = ""

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError("ledger.max_batch must be at least 1")
        if self.expiry_interval_s <= 0:
            raise ValueError("ledger.expiry_interval_s must be positive")

    def sqlite_path(self) -> Path:
        path = Path(self.sqlite.path)
        return path if path.is_absolute() else Path(self.data_dir) / path
