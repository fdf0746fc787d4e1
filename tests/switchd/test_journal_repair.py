"""Journal rows a crash lost, rebuilt from the ledger when the switch starts again.

A switch approves sales; the journal rows of some are deleted (what a
process killed within the journal's linger leaves: answered, in the ledger,
not journaled); a new switch on the same databases finds them again in
transaction search and the ERP's payment lookup, answers a repeat from the
ledger, and a second repair, or a clean restart, rebuilds nothing.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
import trio

from fastpath import requests as rq
from switchd import journal_repair
from switchd.config import Config, Ledger
from switchd.context import auth_code_of, mask_pan, rrn_of
from switchd.daemon import Switch
from switchd.demo import demo_pan
from switchd.ledger import card_account_id

from .conftest import Conn, connect, small_config
from .test_postgres import DSN, _pg_up

MID = "898100012340001"
PIN = "123456"
ADMIN = {"Authorization": "Bearer demo-admin-token"}


@pytest.fixture(params=["sqlite", "postgres"])
def cfg(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Config]:
    if request.param == "sqlite":
        yield small_config(tmp_path / "var")
        return
    if not _pg_up():
        pytest.skip("no PostgreSQL at 127.0.0.1:5432")
    schema = f"t_{uuid.uuid4().hex[:10]}"
    yield small_config(tmp_path / "var", ledger=Ledger(backend="postgres", postgres_dsn=DSN,
                                                       postgres_schema=schema))  # fmt: skip
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}_switch" CASCADE')


def card(seq: int) -> rq.Card:
    return rq.Card(demo_pan(seq), "3012")


async def journal_rows(sw: Switch, tid: str) -> dict[tuple[int, bool], tuple]:  # type: ignore[type-arg]
    """The terminal's journal rows by (STAN, reversal), as the database holds them."""
    assert sw.services is not None
    await sw.services.journal.flush()
    rows = await sw.services.journal.db.fetchall(
        "SELECT stan, reversal, kind, rc, amount, masked_pan, rrn, auth_code, response, created_at"
        " FROM journal WHERE tid = ?",
        (tid,),
    )
    return {(r[0], bool(r[1])): r[2:] for r in rows}


async def lose_journal_rows(sw: Switch, tid: str, keys: list[tuple[int, bool]]) -> None:
    """What a process killed within the journal's linger leaves: answered, in the
    ledger, and no journal row."""
    assert sw.services is not None
    await sw.services.journal.flush()
    for stan, rev in keys:
        await sw.services.journal.db.execute(
            "DELETE FROM journal WHERE tid = ? AND stan = ? AND reversal = ?", (tid, stan, int(rev))
        )


async def balance(sw: Switch, seq: int) -> int:
    assert sw.services is not None
    acct = await sw.services.ledger.account(card_account_id(demo_pan(seq), sw.services.pan_key))
    assert acct is not None
    return acct.balance


