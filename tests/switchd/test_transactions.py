"""End to end over real sockets: every transaction kind and the codes around it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import trio

from fastpath import requests as rq
from switchd.config import Parameters, Security, Terminals, Transactions
from switchd.daemon import Switch
from switchd.demo import demo_pan
from switchd.ledger import card_account_id, fee_account_id, merchant_account_id

from .conftest import Conn, connect, small_config

PIN = "123456"
MID = "898100012340001"


def card(seq: int, expiry: str = "3012") -> rq.Card:
    return rq.Card(demo_pan(seq), expiry)


async def available(sw: Switch, seq: int) -> int:
    assert sw.services is not None
    acct = await sw.services.ledger.account(card_account_id(demo_pan(seq), sw.services.pan_key))
    assert acct is not None
    return acct.available


async def signed_on(sw: Switch, tid: str = "10000001", mid: str = MID) -> Conn:
    c = await connect(sw, tid, mid)
    await c.sign_on()
    return c


async def sale(c: Conn, seq: int, amount: int, pin: str | None = PIN):
    t = c.term
    stan = t.next_stan()
    r = await c.call(t.frame(*rq.sale(t.ident, card(seq), stan, amount, pin, t.pik)))
    return stan, r


async def test_sign_on_layouts_and_batch(switch: Switch) -> None:
    for netcode in ("001", "003", "004"):
        c = await connect(switch)
        r = await c.sign_on(netcode)
        assert r.rc == "00"
        assert r.msg.network_code == netcode
        assert r.msg.batch == "000001"
        assert r.mac_ok  # signed with the new MAK
        assert len(r.msg[62]) == {"001": 24, "003": 40, "004": 60}[netcode]


async def test_unknown_terminal_and_wrong_merchant(switch: Switch) -> None:
    c = await connect(switch, "99999999", MID)
    r = await c.call(c.term.sign_on_frame())
    assert r.rc == "97"
    c = await connect(switch, "10000001", "898100012340002")
    r = await c.call(c.term.sign_on_frame())
    assert r.rc == "03"


async def test_request_without_sign_on_and_with_wrong_mac(switch: Switch) -> None:
    c = await connect(switch, "10000002")
    t = c.term
    r = await c.call(t.frame(*rq.echo_test(t.ident, t.next_stan()), sign=False))
    assert r.rc == "A0"
    assert r.msg.header[2] & 0x0F == 3  # sign on again
    await c.sign_on()
    frame = bytearray(t.frame(*rq.echo_test(t.ident, t.next_stan())))
    frame[-1] ^= 1
    r = await c.call(bytes(frame))
    assert r.rc == "A0" and r.msg.header[2] & 0x0F == 3
    assert 64 not in r.msg
    r = await c.call(t.frame(*rq.echo_test(t.ident, t.next_stan())))
    assert r.rc == "00" and r.mac_ok


async def test_sale_moves_money_with_the_fee(switch: Switch) -> None:
    assert switch.services is not None
    ledger = switch.services.ledger
    c = await signed_on(switch)
    merchant_before = (await ledger.account(merchant_account_id(MID))).balance
    fee_before = (await ledger.account(fee_account_id("156"))).balance
    stan, r = await sale(c, 10, 100_00)
    assert r.rc == "00" and r.mac_ok
    assert r.msg.rrn and len(r.msg.rrn) == 12 and r.msg.auth_code
    assert r.msg.stan == stan and r.msg.amount == 100_00 and r.msg.tid == "10000001"
    assert r.msg.acquirer_id == "01020000"
    # exactly PROTOCOL.md's sale answer: the echo (no F2 for a swiped card) plus
    # 12, 13, 15, 32, 37, 38, 39 and 64
    assert r.msg.fields == (3, 4, 11, 12, 13, 15, 25, 32, 37, 38, 39, 41, 42, 49, 60, 64)
    assert await available(switch, 10) == 100_000_00 - 100_00
    fee = (100_00 * 38 + 5_000) // 10_000  # 0.38 %
    assert (
        await ledger.account(merchant_account_id(MID))
    ).balance == merchant_before + 100_00 - fee
    assert (await ledger.account(fee_account_id("156"))).balance == fee_before + fee


async def test_card_checks(switch: Switch) -> None:
    c = await signed_on(switch)
    t = c.term
    _, r = await sale(c, 2, 20_00)  # holds 10.00
    assert r.rc == "51"
    _, r = await sale(c, 3, 1_00)  # expired 2001
    assert r.rc == "54"
    for bad, rc in ((rq.Card("4111111111111111", "3012"), "15"),  # not our BIN
                    (rq.Card("6228480000000000019", "3012"), "14"),  # Luhn
                    (rq.Card(demo_pan(999_999), "3012"), "14")):  # not on file  # fmt: skip
        r = await c.call(t.frame(*rq.sale(t.ident, bad, t.next_stan(), 100)))
        assert r.rc == rc
    _, r = await sale(c, 1, 600_000_00)  # over the default limit of 500,000.00
    assert r.rc == "61"
    _, r = await sale(c, 11, 0)
    assert r.rc == "13"


async def test_wrong_pin_three_times(switch: Switch) -> None:
    c = await signed_on(switch)
    before = await available(switch, 12)
    codes = [(await sale(c, 12, 1_00, "111111"))[1].rc for _ in range(3)]
    assert codes == ["55", "55", "75"]
    assert (await sale(c, 12, 1_00, PIN))[1].rc == "75"  # blocked now
    assert await available(switch, 12) == before


async def test_the_wrong_pin_that_reaches_pin_tries_is_75(tmp_path: Path) -> None:
    """security.pin_tries = N: wrong PINs before the Nth are 55, the Nth is 75
    (the try that reaches the limit, as issuers answer it), and every PIN after
    it, right ones too; a right PIN before the limit resets the count."""
    sw = Switch(small_config(tmp_path / "var", security=Security(pin_tries=2)))
    async with trio.open_nursery() as nursery:
        await nursery.start(sw.run)
        c = await signed_on(sw)
        pins = ("111111", PIN, "111111", "111111", PIN, "111111")
        codes = [(await sale(c, 12, 1_00, pin))[1].rc for pin in pins]
        assert codes == ["55", "00", "55", "75", "75", "75"]
        assert await available(sw, 12) == 100_000_00 - 1_00
        sw.stop()


async def test_void_and_its_errors(switch: Switch) -> None:
    c = await signed_on(switch)
    t = c.term
    stan, r = await sale(c, 13, 50_00)
    orig = t.remember("sale", r, stan)
    r = await c.call(t.frame(*rq.void(t.ident, card(13), t.next_stan(), 49_00, orig)))
    assert r.rc == "64"
    r = await c.call(t.frame(*rq.void(t.ident, card(13), t.next_stan(), 50_00, orig)))
    assert r.rc == "00" and r.mac_ok
    assert await available(switch, 13) == 100_000_00
    r = await c.call(t.frame(*rq.void(t.ident, card(13), t.next_stan(), 50_00, orig)))
    assert r.rc == "12"  # already voided
    missing = dataclasses.replace(orig, stan="999999")  # quoting F37 and F38, as a void must
    r = await c.call(t.frame(*rq.void(t.ident, card(13), t.next_stan(), 50_00, missing)))
    assert r.rc == "25"


async def test_a_void_must_quote_its_original_and_be_of_its_card(switch: Switch) -> None:
    """PROTOCOL.md §3: a void names its original by F37 + F38 + F61. Without F37
    or F38 it is a format error (30), as without F61; another card than the
    original's names no original (25). Nothing moves either way."""
    c = await signed_on(switch, "10000015")
    t = c.term
    stan, r = await sale(c, 32, 40_00)
    sold = t.remember("sale", r, stan)
    stan = t.next_stan()
    r = await c.call(t.frame(*rq.preauth(t.ident, card(33), stan, 80_00)))
    hold = t.remember("preauth", r, stan)
    stan = t.next_stan()
    r = await c.call(t.frame(*rq.completion(t.ident, card(33), stan, 80_00, hold)))
    assert r.rc == "00"
    done = t.remember("completion", r, stan)
    voids = ((rq.void, 32, 40_00, sold), (rq.completion_void, 33, 80_00, done))
    for void, seq, amount, orig in voids:
        no_rrn, no_auth = dataclasses.replace(orig, rrn=""), dataclasses.replace(orig, auth_code="")
        for unquoted in (no_rrn, no_auth):
            r = await c.call(t.frame(*void(t.ident, card(seq), t.next_stan(), amount, unquoted)))
            assert r.rc == "30" and r.mac_ok
        r = await c.call(t.frame(*void(t.ident, card(34), t.next_stan(), amount, orig)))
        assert r.rc == "25" and r.mac_ok
        assert await available(switch, seq) == 100_000_00 - amount
    assert await available(switch, 34) == 100_000_00
    for void, seq, amount, orig in voids:
        r = await c.call(t.frame(*void(t.ident, card(seq), t.next_stan(), amount, orig)))
        assert r.rc == "00" and r.mac_ok
    assert await available(switch, 32) == 100_000_00
    # The completion voided, the hold stands again: cancelled, the card is whole.
    r = await c.call(t.frame(*rq.preauth_cancel(t.ident, card(33), t.next_stan(), 80_00, hold)))
    assert r.rc == "00"
    assert await available(switch, 33) == 100_000_00


