"""Migrations run once, are recorded, and a newer database is refused."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio

from switchd.ledger import LedgerConfig, open_ledger
from switchd.ledger.migrations import LATEST, SchemaTooNew
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