async def test_lost_rows_are_rebuilt_at_start_up(
    cfg: Config, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="switchd.journal")
    # 1. A switch approves four sales; the last is reversed by its terminal.
    sw = Switch(cfg)
    async with trio.open_nursery() as nursery:
        await nursery.start(sw.run)
        assert not [r for r in caplog.records if "rebuilt" in r.getMessage()]  # a fresh start
        c = await connect(sw, "10000001", MID)
        await c.sign_on()
        t = c.term
        sales: dict[int, tuple[bytes, str, str]] = {}  # STAN -> (frame, RRN, auth code)
        for seq, amount in ((21, 10_00), (22, 20_00), (23, 30_00), (24, 40_00)):
            stan = t.next_stan()
            mti, fields = rq.sale(t.ident, card(seq), stan, amount, PIN, t.pik)
            frame = t.frame(mti, fields)
            r = await c.call(frame)
            assert r.rc == "00"
            sales[int(stan)] = (frame, r.msg.rrn or "", (r.msg.auth_code or "").strip())
        r = await c.call(t.frame(*rq.reversal(fields)))
        assert r.rc == "00"
        s1, s2, s3, s4 = sales
        before = await journal_rows(sw, t.tid)
        assert before[(s4, True)][1] == "00"
        # The crash window: sales 1, 2 and 4 and the reversal lose their rows.
        await lose_journal_rows(sw, t.tid, [(s1, False), (s2, False), (s4, False), (s4, True)])
        sw.stop()

    # 2. Started again: the rows are back, marked as rebuilt (no answer bytes).
    caplog.clear()
    sw = Switch(cfg)
    async with trio.open_nursery() as nursery:
        await nursery.start(sw.run)
        assert sw.services is not None
        rebuilt = [r.getMessage() for r in caplog.records if "rebuilt" in r.getMessage()]
        assert len(rebuilt) == 1 and "3 rows" in rebuilt[0], rebuilt
        after = await journal_rows(sw, t.tid)
        for stan, amount, seq in ((s1, 10_00, 21), (s2, 20_00, 22)):
            _, rrn, auth = sales[stan]
            kind, rc, amt, masked, row_rrn, row_auth, response, _ = after[(stan, False)]
            assert (kind, rc, amt, row_rrn, row_auth, response) == (
                "sale", "00", amount, rrn, auth, ""
            )
            assert masked == mask_pan(demo_pan(seq))
            assert rrn == rrn_of(t.tid, int(t.batch), stan, False)
            assert auth == auth_code_of(t.tid, int(t.batch), stan)
        assert after[(s3, False)] == before[(s3, False)]  # never lost: untouched
        # The reversed sale is not claimed approved; its reversal is rebuilt.
        assert (s4, False) not in after
        kind, rc, amt, _, rrn, _, response, _ = after[(s4, True)]
        assert (kind, rc, amt, rrn, response) == (
            "reversal", "00", 40_00, rrn_of(t.tid, int(t.batch), s4, True), ""
        )
        assert not any(demo_pan(21) in rec.getMessage() for rec in caplog.records)

        # Transaction search and the ERP's payment lookup find them.
        base = f"http://127.0.0.1:{sw.admin_port}"
        async with httpx.AsyncClient(base_url=base, timeout=10, headers=ADMIN) as http:
            _, rrn1, _ = sales[s1]
            found = (await http.get("/v1/transactions", params={"rrn": rrn1})).json()["items"]
            assert [(x["rrn"], x["amount"], x["masked_pan"], x["approved"]) for x in found] == [
                (rrn1, 10_00, mask_pan(demo_pan(21)), True)
            ]
            r = await http.post(f"/v1/merchants/{MID}/products",
                                json={"code": "TEA", "name": "Tea", "price": 10_00})  # fmt: skip
            assert r.status_code == 201, r.text
            doc = {"number": "S-1", "date": "2026-01-02", "rrn": rrn1,
                   "lines": [{"code": "TEA", "quantity": 1}]}  # fmt: skip
            r = await http.post(f"/v1/merchants/{MID}/sales-documents", json=doc)
            assert r.status_code == 201, r.text
            assert r.json()["payment"]["amount"] == 10_00

        # A repeat of sale 1 (same TID, batch, STAN, bytes) is answered from the
        # ledger as the duplicate it is: same RRN, nothing posted twice.
        paid = await balance(sw, 21)
        c = await connect(sw, "10000001", MID)
        c.term = t
        frame, rrn1, auth1 = sales[s1]
        r = await c.call(frame)
        assert r.rc == "00" and r.mac_ok
        assert (r.msg.rrn, (r.msg.auth_code or "").strip()) == (rrn1, auth1)
        assert await balance(sw, 21) == paid
        assert await sw.services.ledger.audit() == []
        # Its real answer has replaced the rebuilt row; a second repeat replays it.
        replaced = (await journal_rows(sw, t.tid))[(s1, False)]
        assert replaced[6] != "" and replaced[7] == after[(s1, False)][7]  # created_at kept
        r = await c.call(frame)
        assert r.rc == "00" and r.msg.rrn == rrn1
        assert await balance(sw, 21) == paid

        # A refund of sale 2 finds its original (in the ledger: the row has no answer).
        orig2 = rq.Original(batch=t.batch, stan=f"{s2:06d}", rrn=sales[s2][1],
                            auth_code=sales[s2][2])  # fmt: skip
        r = await c.call(t.frame(*rq.refund(t.ident, card(22), t.next_stan(), 5_00, orig2)))
        assert r.rc == "00"

        # A second repair finds nothing to do.
        assert await journal_repair.repair(sw.services.journal.db, sw.services.ledger) == 0
        sw.stop()

    # 3. A clean restart rebuilds nothing.
    caplog.clear()
    sw = Switch(cfg)
    async with trio.open_nursery() as nursery:
        await nursery.start(sw.run)
        assert not [r for r in caplog.records if "rebuilt" in r.getMessage()]
        sw.stop()


async def test_window_starts_before_the_newest_row(tmp_path: Path) -> None:
    """Read from the newest journal row less the margin; an empty journal: the last hour."""
    sw = Switch(small_config(tmp_path / "var"))
    async with trio.open_nursery() as nursery:
        await nursery.start(sw.run)
        assert sw.services is not None
        db = sw.services.journal.db
        now = 10_000 * 10**6
        assert await journal_repair.window_start(db, now) == now - 3600 * 10**6
        c: Conn = await connect(sw, "10000002", MID)
        await c.sign_on()
        t = c.term
        r = await c.call(t.frame(*rq.sale(t.ident, card(25), t.next_stan(), 1_00, PIN, t.pik)))
        assert r.rc == "00"
        (newest,) = [row[-1] for row in (await journal_rows(sw, t.tid)).values()]
        later = newest + 3600 * 10**6
        assert await journal_repair.window_start(db, later) == newest - 60 * 10**6
        # A clock set back: never a window that starts after now.
        assert await journal_repair.window_start(db, newest - 10**6) == newest - 61 * 10**6
        sw.stop()