async def test_a_void_reversed_by_the_terminal_can_be_voided_again(switch: Switch) -> None:
    """The void's answer is lost, the terminal reverses the void (0400), the
    cashier voids again: the sale stood after the reversal, so the new void
    is approved, and the card gets its money back once."""
    c = await signed_on(switch, "10000005")
    t = c.term
    stan, r = await sale(c, 28, 50_00)
    orig = t.remember("sale", r, stan)
    void_mti, void_fields = rq.void(t.ident, card(28), t.next_stan(), 50_00, orig)
    assert (await c.call(t.frame(void_mti, void_fields))).rc == "00"
    assert await available(switch, 28) == 100_000_00
    r = await c.call(t.frame(*rq.reversal(void_fields, "98")))
    assert r.rc == "00" and r.mac_ok
    assert await available(switch, 28) == 100_000_00 - 50_00
    r = await c.call(t.frame(*rq.void(t.ident, card(28), t.next_stan(), 50_00, orig)))
    assert r.rc == "00" and r.mac_ok
    assert await available(switch, 28) == 100_000_00
    r = await c.call(t.frame(*rq.void(t.ident, card(28), t.next_stan(), 50_00, orig)))
    assert r.rc == "12"  # voided, and that void stands


async def test_partial_refunds_up_to_the_original(switch: Switch) -> None:
    c = await signed_on(switch)
    t = c.term
    stan, r = await sale(c, 14, 100_00)
    orig = t.remember("sale", r, stan)
    for amount, rc in ((40_00, "00"), (60_00, "00"), (1, "13")):
        r = await c.call(t.frame(*rq.refund(t.ident, card(14), t.next_stan(), amount, orig)))
        assert r.rc == rc
    assert await available(switch, 14) == 100_000_00


