"""Migrations run once, are recorded, and a newer database is refused."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio

from switchd.ledger import LedgerConfig, open_ledger
from switchd.ledger.ids import to_bytes
from switchd.ledger.migrations import CREATE_VERSION_TABLE, LATEST, MIGRATIONS, SchemaTooNew
from switchd.ledger.sqlite_backend import SqliteBackend

from .helpers import make_chart


def _versions(conn: Any, dialect: object) -> list[int]:
    return [r[0] for r in conn.execute("SELECT version FROM schema_migrations").fetchall()]


async def test_migrations_apply_once_and_keep_data(config: LedgerConfig) -> None:
    async with open_ledger(config) as ledger:
        chart = await make_chart(ledger)
        versions = await trio.to_thread.run_sync(ledger.backend.read, _versions)
        assert versions == list(range(1, LATEST + 1))
    async with open_ledger(config) as ledger:  # reopening applies nothing, loses nothing
        versions2 = await trio.to_thread.run_sync(ledger.backend.read, _versions)
        assert versions2 == versions
        assert (await ledger.account(chart.card)).balance == 100_000  # type: ignore[union-attr]


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    backend = SqliteBackend(path)
    backend.open()
    backend.close()
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (?, 'from the future', 0)",
                     (LATEST + 1,))
    with pytest.raises(SchemaTooNew):
        SqliteBackend(path).open()


async def test_upgrade_from_version_1_keeps_data(tmp_path: Path) -> None:
    """A database created by the first release upgrades in place on open."""
    path = tmp_path / "ledger.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute(CREATE_VERSION_TABLE)
    for stmt in MIGRATIONS[0].sqlite:
        conn.execute(stmt)
    conn.execute("INSERT INTO schema_migrations VALUES (1, 'v1', 0)")
    conn.execute("INSERT INTO accounts VALUES (?, 'suspense', '156', '', NULL, 0, 0, 5, 0, 0, 0)",
                 (to_bytes(7),))
    conn.commit()
    conn.close()
    async with open_ledger(LedgerConfig(data_dir=str(tmp_path))) as ledger:
        assert (await ledger.account(7)).balance == 5  # type: ignore[union-attr]
        versions = await trio.to_thread.run_sync(ledger.backend.read, _versions)
        assert versions == list(range(1, LATEST + 1))
