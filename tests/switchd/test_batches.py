"""The host owns the batch number (PROTOCOL.md §2 60.2, §3 settlement), over real sockets."""

from __future__ import annotations

import sqlite3

import pytest

from fastpath import requests as rq
from switchd.daemon import Switch
from switchd.ledger import CloseBatch

from .conftest import Conn
from .test_transactions import available, card, sale, signed_on

OPERATION_ERROR = "22"
SIGN_ON_AGAIN = 3


def processing(r) -> int:  # type: ignore[no-untyped-def]
    """The header's processing-requirement nibble (PROTOCOL.md §1)."""
    return r.msg.header[2] & 0x0F


async def settle(c: Conn, totals: str):  # type: ignore[no-untyped-def]
    t = c.term
    return await c.call(t.frame(*rq.settlement(t.ident, t.next_stan(), totals)))


async def test_a_sale_under_a_batch_the_host_never_opened_is_refused(switch: Switch) -> None:
    c = await signed_on(switch, "10000011")
    before = await available(switch, 31)
    c.term.batch = "000007"
    _, r = await sale(c, 31, 5_00)
    assert r.rc == OPERATION_ERROR and r.mac_ok
    assert processing(r) == SIGN_ON_AGAIN
    assert await available(switch, 31) == before
    # The sign-on it asks for gives the open batch back, and the sale goes through.
    r = await c.sign_on()
    assert r.msg.batch == "000001"
    _, r = await sale(c, 31, 5_00)
    assert r.rc == "00"
    assert await available(switch, 31) == before - 5_00


async def test_a_sale_under_the_closed_batch_is_refused(switch: Switch) -> None:
    c = await signed_on(switch, "10000012")
    _, r = await sale(c, 32, 7_00)
    assert r.rc == "00"
    r = await settle(c, rq.settlement_totals(7_00, 1, 0, 0))
    assert r.rc == "00" and r.msg.settlement_totals().code == 1
    before = await available(switch, 32)
    _, r = await sale(c, 32, 3_00)  # the terminal did not move to the next batch
    assert r.rc == OPERATION_ERROR and processing(r) == SIGN_ON_AGAIN
    assert await available(switch, 32) == before
    r = await c.sign_on()
    assert r.msg.batch == "000002"
    _, r = await sale(c, 32, 3_00)
    assert r.rc == "00" and r.msg.batch == "000002"


async def test_a_batch_closed_through_another_process_is_seen(switch: Switch) -> None:
    """Another worker settled the batch: this process's copy is stale and is re-read."""
    c = await signed_on(switch, "10000013")
    _, r = await sale(c, 33, 1_00)
    assert r.rc == "00"
    assert switch.services is not None
    result = await switch.services.ledger.execute(CloseBatch("10000013", 1))
    assert result.ok
    c.term.batch = "000002"
    _, r = await sale(c, 33, 2_00)
    assert r.rc == "00"


async def test_settlement_resent_for_the_closed_batch_gets_the_same_code(switch: Switch) -> None:
    c = await signed_on(switch, "10000014")
    await sale(c, 34, 4_00)
    wrong = rq.settlement_totals(9_99, 1, 0, 0)
    r = await settle(c, wrong)
    assert r.rc == "00" and r.msg.settlement_totals().code == 2
    # The terminal missed that answer and asks again (a new STAN): the same
    # verdict, and nothing more is closed.
    r = await settle(c, wrong)
    assert r.rc == "00" and r.mac_ok and r.msg.settlement_totals().code == 2
    assert (await c.sign_on()).msg.batch == "000002"


async def test_settlement_of_a_batch_that_is_not_open_closes_nothing(switch: Switch) -> None:
    c = await signed_on(switch, "10000015")
    _, r = await sale(c, 35, 6_00)
    assert r.rc == "00"
    c.term.batch = "000005"
    r = await settle(c, rq.settlement_totals(0, 0, 0, 0))
    assert r.rc == OPERATION_ERROR and r.mac_ok
    assert processing(r) == SIGN_ON_AGAIN
    r = await c.sign_on()
    assert r.msg.batch == "000001"  # still open, with its sale
    r = await settle(c, rq.settlement_totals(6_00, 1, 0, 0))
    assert r.rc == "00" and r.msg.settlement_totals().code == 1
    assert (await c.sign_on()).msg.batch == "000002"


async def test_a_reversal_is_not_refused_for_its_batch(switch: Switch) -> None:
    """A reversal names the original's batch; it is undone even after that batch closed."""
    c = await signed_on(switch, "10000016")
    t = c.term
    before = await available(switch, 36)
    stan = t.next_stan()
    mti, fields = rq.sale(t.ident, card(36), stan, 8_00, "123456", t.pik)
    r = await c.call(t.frame(mti, fields))
    assert r.rc == "00"
    r = await settle(c, rq.settlement_totals(8_00, 1, 0, 0))
    assert r.msg.settlement_totals().code == 1
    r = await c.call(t.frame(*rq.reversal(fields, "98")))
    assert r.rc == "00"
    assert await available(switch, 36) == before


async def test_a_settlement_whose_record_fails_can_be_sent_again(
    switch: Switch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The verdict is stored before the batch closes: a failure there leaves the batch open."""
    c = await signed_on(switch, "10000010")
    await sale(c, 30, 2_00)
    assert switch.services is not None
    db = switch.services.store.db
    real = db.execute

    async def failing(sql: str, params: object = ()) -> object:
        if sql.startswith("INSERT INTO settlements"):
            raise sqlite3.OperationalError("disk full")
        return await real(sql, params)

    monkeypatch.setattr(db, "execute", failing)
    r = await settle(c, rq.settlement_totals(2_00, 1, 0, 0))
    assert r.rc == "96" and r.mac_ok
    monkeypatch.undo()
    r = await settle(c, rq.settlement_totals(2_00, 1, 0, 0))
    assert r.rc == "00" and r.msg.settlement_totals().code == 1
    assert (await c.sign_on()).msg.batch == "000002"


async def test_each_part_of_the_totals_gets_its_own_code(switch: Switch) -> None:
    """F48: domestic and foreign totals are compared apart; only the domestic one is off."""
    c = await signed_on(switch, "10000020")
    await sale(c, 37, 3_00)
    r = await settle(c, rq.settlement_totals(9_99, 1, 0, 0))
    assert r.rc == "00"
    totals = r.msg.settlement_totals()
    assert (totals.code, totals.foreign_code) == (2, 1)
    r = await settle(c, rq.settlement_totals(9_99, 1, 0, 0))  # resent: compared again
    totals = r.msg.settlement_totals()
    assert (totals.code, totals.foreign_code) == (2, 1)