async def test_a_refund_must_name_its_original_date(switch: Switch) -> None:
    """61.3 is the original's date (MMDD, its answer's F13): another date is 25."""
    c = await signed_on(switch, "10000004")
    t = c.term
    stan, r = await sale(c, 27, 10_00)
    orig = t.remember("sale", r, stan)
    other_day = dataclasses.replace(orig, date="0229" if orig.date != "0229" else "0228")
    r = await c.call(t.frame(*rq.refund(t.ident, card(27), t.next_stan(), 1_00, other_day)))
    assert r.rc == "25" and r.mac_ok
    r = await c.call(t.frame(*rq.refund(t.ident, card(27), t.next_stan(), 1_00, orig)))
    assert r.rc == "00"
    assert await available(switch, 27) == 100_000_00 - 9_00


async def test_preauth_completion_cancel(switch: Switch) -> None:
    c = await signed_on(switch)
    t = c.term
    stan = t.next_stan()
    r = await c.call(t.frame(*rq.preauth(t.ident, card(15), stan, 300_00, PIN, t.pik)))
    assert r.rc == "00"
    hold = t.remember("preauth", r, stan)
    assert await available(switch, 15) == 100_000_00 - 300_00
    cstan = t.next_stan()
    r = await c.call(t.frame(*rq.completion(t.ident, card(15), cstan, 250_00, hold)))
    assert r.rc == "00"
    assert await available(switch, 15) == 100_000_00 - 250_00
    done = t.remember("completion", r, cstan)
    r = await c.call(t.frame(*rq.completion_void(t.ident, card(15), t.next_stan(), 250_00, done)))
    assert r.rc == "00"
    # The pre-authorization stands again (held), to be completed anew or cancelled.
    assert await available(switch, 15) == 100_000_00 - 300_00
    r = await c.call(t.frame(*rq.preauth_cancel(t.ident, card(15), t.next_stan(), 300_00, hold)))
    assert r.rc == "00"
    assert await available(switch, 15) == 100_000_00
    # a second hold, cancelled
    stan = t.next_stan()
    r = await c.call(t.frame(*rq.preauth(t.ident, card(16), stan, 80_00)))
    hold2 = t.remember("preauth2", r, stan)
    r = await c.call(t.frame(*rq.preauth_cancel(t.ident, card(16), t.next_stan(), 80_00, hold2)))
    assert r.rc == "00"
    assert await available(switch, 16) == 100_000_00
    # a third, completed offline with an advice, over the amount within the tolerance
    stan = t.next_stan()
    r = await c.call(t.frame(*rq.preauth(t.ident, card(17), stan, 100_00)))
    hold3 = t.remember("preauth3", r, stan)
    r = await c.call(
        t.frame(*rq.completion_advice(t.ident, card(17), t.next_stan(), 115_00, hold3))
    )
    assert r.rc == "00"
    assert await available(switch, 17) == 100_000_00 - 115_00


