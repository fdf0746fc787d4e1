"""Fixtures: every ledger test runs on a real SQLite file and on the local PostgreSQL.

PostgreSQL tests isolate themselves in a fresh schema (search_path), dropped
afterwards, so concurrent runs never collide. Without a reachable server they
skip, saying why; CI starts one (.ci/run).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from functools import cache

import psycopg
import pytest
from psycopg import sql

from switchd.ledger import LedgerConfig, PostgresConfig

_CANDIDATE_DSNS = [
    os.environ.get("SWITCHD_TEST_PG_DSN", ""),
    "host=127.0.0.1 port=5432 dbname=test user=postgres",
    "host=127.0.0.1 port=5432 dbname=test user=root",
    "host=127.0.0.1 port=5432 dbname=test",
]


@cache
def pg_dsn() -> str | None:
    for dsn in _CANDIDATE_DSNS:
        if not dsn:
            continue
        try:
            with psycopg.connect(dsn, connect_timeout=3):
                return dsn
        except psycopg.Error:
            continue
    return None


def drop_schema(dsn: str, schema: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def pg_config(schema: str, **kw: object) -> LedgerConfig:
    dsn = pg_dsn()
    assert dsn is not None
    return LedgerConfig(backend="postgres",
                        postgres=PostgresConfig(dsn=dsn, schema=schema, pool_max=4), **kw)  # type: ignore[arg-type]


def make_config(kind: str, tmp_path: object, **kw: object) -> Iterator[LedgerConfig]:
    if kind == "sqlite":
        yield LedgerConfig(data_dir=str(tmp_path), **kw)  # type: ignore[arg-type]
        return
    dsn = pg_dsn()
    if dsn is None:
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432 (start it, or .ci/run)")
    schema = f"ledger_test_{uuid.uuid4().hex[:12]}"
    try:
        yield pg_config(schema, **kw)
    finally:
        drop_schema(dsn, schema)


@pytest.fixture(params=["sqlite", "postgres"])
def config(request: pytest.FixtureRequest, tmp_path: object) -> Iterator[LedgerConfig]:
    yield from make_config(request.param, tmp_path, expiry_interval_s=0.2)
