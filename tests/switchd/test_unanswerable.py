"""An approval that cannot be encoded after its money moved: undone, answered 96.

A terminal reads 96 as "declined, nothing done" and never reverses it, so the
switch must not leave the money posted. Over real sockets, with a real switch
(software HSM, SQLite ledger). The one thing forced is the encoding failure:
``Unencodable`` makes the encoder refuse the approval of one STAN, once (a
fault injection; in service it is a value the answer's field cannot hold, as
test_transactions' acquirer id that is not digits). The 96 sent in its place,
and every other answer, goes through the real encoder.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from fastpath import requests as rq
from fastpath.codec import Message, build_response
from fastpath.errors import EncodeError
from switchd import processor
from switchd.daemon import Switch
from switchd.demo import demo_pan
from switchd.ledger import CommitFailed, Op, fee_account_id, merchant_account_id

from .test_transactions import MID, PIN, _lose_journal_row, available, card, sale, signed_on

FULL = 100_000_00  # a demo card's balance


class Unencodable:
    """Fault injection: the encoder refuses the approval answering `stan`, once."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, stan: str) -> None:
        self.stan = stan
        self.broken = 0
        monkeypatch.setattr(processor, "build_response", self)

    def __call__(self, request: Message, mti: str, fields: dict[int, object],
                 *args: Any, **kwargs: Any) -> bytes:  # fmt: skip
        if not self.broken and fields.get(39) == "00" and request.stan == self.stan:
            self.broken += 1
            raise EncodeError("fault injected by the test", 32)
        return build_response(request, mti, fields, *args, **kwargs)


async def _balances(sw: Switch) -> tuple[int, int]:
    """The merchant's and the fee account's balances."""
    assert sw.services is not None
    ledger = sw.services.ledger
    merchant = await ledger.account(merchant_account_id(MID))
    fee = await ledger.account(fee_account_id("156"))
    assert merchant is not None and fee is not None
    return merchant.balance, fee.balance