async def _held_then_cancelled(c: Conn, seq: int, amount: int) -> tuple[rq.Original, dict]:
    """A pre-authorization, approved, then its cancel, approved: (the hold, the cancel's fields)."""
    t = c.term
    stan = t.next_stan()
    r = await c.call(t.frame(*rq.preauth(t.ident, card(seq), stan, amount, PIN, t.pik)))
    assert r.rc == "00"
    hold = t.remember("preauth", r, stan)
    mti, cancel = rq.preauth_cancel(t.ident, card(seq), t.next_stan(), amount, hold)
    assert (await c.call(t.frame(mti, cancel))).rc == "00"
    return hold, cancel


async def test_a_reversed_preauth_cancel_leaves_the_preauth_to_complete(switch: Switch) -> None:
    """Pre-auth cancel is reversible (PROTOCOL.md §3): its 0400 puts the hold
    back, and the pre-authorization can then be completed."""
    c = await signed_on(switch, "10000006")
    t = c.term
    hold, cancel = await _held_then_cancelled(c, 29, 200_00)
    assert await available(switch, 29) == 100_000_00
    for _ in range(2):  # repeated: held again once
        r = await c.call(t.frame(*rq.reversal(cancel, "98")))
        assert r.rc == "00" and r.mac_ok
        assert await available(switch, 29) == 100_000_00 - 200_00
    r = await c.call(t.frame(*rq.completion(t.ident, card(29), t.next_stan(), 150_00, hold)))
    assert r.rc == "00"
    assert await available(switch, 29) == 100_000_00 - 150_00


async def test_a_cancel_reversed_after_the_money_was_spent_is_answered_00(
    switch: Switch,
) -> None:
    """The hold cannot come back (the card spent the money since): the 0400
    still gets 00, the pre-authorization stays cancelled, and its completion
    is refused."""
    c = await signed_on(switch, "10000007")
    t = c.term
    hold, cancel = await _held_then_cancelled(c, 30, 60_000_00)
    assert (await sale(c, 30, 50_000_00))[1].rc == "00"
    r = await c.call(t.frame(*rq.reversal(cancel, "98")))
    assert r.rc == "00" and r.mac_ok
    assert await available(switch, 30) == 50_000_00
    r = await c.call(t.frame(*rq.completion(t.ident, card(30), t.next_stan(), 1_00, hold)))
    assert r.rc != "00"
    assert await available(switch, 30) == 50_000_00


async def test_a_reversed_completion_leaves_the_preauth_to_complete_again(
    switch: Switch,
) -> None:
    """Pre-auth completion is reversible (PROTOCOL.md §3): a terminal that got no
    answer to its completion reverses it; the hold stands again, and the
    completion sent anew is approved, charging the card once."""
    c = await signed_on(switch, "10000008")
    t = c.term
    stan = t.next_stan()
    r = await c.call(t.frame(*rq.preauth(t.ident, card(31), stan, 500_00, PIN, t.pik)))
    assert r.rc == "00"
    hold = t.remember("preauth", r, stan)
    mti, done = rq.completion(t.ident, card(31), t.next_stan(), 450_00, hold)
    assert (await c.call(t.frame(mti, done))).rc == "00"
    assert await available(switch, 31) == 100_000_00 - 450_00
    for _ in range(2):  # repeated: undone once
        r = await c.call(t.frame(*rq.reversal(done, "98")))
        assert r.rc == "00" and r.mac_ok
        assert await available(switch, 31) == 100_000_00 - 500_00
    r = await c.call(t.frame(*rq.completion(t.ident, card(31), t.next_stan(), 450_00, hold)))
    assert r.rc == "00" and r.mac_ok
    assert await available(switch, 31) == 100_000_00 - 450_00


