"""Merchant and card policies from the reference data, and a ledger slower than the deadline."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from fastpath import requests as rq
from switchd.config import Transactions
from switchd.daemon import Switch
from switchd.demo import demo_pan
from switchd.ledger import card_account_id

from .conftest import connect, small_config

MID = "898100012340001"


async def _reload(sw: Switch, sql: str, params: tuple) -> None:
    assert sw.services is not None
    await sw.services.store.db.execute(sql, params)
    await sw.services.store.load()


async def _sale(sw: Switch, seq: int, amount: int = 1_00, tid: str = "10000001") -> str:
    c = await connect(sw, tid)
    await c.sign_on()
    t = c.term
    r = await c.call(
        t.frame(*rq.sale(t.ident, rq.Card(demo_pan(seq), "3012"), t.next_stan(), amount))
    )
    return r.rc


async def test_kind_not_permitted_to_the_merchant_is_58(switch: Switch) -> None:
    await _reload(
        switch, "UPDATE merchants SET permitted = ? WHERE mid = ?", ("balance,refund", MID)
    )
    assert await _sale(switch, 5) == "58"


async def test_payment_method_without_sales_is_40(switch: Switch) -> None:
    await _reload(
        switch,
        "UPDATE payment_methods SET allow_sale = 0 WHERE mid = ? AND method = 'bankcard'",
        (MID,),
    )
    assert await _sale(switch, 5) == "40"


async def test_refund_disallowed_by_the_payment_method_is_40(switch: Switch) -> None:
    c = await connect(switch)
    await c.sign_on()
    t = c.term
    card = rq.Card(demo_pan(6), "3012")
    stan = t.next_stan()
    r = await c.call(t.frame(*rq.sale(t.ident, card, stan, 10_00)))
    orig = t.remember("sale", r, stan)
    await _reload(
        switch,
        "UPDATE payment_methods SET allow_refund = 0 WHERE mid = ? AND method = 'bankcard'",
        (MID,),
    )
    r = await c.call(t.frame(*rq.refund(t.ident, card, t.next_stan(), 5_00, orig)))
    assert r.rc == "40"


async def test_blocked_card_is_05_and_merchant_limit_is_61(switch: Switch) -> None:
    assert switch.services is not None
    card_id = str(card_account_id(demo_pan(7), switch.services.pan_key))
    await _reload(switch, "UPDATE cards SET status = 'blocked' WHERE card_id = ?", (card_id,))
    assert await _sale(switch, 7) == "05"
    await _reload(switch, "UPDATE merchants SET max_amount = 99 WHERE mid = ?", (MID,))
    assert await _sale(switch, 8, 1_00, tid="10000002") == "61"


async def test_inactive_terminal_is_97(switch: Switch) -> None:
    await _reload(switch, "UPDATE terminals SET status = 'inactive' WHERE tid = ?", ("10000001",))
    c = await connect(switch)
    assert (await c.call(c.term.sign_on_frame())).rc == "97"


@pytest.fixture
async def hasty(tmp_path: Path) -> AsyncIterator[Switch]:
    """A switch whose transactions must be done within 0.5 s."""
    sw = Switch(small_config(tmp_path, transactions=Transactions(timeout_s=0.5)))
    async with trio.open_nursery() as nursery:
        await nursery.start(sw.run)
        yield sw
        sw.stop()


async def test_ledger_slower_than_the_deadline_is_98_and_undone(hasty: Switch) -> None:
    sw = hasty
    assert sw.services is not None
    ledger = sw.services.ledger
    real = ledger.submit_linked
    slow = {"on": False}

    async def slow_submit(ops):  # type: ignore[no-untyped-def]
        results = await real(ops)
        if slow["on"]:
            # The verdict arrives only after the deadline, as a slow commit's
            # would: the engine's wait for a queued operation is not cancellable.
            with trio.CancelScope(shield=True):
                await trio.sleep(1.0)
        return results

    ledger.submit_linked = slow_submit  # type: ignore[method-assign]
    c = await connect(sw)
    await c.sign_on()
    t = c.term
    card = rq.Card(demo_pan(9), "3012")
    slow["on"] = True
    r = await c.call(t.frame(*rq.sale(t.ident, card, t.next_stan(), 3_00)))
    slow["on"] = False
    assert r.rc == "98" and r.mac_ok
    acct = await ledger.account(card_account_id(demo_pan(9), sw.services.pan_key))
    assert acct is not None and acct.available == 100_000_00
    assert await ledger.audit() == []


async def test_a_participant_stuck_past_the_deadline_is_96_in_time(hasty: Switch) -> None:
    """A step with no timeout of its own (here the journal's lookup, made to hang)
    is cut by the transaction's deadline: 96, signed, nothing posted, and the
    next request is served as usual."""
    sw = hasty
    assert sw.services is not None
    journal = sw.services.journal
    real = journal.lookup
    stuck = {"on": False}

    async def lookup(*args):  # type: ignore[no-untyped-def]
        if stuck["on"]:
            await trio.sleep_forever()
        return await real(*args)

    journal.lookup = lookup  # type: ignore[method-assign]
    c = await connect(sw)
    await c.sign_on()
    t = c.term
    card = rq.Card(demo_pan(10), "3012")
    stuck["on"] = True
    started = trio.current_time()
    with trio.fail_after(5):
        r = await c.call(t.frame(*rq.sale(t.ident, card, t.next_stan(), 3_00)))
    assert r.rc == "96" and r.mac_ok
    assert 0.5 <= trio.current_time() - started < 1.5
    stuck["on"] = False
    r = await c.call(t.frame(*rq.sale(t.ident, card, t.next_stan(), 3_00)))
    assert r.rc == "00"
    acct = await sw.services.ledger.account(card_account_id(demo_pan(10), sw.services.pan_key))
    assert acct is not None and acct.available == 100_000_00 - 3_00
    assert len(sw.processor.deadlines) == 0  # type: ignore[union-attr]