async def test_a_sale_approved_but_unencodable_is_undone_and_answered_96(
    switch: Switch, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = await signed_on(switch)
    t = c.term
    before = await _balances(switch)
    stan = t.next_stan()
    mti, fields = rq.sale(t.ident, card(5), stan, 30_00, PIN, t.pik)
    fault = Unencodable(monkeypatch, stan)
    r = await c.call(t.frame(mti, fields))
    assert fault.broken == 1
    assert r.rc == "96" and r.mac_ok and r.msg.mti == "0210" and r.msg.stan == stan
    assert 38 not in r.msg  # no authorization code: nothing approved
    assert await available(switch, 5) == FULL
    assert await _balances(switch) == before
    # The terminal's retry of the same STAN: the same 96, nothing posted, no
    # stale approval (the ledger holds the undone sale under these ids).
    r = await c.call(t.frame(mti, fields))
    assert r.rc == "96" and r.mac_ok
    assert await available(switch, 5) == FULL
    # Had the terminal reversed it all the same, the undo is found done.
    r = await c.call(t.frame(*rq.reversal(fields, "98")))
    assert r.rc == "00" and r.mac_ok
    assert await available(switch, 5) == FULL
    assert await _balances(switch) == before
    # Tried again with a new STAN: approved, and posted once.
    _, r = await sale(c, 5, 30_00)
    assert r.rc == "00" and r.mac_ok
    assert await available(switch, 5) == FULL - 30_00


async def test_a_retry_the_journal_lost_is_not_approved_from_the_ledger(
    switch: Switch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the journal's 96 the retry runs again and the ledger answers it
    as a duplicate of the sale: undone since, it is refused, not approved."""
    c = await signed_on(switch, "10000002")
    t = c.term
    stan = t.next_stan()
    mti, fields = rq.sale(t.ident, card(6), stan, 20_00, PIN, t.pik)
    Unencodable(monkeypatch, stan)
    assert (await c.call(t.frame(mti, fields))).rc == "96"
    await _lose_journal_row(switch, t.tid, t.batch, stan)
    r = await c.call(t.frame(mti, fields))
    assert r.rc == "12" and r.mac_ok
    assert await available(switch, 6) == FULL


async def test_a_void_approved_but_unencodable_leaves_the_sale_standing(
    switch: Switch, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = await signed_on(switch, "10000003")
    t = c.term
    stan, r = await sale(c, 7, 50_00)
    orig = t.remember("sale", r, stan)
    vstan = t.next_stan()
    Unencodable(monkeypatch, vstan)
    r = await c.call(t.frame(*rq.void(t.ident, card(7), vstan, 50_00, orig)))
    assert r.rc == "96" and r.mac_ok
    assert await available(switch, 7) == FULL - 50_00  # the terminal holds it as not voided
    r = await c.call(t.frame(*rq.void(t.ident, card(7), t.next_stan(), 50_00, orig)))
    assert r.rc == "00" and r.mac_ok
    assert await available(switch, 7) == FULL


async def test_holds_and_completions_approved_but_unencodable_are_undone(
    switch: Switch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pre-authorization, completion, completion void and cancel: each one's
    posting undone, so the card stands as the terminal believes."""
    c = await signed_on(switch, "10000004")
    t = c.term

    async def call_unencodable(build: Any, *args: Any) -> str | None:
        stan = t.next_stan()
        Unencodable(monkeypatch, stan)
        r = await c.call(t.frame(*build(t.ident, card(8), stan, *args)))
        assert r.mac_ok
        return r.rc

    assert await call_unencodable(rq.preauth, 300_00, PIN, t.pik) == "96"
    assert await available(switch, 8) == FULL  # no hold left
    stan = t.next_stan()
    r = await c.call(t.frame(*rq.preauth(t.ident, card(8), stan, 300_00, PIN, t.pik)))
    assert r.rc == "00"
    hold = t.remember("preauth", r, stan)
    assert await available(switch, 8) == FULL - 300_00

    assert await call_unencodable(rq.completion, 250_00, hold) == "96"
    assert await available(switch, 8) == FULL - 300_00  # held again, not completed
    stan = t.next_stan()
    r = await c.call(t.frame(*rq.completion(t.ident, card(8), stan, 250_00, hold)))
    assert r.rc == "00"
    done = t.remember("completion", r, stan)
    assert await available(switch, 8) == FULL - 250_00

    assert await call_unencodable(rq.completion_void, 250_00, done) == "96"
    assert await available(switch, 8) == FULL - 250_00  # the completion stands
    r = await c.call(t.frame(*rq.completion_void(t.ident, card(8), t.next_stan(), 250_00, done)))
    assert r.rc == "00"
    assert await available(switch, 8) == FULL - 300_00

    assert await call_unencodable(rq.preauth_cancel, 300_00, hold) == "96"
    assert await available(switch, 8) == FULL - 300_00  # still held
    r = await c.call(t.frame(*rq.preauth_cancel(t.ident, card(8), t.next_stan(), 300_00, hold)))
    assert r.rc == "00"
    assert await available(switch, 8) == FULL


async def test_advices_and_reversals_are_not_undone(
    switch: Switch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refund and a completion advice are sent again until answered, and a
    reversal's undo is what was asked: the 96 leaves their posting as it is,
    and the repeat, once the fault has passed, is approved without posting again."""
    c = await signed_on(switch, "10000005")
    t = c.term
    stan, r = await sale(c, 9, 100_00)
    orig = t.remember("sale", r, stan)
    rstan = t.next_stan()
    refund = t.frame(*rq.refund(t.ident, card(9), rstan, 40_00, orig))
    Unencodable(monkeypatch, rstan)
    assert (await c.call(refund)).rc == "96"
    assert await available(switch, 9) == FULL - 60_00  # the refund stands
    r = await c.call(refund)  # the terminal sends its advice again
    assert r.rc == "00" and r.mac_ok
    assert await available(switch, 9) == FULL - 60_00  # credited once

    stan = t.next_stan()
    r = await c.call(t.frame(*rq.preauth(t.ident, card(10), stan, 100_00, PIN, t.pik)))
    hold = t.remember("preauth", r, stan)
    astan = t.next_stan()
    advice = t.frame(*rq.completion_advice(t.ident, card(10), astan, 90_00, hold))
    Unencodable(monkeypatch, astan)
    assert (await c.call(advice)).rc == "96"
    assert await available(switch, 10) == FULL - 90_00  # completed, and stays so
    assert (await c.call(advice)).rc == "00"
    assert await available(switch, 10) == FULL - 90_00

    stan = t.next_stan()
    mti, fields = rq.sale(t.ident, card(11), stan, 70_00, PIN, t.pik)
    assert (await c.call(t.frame(mti, fields))).rc == "00"
    Unencodable(monkeypatch, stan)  # the 0400 carries the sale's STAN
    reversal = t.frame(*rq.reversal(fields, "98"))
    r = await c.call(reversal)
    assert r.rc == "96" and r.msg.mti == "0410"
    assert await available(switch, 11) == FULL  # reversed, and stays so
    r = await c.call(reversal)
    assert r.rc == "00" and r.mac_ok
    assert await available(switch, 11) == FULL


async def test_an_undo_that_fails_is_logged_critical_without_the_pan(
    switch: Switch, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The ledger refusing the undo (a second fault injected: its commit fails)
    leaves the sale for operations to reverse by hand, named by TID and STAN."""
    assert switch.services is not None
    ledger = switch.services.ledger
    submit = ledger.submit_linked

    async def undo_fails(ops: list[Op]) -> list[object]:
        if getattr(ops[0], "code", None) == "reversal":
            raise CommitFailed("fault injected by the test")
        return await submit(ops)

    c = await signed_on(switch, "10000006")
    t = c.term
    stan = t.next_stan()
    Unencodable(monkeypatch, stan)
    monkeypatch.setattr(ledger, "submit_linked", undo_fails)
    r = await c.call(t.frame(*rq.sale(t.ident, card(12), stan, 10_00, PIN, t.pik)))
    assert r.rc == "96" and r.mac_ok
    critical = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.CRITICAL]
    assert len(critical) == 1
    assert "TID 10000006" in critical[0] and f"STAN {stan}" in critical[0]
    assert not any(demo_pan(12) in rec.getMessage() for rec in caplog.records)
    assert await available(switch, 12) == FULL - 10_00