async def test_completion_over_the_tolerance_is_refused(switch: Switch) -> None:
    c = await signed_on(switch)
    t = c.term
    stan = t.next_stan()
    r = await c.call(t.frame(*rq.preauth(t.ident, card(18), stan, 100_00)))
    hold = t.remember("preauth", r, stan)
    r = await c.call(t.frame(*rq.completion(t.ident, card(18), t.next_stan(), 116_00, hold)))
    assert r.rc == "64"


async def test_reversal_twice_undoes_once(switch: Switch) -> None:
    c = await signed_on(switch)
    t = c.term
    stan = t.next_stan()
    mti, fields = rq.sale(t.ident, card(19), stan, 70_00)
    assert (await c.call(t.frame(mti, fields))).rc == "00"
    assert await available(switch, 19) == 100_000_00 - 70_00
    for _ in range(2):
        r = await c.call(t.frame(*rq.reversal(fields, "98")))
        assert r.rc == "00" and r.mac_ok
        assert r.msg.mti == "0410"
        assert await available(switch, 19) == 100_000_00


async def test_a_reversal_repeated_with_another_reason_is_the_same_undo(switch: Switch) -> None:
    c = await signed_on(switch, "10000002")
    t = c.term
    mti, fields = rq.sale(t.ident, card(24), t.next_stan(), 40_00)
    assert (await c.call(t.frame(mti, fields))).rc == "00"
    for reason in ("98", "A0", "06"):
        r = await c.call(t.frame(*rq.reversal(fields, reason)))
        assert r.rc == "00" and r.mac_ok
        assert await available(switch, 24) == 100_000_00


async def test_a_sale_resent_after_a_new_sign_on_gets_its_first_answer(switch: Switch) -> None:
    """The PIN block is under the new session's PIK: other bytes, the same request."""
    c = await signed_on(switch, "10000003")
    t = c.term
    stan = t.next_stan()
    first = await c.call(t.frame(*rq.sale(t.ident, card(25), stan, 9_00, PIN, t.pik)))
    assert first.rc == "00"
    await c.sign_on()
    again = await c.call(t.frame(*rq.sale(t.ident, card(25), stan, 9_00, PIN, t.pik)))
    assert again.rc == "00" and again.mac_ok
    assert again.msg.rrn == first.msg.rrn
    assert await available(switch, 25) == 100_000_00 - 9_00


async def test_reversal_of_a_sale_that_never_arrived(switch: Switch) -> None:
    c = await signed_on(switch)
    t = c.term
    stan = t.next_stan()
    mti, fields = rq.sale(t.ident, card(20), stan, 30_00)
    r = await c.call(t.frame(*rq.reversal(fields, "98")))
    assert r.rc == "00"
    # the original turns up late: it must not post
    r = await c.call(t.frame(mti, fields))
    assert r.rc != "00"
    assert await available(switch, 20) == 100_000_00


async def test_duplicates(switch: Switch) -> None:
    c = await signed_on(switch)
    t = c.term
    stan = t.next_stan()
    frame = t.frame(*rq.sale(t.ident, card(21), stan, 10_00))
    first = await c.call(frame)
    again = await c.call(frame)
    assert first.rc == again.rc == "00"
    assert (again.msg.rrn, again.msg.auth_code) == (first.msg.rrn, first.msg.auth_code)
    assert again.mac_ok
    assert await available(switch, 21) == 100_000_00 - 10_00
    other = t.frame(*rq.sale(t.ident, card(21), stan, 11_00))  # same STAN, other content
    assert (await c.call(other)).rc == "94"
    assert await available(switch, 21) == 100_000_00 - 10_00


async def test_settlement_balanced_then_next_batch(switch: Switch) -> None:
    c = await signed_on(switch, "10000005")
    t = c.term
    s1, r1 = await sale(c, 22, 12_34)
    s2, r2 = await sale(c, 22, 10_00)
    void = rq.void(t.ident, card(22), t.next_stan(), 10_00, t.remember("s2", r2, s2))
    assert (await c.call(t.frame(*void))).rc == "00"
    refund = rq.refund(t.ident, card(22), t.next_stan(), 1_00, t.remember("s1", r1, s1))
    assert (await c.call(t.frame(*refund))).rc == "00"
    # debits: two sales; credits: the void and the refund
    totals = rq.settlement_totals(12_34 + 10_00, 2, 10_00 + 1_00, 2)
    r = await c.call(t.frame(*rq.settlement(t.ident, t.next_stan(), totals)))
    assert r.rc == "00" and r.mac_ok
    assert r.msg.settlement_totals().code == 1
    r = await c.sign_on()
    assert r.msg.batch == "000002"
    # The closed batch's answers left memory (at most the settlement's own remains).
    assert switch.services is not None
    assert len(switch.services.journal.batches.get(("10000005", 1), {})) <= 1


