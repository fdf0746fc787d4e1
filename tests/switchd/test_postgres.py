"""The whole switch on PostgreSQL: ledger and switch tables in their own schemas."""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg
import pytest
import trio

from fastpath import requests as rq
from switchd.config import Ledger
from switchd.daemon import Switch
from switchd.demo import demo_pan

from .conftest import connect, small_config

DSN = "postgresql://postgres@127.0.0.1:5432/test"


def _pg_up() -> bool:
    try:
        with psycopg.connect(DSN, connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


# CI starts PostgreSQL (.ci/run); a developer machine without it skips, saying why.
pytestmark = pytest.mark.skipif(not _pg_up(), reason="no PostgreSQL at 127.0.0.1:5432")


async def test_transactions_on_postgres(tmp_path: Path) -> None:
    schema = f"t_{uuid.uuid4().hex[:10]}"
    cfg = small_config(tmp_path, ledger=Ledger(backend="postgres", postgres_dsn=DSN,
                                               postgres_schema=schema))  # fmt: skip
    try:
        sw = Switch(cfg)
        async with trio.open_nursery() as nursery:
            await nursery.start(sw.run)
            c = await connect(sw)
            await c.sign_on()
            t = c.term
            card = rq.Card(demo_pan(5), "3012")
            stan = t.next_stan()
            r = await c.call(t.frame(*rq.sale(t.ident, card, stan, 20_00, "123456", t.pik)))
            assert r.rc == "00" and r.mac_ok
            orig = t.remember("sale", r, stan)
            r = await c.call(t.frame(*rq.void(t.ident, card, t.next_stan(), 20_00, orig)))
            assert r.rc == "00"
            s = rq.settlement_totals(20_00, 1, 20_00, 1)
            r = await c.call(t.frame(*rq.settlement(t.ident, t.next_stan(), s)))
            assert r.msg.settlement_totals().code == 1
            assert sw.services is not None
            assert await sw.services.ledger.audit() == []
            sw.stop()
        # keys and data survive a restart on PostgreSQL too
        sw2 = Switch(cfg)
        async with trio.open_nursery() as nursery:
            await nursery.start(sw2.run)
            c2 = await connect(sw2)
            c2.term = t
            r = await c2.call(t.frame(*rq.balance(t.ident, card, t.next_stan())))
            assert r.rc == "00" and r.msg.get(54) == f"1002156C{100_000_00:012d}"
            sw2.stop()
    finally:
        with psycopg.connect(DSN, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}_switch" CASCADE')