async def test_unbalanced_settlement_and_batch_upload(switch: Switch) -> None:
    c = await signed_on(switch, "10000006")
    t = c.term
    await sale(c, 23, 5_00)
    totals = rq.settlement_totals(9_99, 1, 0, 0)
    r = await c.call(t.frame(*rq.settlement(t.ident, t.next_stan(), totals)))
    assert r.rc == "00"
    assert r.msg.settlement_totals().code == 2
    record = "01" + "22" + "000001" + f"{5_00:012d}"
    for netcode in ("201", "207"):
        r = await c.call(t.frame(*rq.batch_upload(t.ident, t.next_stan(), record, netcode)))
        assert r.rc == "00" and r.mac_ok


async def test_echo_sign_off_and_parameters(switch: Switch) -> None:
    c = await signed_on(switch, "10000007")
    t = c.term
    r = await c.call(t.frame(*rq.parameter_download(t.ident, t.next_stan())))
    assert r.rc == "00" and r.msg.mti == "0810"
    assert r.msg[62].startswith(b"11026012013")  # tag, length, value
    r = await c.call(t.frame(*rq.sign_off(t.ident, t.next_stan())))
    assert r.rc == "00" and r.mac_ok
    r = await c.call(t.frame(*rq.echo_test(t.ident, t.next_stan())))
    assert r.rc == "A0"


async def test_parameter_text_is_gbk_with_byte_lengths(tmp_path: Path) -> None:
    # PROTOCOL.md §2: text is GBK where Chinese appears. Each entry's length
    # counts bytes: "1610" + 10 GBK bytes, not "1605" + 15 UTF-8 bytes.
    name = "演示收单行"
    cfg = small_config(tmp_path, parameters=Parameters(values={"11": "60", "16": name}))
    sw = Switch(cfg)
    async with trio.open_nursery() as nursery:
        await nursery.start(sw.run)
        c = await signed_on(sw, "10000007")
        t = c.term
        r = await c.call(t.frame(*rq.parameter_download(t.ident, t.next_stan())))
        assert r.rc == "00" and r.mac_ok
        assert r.msg.raw_field(62) == b"110260" + b"1610" + name.encode("gbk")
        sw.stop()


async def test_split_and_coalesced_frames(switch: Switch) -> None:
    c = await signed_on(switch, "10000008")
    t = c.term
    frames = [t.frame(*rq.echo_test(t.ident, t.next_stan())) for _ in range(30)]
    stream = b"".join(frames)
    for i in range(0, len(stream), 7):  # many TCP segments
        await c.send(stream[i : i + 7])
        await trio.sleep(0)
    answers = [await c.recv() for _ in frames]
    assert [a.msg.stan for a in answers] == [f"{i:06d}" for i in range(2, 32)]
    await c.send(b"".join(t.frame(*rq.echo_test(t.ident, t.next_stan())) for _ in range(50)))
    answers = [await c.recv() for _ in range(50)]
    assert {a.rc for a in answers} == {"00"}


async def test_a_request_refused_for_its_mac_can_be_retried_after_sign_on(switch: Switch) -> None:
    c = await signed_on(switch, "10000009")
    t = c.term
    stan = t.next_stan()
    mti, fields = rq.sale(t.ident, card(24), stan, 2_00)
    frame = bytearray(t.frame(mti, fields))
    frame[-2] ^= 0x20
    r = await c.call(bytes(frame))
    assert r.rc == "A0"
    await c.sign_on()
    r = await c.call(t.frame(mti, fields))  # same STAN, same content, good MAC
    assert r.rc == "00"
    assert await available(switch, 24) == 100_000_00 - 2_00


async def test_frames_before_a_bad_length_are_answered(switch: Switch) -> None:
    """A valid frame and a frame of impossible length in one write: the first is answered."""
    c = await signed_on(switch, "10000009")
    t = c.term
    await c.send(t.frame(*rq.echo_test(t.ident, t.next_stan())) + b"\x00\x00garbage")
    r = await c.recv()
    assert r.rc == "00" and r.mac_ok
    try:
        await c.recv()
    except (EOFError, trio.BrokenResourceError):
        pass  # then the connection is closed: nothing after the bad length can be framed
    else:
        raise AssertionError("the connection should have been closed")


async def test_refusals_of_a_kind_are_signed(switch: Switch) -> None:
    """40 (a kind we do not offer) and 12 (a reversal of what cannot be reversed), with a MAC."""
    c = await signed_on(switch, "10000010")
    t = c.term
    mti, fields = rq.sale(t.ident, card(26), t.next_stan(), 1_00)
    fields[3] = "990000"  # no such transaction with 60.1 = 22
    r = await c.call(t.frame(mti, fields))
    assert r.msg.mti == "0210" and r.rc == "40" and r.mac_ok
    assert r.msg.stan == fields[11]
    _, fields = rq.balance(t.ident, card(26), t.next_stan())
    r = await c.call(t.frame(*rq.reversal(fields, "98")))
    assert r.msg.mti == "0410" and r.rc == "12" and r.mac_ok
    # Unsigned (or wrongly signed) it is still 40, only without a MAC.
    mti, fields = rq.sale(t.ident, card(26), t.next_stan(), 1_00)
    fields[3] = "990000"
    r = await c.call(t.frame(mti, fields, sign=False))
    assert r.rc == "40" and r.mac_ok is None


async def test_the_answer_header_asks_only_what_the_host_means(switch: Switch) -> None:
    """PROTOCOL.md §1: the host sets the processing nibble; a request's own is not echoed."""
    c = await signed_on(switch, "10000011")
    t = c.term
    t.header = bytes.fromhex("603105000000")  # low nibble 5 (high nibble 0: normal)
    _, r = await sale(c, 28, 1_00)
    assert r.rc == "00" and r.mac_ok
    assert r.msg.header == bytes.fromhex("603100000000")
    r = await c.call(t.frame(*rq.echo_test(t.ident, t.next_stan())))
    assert r.msg.header == bytes.fromhex("603100000000")
    t.header = bytes.fromhex("603115000000")  # terminal status 1 (test) is kept
    r = await c.call(t.frame(*rq.echo_test(t.ident, t.next_stan())))
    assert r.msg.header == bytes.fromhex("603110000000")


async def test_a_known_terminal_naming_another_merchant_gets_a_signed_03(switch: Switch) -> None:
    c = await signed_on(switch, "10000012")
    t = c.term
    t.mid = "898100012340002"  # another merchant's ID
    _, r = await sale(c, 29, 1_00)
    assert r.rc == "03" and r.mac_ok
    assert r.msg.header[2] & 0x0F == 0
    r = await c.call(t.sign_on_frame())  # a sign-on carries no MAC: its 03 is unsigned
    assert r.rc == "03" and r.mac_ok is None


async def test_an_amount_in_another_currency_or_none_is_a_format_error(switch: Switch) -> None:
    c = await signed_on(switch, "10000013")
    t = c.term
    before = await available(switch, 30)
    mti, fields = rq.sale(t.ident, card(30), t.next_stan(), 5_00, PIN, t.pik)
    fields[49] = "840"
    r = await c.call(t.frame(mti, fields))
    assert r.rc == "30" and r.mac_ok
    mti, fields = rq.sale(t.ident, card(30), t.next_stan(), 5_00, PIN, t.pik)
    del fields[4]
    r = await c.call(t.frame(mti, fields))
    assert r.rc == "30" and r.mac_ok
    assert await available(switch, 30) == before


async def test_a_request_without_a_stan_is_a_format_error(switch: Switch) -> None:
    """F11 names a request to its duplicates and its reversal (PROTOCOL.md §3): without it, 30."""
    c = await signed_on(switch, "10000014")
    t = c.term
    before = await available(switch, 31)
    mti, fields = rq.sale(t.ident, card(31), t.next_stan(), 3_00, PIN, t.pik)
    del fields[11]
    r = await c.call(t.frame(mti, fields))
    assert r.rc == "30" and r.mac_ok
    assert r.msg.get(11) is None
    mti, fields = rq.sale(t.ident, card(31), t.next_stan(), 3_00)
    del fields[11]
    r = await c.call(t.frame(*rq.reversal(fields, "98")))
    assert r.rc == "30" and r.mac_ok
    assert await available(switch, 31) == before


async def test_an_answer_that_cannot_be_encoded_is_a_96_under_the_configured_tpdu(
    tmp_path: Path,
) -> None:
    """The fallback answer (96) keeps the TPDU as configured and is signed.

    An acquirer id that is not digits cannot be encoded in F32 of any
    financial answer. load() refuses it (test_config); the Config is built
    directly here to reach the codec's failure, with the TPDU echoed unswapped.
    """
    cfg = small_config(tmp_path / "var", transactions=Transactions(acquirer_id="0102ABCD"),
                       terminals=Terminals(swap_tpdu=False))  # fmt: skip
    sw = Switch(cfg)
    async with trio.open_nursery() as nursery:
        await nursery.start(sw.run)
        c = await signed_on(sw)
        t = c.term
        r = await c.call(t.frame(*rq.balance(t.ident, card(11), t.next_stan(), PIN, t.pik)))
        assert r.rc == "96" and r.mac_ok
        assert r.msg.tpdu == t.tpdu  # not swapped: swap_tpdu = false
        assert r.msg.header[2] & 0x0F == 0  # nothing asked of the terminal
        sw.stop()


async def _lose_journal_row(sw: Switch, tid: str, batch: str, stan: str) -> None:
    """What a worker killed within the journal's linger leaves: the answer was
    sent, the ledger committed, and the journal has no row of it."""
    assert sw.services is not None
    journal = sw.services.journal
    await journal.flush()
    await journal.db.run(lambda cur: cur.execute(
        "DELETE FROM journal WHERE tid = ? AND batch = ? AND stan = ?", (tid, int(batch), int(stan))
    ))  # fmt: skip
    journal.forget_batch(tid, int(batch))
    assert await journal.lookup(tid, int(batch), int(stan), False) is None


async def test_an_original_the_journal_lost_is_found_in_the_ledger(switch: Switch) -> None:
    """A void, a refund and a completion whose original's journal row is gone
    still find it in the ledger, checked against F37, F38 and 61.3 as the row
    would have been; an original the ledger never posted stays 25."""
    c = await signed_on(switch, "10000006")
    t = c.term
    stan, r = await sale(c, 29, 30_00)
    orig = t.remember("sale", r, stan)
    await _lose_journal_row(switch, t.tid, t.batch, stan)
    wrong_rrn = dataclasses.replace(orig, rrn="000000000000")
    r = await c.call(t.frame(*rq.void(t.ident, card(29), t.next_stan(), 30_00, wrong_rrn)))
    assert r.rc == "25" and r.mac_ok
    other_auth = "000000" if orig.auth_code != "000000" else "1"
    wrong_auth = dataclasses.replace(orig, auth_code=other_auth)
    r = await c.call(t.frame(*rq.void(t.ident, card(29), t.next_stan(), 30_00, wrong_auth)))
    assert r.rc == "25"
    r = await c.call(t.frame(*rq.void(t.ident, card(29), t.next_stan(), 30_00, orig)))
    assert r.rc == "00" and r.mac_ok
    assert await available(switch, 29) == 100_000_00
    r = await c.call(t.frame(*rq.void(t.ident, card(29), t.next_stan(), 30_00, orig)))
    assert r.rc == "12"  # the ledger knows it is voided, journal or not

    stan, r = await sale(c, 29, 20_00)
    orig = t.remember("sale", r, stan)
    await _lose_journal_row(switch, t.tid, t.batch, stan)
    other_day = dataclasses.replace(orig, date="0229" if orig.date != "0229" else "0228")
    r = await c.call(t.frame(*rq.refund(t.ident, card(29), t.next_stan(), 5_00, other_day)))
    assert r.rc == "25"
    r = await c.call(t.frame(*rq.refund(t.ident, card(29), t.next_stan(), 5_00, orig)))
    assert r.rc == "00"
    assert await available(switch, 29) == 100_000_00 - 15_00

    stan = t.next_stan()
    r = await c.call(t.frame(*rq.preauth(t.ident, card(29), stan, 40_00, PIN, t.pik)))
    assert r.rc == "00"
    hold = t.remember("preauth", r, stan)
    await _lose_journal_row(switch, t.tid, t.batch, stan)
    r = await c.call(t.frame(*rq.completion(t.ident, card(29), t.next_stan(), 40_00, hold)))
    assert r.rc == "00" and r.mac_ok
    assert await available(switch, 29) == 100_000_00 - 15_00 - 40_00

    never = rq.Original(batch=t.batch, stan="999998", rrn=orig.rrn, auth_code=orig.auth_code)
    r = await c.call(t.frame(*rq.void(t.ident, card(29), t.next_stan(), 20_00, never)))
    assert r.rc == "25"
