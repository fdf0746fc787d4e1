"""Every operation and reason code, on both backends."""

from __future__ import annotations

from datetime import UTC, datetime

import trio

from switchd.ledger import (
    AccountKind,
    CloseAccount,
    CloseBatch,
    CreateAccount,
    LedgerConfig,
    PendingState,
    PostPending,
    ResultCode,
    Reverse,
    Transfer,
    TransferType,
    VoidPending,
    WireMeta,
    flows,
    open_ledger,
    transfer_id,
)
from switchd.ledger.flows import Request

from .helpers import CNY, make_chart

RC = ResultCode


async def test_accounts_and_idempotent_creation(config: LedgerConfig) -> None:
    async with open_ledger(config) as ledger:
        chart = await make_chart(ledger, funds=0)
        again = await ledger.execute(CreateAccount(chart.card, AccountKind.CARDHOLDER, CNY,
                                                   owner="card-1"))
        assert again.ok and again.duplicate
        other = await ledger.execute(CreateAccount(chart.card, AccountKind.MERCHANT, CNY))
        assert other.code is RC.ACCOUNT_EXISTS_DIFFERENT
        acct = await ledger.account(chart.card)
        assert acct is not None and acct.kind is AccountKind.CARDHOLDER
        assert acct.credit_limit == 0 and acct.balance == 0 and acct.available == 0
        assert (await ledger.account(chart.merchant)).credit_limit is None  # type: ignore[union-attr]
        assert await ledger.account(424242) is None
        bad = await ledger.submit([
            CreateAccount(0, AccountKind.MERCHANT, CNY),
            CreateAccount(5, "bogus", CNY),  # type: ignore[arg-type]
            CreateAccount(6, AccountKind.MERCHANT, "TOOLONG"),
            CreateAccount(7, AccountKind.CARDHOLDER, CNY, credit_limit=-1),
        ])
        assert [r.code for r in bad] == [RC.ID_INVALID, RC.ACCOUNT_INVALID, RC.ACCOUNT_INVALID,
                                         RC.ACCOUNT_INVALID]


async def test_transfer_rules(config: LedgerConfig) -> None:
    async with open_ledger(config) as ledger:
        c = await make_chart(ledger, funds=10_000)
        await ledger.execute(CreateAccount(77, AccountKind.MERCHANT, "840"))
        cases = [
            (Transfer(1, c.card, c.merchant, 0, "sale"), RC.AMOUNT_INVALID),
            (Transfer(2, c.card, c.merchant, -5, "sale"), RC.AMOUNT_INVALID),
            (Transfer(3, c.card, c.card, 5, "sale"), RC.ACCOUNTS_SAME),
            (Transfer(4, 999, c.merchant, 5, "sale"), RC.DEBIT_ACCOUNT_NOT_FOUND),
            (Transfer(5, c.card, 999, 5, "sale"), RC.CREDIT_ACCOUNT_NOT_FOUND),
            (Transfer(6, c.card, 77, 5, "sale"), RC.CURRENCY_MISMATCH),
            (Transfer(7, c.card, c.merchant, 10_001, "sale"), RC.INSUFFICIENT_FUNDS),
            (Transfer(8, c.card2, c.merchant, 5_001, "sale"), RC.CREDIT_LIMIT_EXCEEDED),
            (Transfer(9, c.card, c.merchant, 5, ""), RC.CODE_INVALID),
            (Transfer(10, c.card, c.merchant, 5, "sale", timeout_s=5), RC.TIMEOUT_INVALID),
            (Transfer(0, c.card, c.merchant, 5, "sale"), RC.ID_INVALID),
            (Transfer(2**128, c.card, c.merchant, 5, "sale"), RC.ID_INVALID),
            (Transfer(11, c.card, c.merchant, 2**63, "sale"), RC.AMOUNT_INVALID),
            (Transfer(12, c.card, c.merchant, 1.5, "sale"), RC.AMOUNT_INVALID),  # type: ignore[arg-type]
            (Transfer(13, c.card, c.merchant, 5, "sale",
                      meta=WireMeta("T1", "M1", -1, 1, "sale")), RC.META_INVALID),
            (Transfer(14, c.card, c.merchant, 10_000, "sale"), RC.OK),  # exactly the balance
            (Transfer(15, c.card2, c.merchant, 5_000, "sale"), RC.OK),  # exactly the limit
        ]
        results = await ledger.submit([op for op, _ in cases])
        assert [r.code for r in results] == [code for _, code in cases]
        card2 = await ledger.account(c.card2)
        assert card2 is not None and card2.balance == -5_000 and card2.available == 0
        assert await ledger.audit() == []


async def test_transfers_find_accounts_loaded_or_created_in_their_batch(
    config: LedgerConfig,
) -> None:
    # The plain-transfer path finds loaded accounts by int id and falls back to
    # the batch's own accounts (created earlier in it); malformed ids are not found.
    async with open_ledger(config) as ledger:
        c = await make_chart(ledger, funds=10_000)
        cases = [
            (CreateAccount(501, AccountKind.MERCHANT, CNY), RC.OK),
            (Transfer(21, c.card, 501, 7, "sale"), RC.OK),  # created above, same batch
            (Transfer(22, 501, c.merchant, 3, "sale"), RC.OK),
            (Transfer(23, 502, c.merchant, 3, "sale"), RC.DEBIT_ACCOUNT_NOT_FOUND),
            (CreateAccount(502, AccountKind.MERCHANT, CNY), RC.OK),
            (Transfer(24, 502, c.merchant, 3, "sale"), RC.OK),  # 502 exists from here on
            (Transfer(25, True, c.merchant, 3, "sale"), RC.DEBIT_ACCOUNT_NOT_FOUND),  # type: ignore[arg-type]
            (Transfer(26, c.card, "501", 3, "sale"), RC.CREDIT_ACCOUNT_NOT_FOUND),  # type: ignore[arg-type]
            (Transfer(27, c.card, 2**128, 3, "sale"), RC.CREDIT_ACCOUNT_NOT_FOUND),
            (Transfer(28, 0, c.merchant, 3, "sale"), RC.DEBIT_ACCOUNT_NOT_FOUND),
        ]
        results = await ledger.submit([op for op, _ in cases])
        assert [r.code for r in results] == [code for _, code in cases]
        m501, m502 = await ledger.account(501), await ledger.account(502)
        assert m501 is not None and m501.balance == 7 - 3
        assert m502 is not None and m502.balance == -3
        # A linked group whose account creation is undone takes its transfer with it.
        linked = await ledger.submit_linked([
            CreateAccount(503, AccountKind.MERCHANT, CNY),
            Transfer(29, c.card, 503, 5, "sale"),
            Transfer(30, c.card, c.merchant, 10**9, "sale"),  # insufficient funds
        ])
        assert [r.code for r in linked] == [RC.LINKED_EVENT_FAILED, RC.LINKED_EVENT_FAILED,
                                            RC.INSUFFICIENT_FUNDS]
        assert await ledger.account(503) is None
        assert (await ledger.execute(Transfer(31, c.card, 503, 5, "sale"))).code is \
            RC.CREDIT_ACCOUNT_NOT_FOUND
        assert await ledger.audit() == []


async def test_idempotency_and_first_answer(config: LedgerConfig) -> None:
    async with open_ledger(config) as ledger:
        c = await make_chart(ledger, funds=1_000)
        sale = Transfer(50, c.card, c.merchant, 400, "sale")
        assert (await ledger.execute(sale)).ok
        dup = await ledger.execute(sale)
        assert dup.ok and dup.duplicate
        changed = await ledger.execute(Transfer(50, c.card, c.merchant, 401, "sale"))
        assert changed.code is RC.ID_EXISTS_DIFFERENT
        # A declined request repeated gets the same decline, even once funds exist.
        big = Transfer(51, c.card, c.merchant, 5_000, "sale")
        assert (await ledger.execute(big)).code is RC.INSUFFICIENT_FUNDS
        await ledger.execute(Transfer(52, c.suspense, c.card, 10_000, "deposit"))
        again = await ledger.execute(big)
        assert again.code is RC.INSUFFICIENT_FUNDS and again.duplicate
        assert (await ledger.execute(Transfer(51, c.card, c.merchant, 6, "sale"))).code is \
            RC.ID_EXISTS_DIFFERENT
        card = await ledger.account(c.card)
        assert card is not None and card.balance == 1_000 - 400 + 10_000
        # Duplicates inside one commit: the first applies, the rest are duplicates.
        results = await ledger.submit([Transfer(53, c.card, c.merchant, 10, "sale")] * 3)
        assert [(r.ok, r.duplicate) for r in results] == [(True, False), (True, True),
                                                          (True, True)]


async def test_linked_group_all_or_nothing(config: LedgerConfig) -> None:
    async with open_ledger(config) as ledger:
        c = await make_chart(ledger, funds=1_000)
        await ledger.execute(CloseAccount(c.fee))
        req = Request("T0000001", "M0001", 1, 10)
        results = await ledger.submit_linked(flows.sale(req, c.card, c.merchant, c.fee, 500, 5))
        assert [r.code for r in results] == [RC.LINKED_EVENT_FAILED, RC.ACCOUNT_CLOSED]
        assert (await ledger.account(c.card)).balance == 1_000  # type: ignore[union-attr]
        assert await ledger.transfer(req.id("sale", 0)) is None
        # The same group repeated gets the same answer.
        again = await ledger.submit_linked(flows.sale(req, c.card, c.merchant, c.fee, 500, 5))
        assert [r.code for r in again] == [RC.LINKED_EVENT_FAILED, RC.ACCOUNT_CLOSED]
        # A failing group next to a good one in the same commit leaves the good one alone.
        good = Request("T0000001", "M0001", 1, 11)
        async with trio.open_nursery() as n:
            out: dict[str, object] = {}

            async def run(name: str, ops: list) -> None:  # type: ignore[type-arg]
                out[name] = await ledger.submit_linked(ops)

            n.start_soon(run, "bad", [Transfer(60, c.card, c.merchant, 100, "sale"),
                                      Transfer(61, c.card, c.merchant, 5_000, "sale")])
            n.start_soon(run, "good", [Transfer(good.id("x"), c.card, c.merchant, 100, "sale")])
        assert [r.code for r in out["bad"]] == [RC.LINKED_EVENT_FAILED,  # type: ignore[attr-defined]
                                                RC.INSUFFICIENT_FUNDS]
        assert out["good"][0].ok  # type: ignore[index]
        assert (await ledger.account(c.card)).balance == 900  # type: ignore[union-attr]
        assert await ledger.audit() == []


async def test_a_member_failed_by_its_group_never_lets_another_group_post_in_part(
    config: LedgerConfig,
) -> None:
    """Found by the stateful test: an id first answered LINKED_EVENT_FAILED, put in a
    new group with a new transfer, made that group commit without it (in part)."""
    async with open_ledger(config) as ledger:
        c = await make_chart(ledger, funds=1_000)
        hold = Transfer(70, c.card, c.merchant, 1, "preauth", pending=True)
        first = await ledger.submit_linked([hold, Transfer(70, c.card, c.card2, 1, "sale")])
        assert [r.code for r in first] == [RC.LINKED_EVENT_FAILED, RC.ID_EXISTS_DIFFERENT]
        sale = Transfer(71, c.card, c.merchant, 1, "sale")
        second = await ledger.submit_linked([sale, hold])
        assert not any(r.ok for r in second)
        assert [r.code for r in second] == [RC.LINKED_EVENT_FAILED, RC.LINKED_EVENT_FAILED]
        assert second[1].duplicate  # the hold's first answer, again
        assert await ledger.transfer(71) is None  # nothing of the group posted
        assert (await ledger.account(c.card)).balance == 1_000  # type: ignore[union-attr]
        # Repeated, the group gets the same answer, and the sale alone still posts.
        assert [r.code for r in await ledger.submit_linked([sale, hold])] == \
            [RC.LINKED_EVENT_FAILED, RC.LINKED_EVENT_FAILED]
        assert (await ledger.execute(Transfer(72, c.card, c.merchant, 1, "sale"))).ok
        assert await ledger.audit() == []


async def test_a_void_reversed_by_its_0400_leaves_the_sale_voidable_again(
    config: LedgerConfig,
) -> None:
    """Void, the void's reversal (the terminal never saw the void's answer),
    then a new void of the same sale: the sale stands again after the first
    undo, so the second void is approved, and the money ends where one void
    puts it. Reversing a reversal twice over works the same way."""
    async with open_ledger(config) as ledger:
        c = await make_chart(ledger, funds=100_000)
        tid, mid = "T0000002", "M0001"
        sale = Request(tid, mid, 1, 1)
        res = await ledger.submit_linked(flows.sale(sale, c.card, c.merchant, c.fee, 10_000, 60))
        assert all(r.ok for r in res)
        legs = await ledger.request_transfers(tid, 1, 1, "sale")
        void1 = Request(tid, mid, 1, 2)
        assert all(r.ok for r in await ledger.submit_linked(flows.undo(void1, "void", legs)))
        undo1 = await ledger.request_transfers(tid, 1, 2, "void")
        res = await ledger.submit_linked(flows.undo(Request(tid, mid, 1, 2), "reversal", undo1))
        assert all(r.ok for r in res), res
        assert (await ledger.account(c.card)).balance == 90_000  # type: ignore[union-attr]
        void2 = Request(tid, mid, 1, 3)
        res = await ledger.submit_linked(flows.undo(void2, "void", legs))
        assert [r.code for r in res] == [RC.OK, RC.OK]
        assert (await ledger.account(c.card)).balance == 100_000  # type: ignore[union-attr]
        assert (await ledger.account(c.fee)).balance == 0  # type: ignore[union-attr]
        # Still reversed once only: a third void by another id is refused.
        res = await ledger.submit_linked(flows.undo(Request(tid, mid, 1, 4), "void", legs))
        assert res[0].code is RC.ALREADY_REVERSED
        # The chain in one batch: sale, void, the void's reversal, a new void.
        s2 = Request(tid, mid, 1, 5)
        res = await ledger.submit_linked(flows.sale(s2, c.card, c.merchant, c.fee, 500, 3))
        assert all(r.ok for r in res)
        leg0 = s2.id("sale", 0)
        ops = [Reverse(880, leg0, "void"), Reverse(881, 880, "reversal"),
               Reverse(882, leg0, "void")]  # fmt: skip
        assert [r.code for r in await ledger.submit(ops)] == [RC.OK, RC.OK, RC.OK]
        assert (await ledger.account(c.card)).balance == 100_000  # type: ignore[union-attr]
        assert await ledger.audit() == []


async def test_a_reversed_void_holds_its_hold_again(config: LedgerConfig) -> None:
    """A pre-auth cancel reversed by the terminal: the hold stands again and can
    be completed; not when the payer has spent the money since, nor past the
    hold's expiry. Reversing the void again is the same answer, once."""
    async with open_ledger(config) as ledger:
        c = await make_chart(ledger, funds=1_000)
        hold = Transfer(90, c.card, c.merchant, 600, "preauth", pending=True, timeout_s=3600)
        assert (await ledger.execute(hold)).ok
        assert (await ledger.execute(VoidPending(91, 90, "preauth_cancel"))).ok
        assert (await ledger.account(c.card)).available == 1_000  # type: ignore[union-attr]
        for _ in range(2):
            r = await ledger.execute(Reverse(92, 91, "reversal"))
            assert r.code is RC.OK
        assert (await ledger.account(c.card)).available == 400  # type: ignore[union-attr]
        assert (await ledger.transfer(92)).type is TransferType.UNVOID  # type: ignore[union-attr]
        assert (await ledger.execute(Reverse(93, 91, "reversal"))).code is RC.ALREADY_REVERSED
        assert (await ledger.execute(PostPending(94, 90, 500, "completion"))).ok
        assert (await ledger.account(c.card)).balance == 500  # type: ignore[union-attr]
        assert (await ledger.account(c.card)).available == 500  # type: ignore[union-attr]
        # Spent since the cancel: the hold cannot come back.
        assert (await ledger.execute(Transfer(95, c.card, c.merchant, 300, "preauth",
                                              pending=True, timeout_s=3600))).ok  # fmt: skip
        assert (await ledger.execute(VoidPending(96, 95, "preauth_cancel"))).ok
        assert (await ledger.execute(Transfer(97, c.card, c.merchant, 400, "sale"))).ok
        assert (await ledger.execute(Reverse(98, 96, "reversal"))).code is RC.INSUFFICIENT_FUNDS
        # Past its expiry: the hold would have lapsed by now anyway.
        assert (await ledger.execute(Transfer(99, c.card, c.merchant, 50, "preauth",
                                              pending=True, timeout_s=1))).ok  # fmt: skip
        assert (await ledger.execute(VoidPending(100, 99, "preauth_cancel"))).ok
        await trio.sleep(1.1)
        assert (await ledger.execute(Reverse(101, 100, "reversal"))).code is RC.PENDING_EXPIRED
        assert (await ledger.account(c.card)).available == 100  # type: ignore[union-attr]
        assert await ledger.audit() == []


async def test_a_reversed_completion_holds_its_hold_again(config: LedgerConfig) -> None:
    """A completion voided or reversed: the pre-authorization stands again (its
    hold, with its expiry) and may be completed again; reversing that reversal
    uses the hold up again, and is refused once the hold was completed again."""
    async with open_ledger(config) as ledger:
        c = await make_chart(ledger, funds=1_000)

        async def avail() -> int:
            return (await ledger.account(c.card)).available  # type: ignore[union-attr]

        async def state(xid: int) -> PendingState:
            return (await ledger.transfer(xid)).pending_state  # type: ignore[union-attr,return-value]

        assert (await ledger.execute(Transfer(110, c.card, c.merchant, 600, "preauth",
                                              pending=True, timeout_s=3600))).ok  # fmt: skip
        assert (await ledger.execute(PostPending(111, 110, 400, "completion"))).ok
        assert await avail() == 600
        for _ in range(2):  # repeated: once
            assert (await ledger.execute(Reverse(112, 111, "completion_void"))).code is RC.OK
            assert await avail() == 400 and await state(110) is PendingState.PENDING
        # Its reversal undone (the terminal's 0400 for the void): posted again.
        assert (await ledger.execute(Reverse(113, 112, "reversal"))).ok
        assert await avail() == 600 and await state(110) is PendingState.POSTED
        assert (await ledger.execute(PostPending(114, 110, 100, "completion"))).code is \
            RC.PENDING_ALREADY_POSTED
        # Reversed again (the completion is reversible again), then completed anew.
        assert (await ledger.execute(Reverse(115, 111, "reversal"))).ok
        assert await avail() == 400
        assert (await ledger.execute(PostPending(116, 110, 500, "completion"))).ok
        assert await avail() == 500
        # The first completion cannot come back on top of the second one.
        assert (await ledger.execute(Reverse(117, 115, "reversal"))).code is \
            RC.PENDING_ALREADY_POSTED
        assert await avail() == 500
        # Spent since a partial completion: the reversal stands, the hold cannot.
        assert (await ledger.execute(Transfer(120, c.card, c.merchant, 400, "preauth",
                                              pending=True, timeout_s=3600))).ok  # fmt: skip
        assert (await ledger.execute(PostPending(121, 120, 100, "completion"))).ok
        assert (await ledger.execute(Transfer(122, c.card, c.merchant, 350, "sale"))).ok
        assert await avail() == 50
        assert (await ledger.execute(Reverse(123, 121, "reversal"))).ok
        assert await avail() == 150 and await state(120) is PendingState.POSTED
        # Past the hold's expiry: it ends as expired.
        assert (await ledger.execute(Transfer(130, c.card, c.merchant, 100, "preauth",
                                              pending=True, timeout_s=1))).ok  # fmt: skip
        assert (await ledger.execute(PostPending(131, 130, 100, "completion"))).ok
        await trio.sleep(1.1)
        assert (await ledger.execute(Reverse(132, 131, "reversal"))).ok
        assert await avail() == 150 and await state(130) is PendingState.EXPIRED
        assert await ledger.audit() == []


async def test_sale_void_and_settlement(config: LedgerConfig) -> None:
    async with open_ledger(config) as ledger:
        c = await make_chart(ledger, funds=100_000)
        tid, mid = "T0000002", "M0001"
        s1 = Request(tid, mid, 1, 1, rrn="000000000001", masked_pan="622202******1234")
        s2 = Request(tid, mid, 1, 2)
        s3 = Request(tid, mid, 1, 3)
        for req, amount in ((s1, 10_000), (s2, 20_000), (s3, 5_000)):
            fee = flows.fee_amount(amount, 60)
            res = await ledger.submit_linked(flows.sale(req, c.card, c.merchant, c.fee, amount,
                                                         fee))
            assert all(r.ok for r in res)
        assert (await ledger.account(c.fee)).balance == 60 + 120 + 30  # type: ignore[union-attr]
        # Void s2 (a new STAN), twice: undone once.
        void = Request(tid, mid, 1, 4)
        legs = await ledger.request_transfers(tid, 1, 2, "sale")
        assert [t.meta.leg for t in legs] == [0, 1]  # type: ignore[union-attr]
        for _ in range(2):
            res = await ledger.submit_linked(flows.undo(void, "void", legs))
            assert all(r.ok for r in res)
        assert (await ledger.account(c.card)).balance == 100_000 - 15_000  # type: ignore[union-attr]
        # A reversal (0400) of s3 removes it from the totals altogether.
        rev = Request(tid, mid, 1, 3)
        res = await ledger.submit_linked(
            flows.undo(rev, "reversal", await ledger.request_transfers(tid, 1, 3, "sale")))
        assert all(r.ok for r in res)
        # A second reversal of an already-reversed leg by a different id is refused.
        again = await ledger.execute(Reverse(777, s1.id("sale", 0)))
        assert again.code is RC.OK
        assert (await ledger.execute(Reverse(778, s1.id("sale", 0)))).code is RC.ALREADY_REVERSED
        # A foreign card's sale goes to the second half of F48.
        s5 = Request(tid, mid, 1, 5, foreign=True)
        res = await ledger.submit_linked(flows.sale(s5, c.card, c.merchant, c.fee, 700, 4))
        assert all(r.ok for r in res)
        totals = await ledger.settlement_totals(tid, 1)
        assert (totals.foreign_debit_amount, totals.foreign_debit_count) == (700, 1)
        assert (totals.foreign_credit_amount, totals.foreign_credit_count) == (0, 0)
        # debits: s1 (its reversal above has no wire kind, so it is not a 0400) and s2;
        # credits: the void of s2.
        assert (totals.debit_amount, totals.debit_count) == (30_000, 2)
        assert (totals.credit_amount, totals.credit_count) == (20_000, 1)
        records = await ledger.transfers_by_batch(tid, 1)
        assert {r.meta.kind for r in records} == {"sale", "void", "reversal"}  # type: ignore[union-attr]
        today = datetime.now(UTC).date()
        report = await ledger.transfers_by_merchant_day(mid, today)
        assert len(report) == len(records)
        assert report[-1].meta.foreign  # type: ignore[union-attr]
        assert report[0].meta.masked_pan == "622202******1234"  # type: ignore[union-attr]
        assert await ledger.audit() == []


async def test_reversal_overtaking_its_original(config: LedgerConfig) -> None:
    async with open_ledger(config) as ledger:
        c = await make_chart(ledger)
        req = Request("T0000003", "M0001", 1, 9)
        res = await ledger.submit_linked(flows.undo_missing(req, "reversal", req.id("sale", 0)))
        assert res[0].code is RC.ORIGINAL_NOT_FOUND
        late = await ledger.submit_linked(flows.sale(req, c.card, c.merchant, c.fee, 100, 1))
        assert late[0].code is RC.ALREADY_REVERSED and late[0].duplicate
        assert (await ledger.account(c.card)).balance == 100_000  # type: ignore[union-attr]


async def test_reversal_that_looked_just_before_its_preauth_committed(
    config: LedgerConfig,
) -> None:
    """money.reversal's race with a pre-authorization in flight on the terminal's old
    connection: the 0400 finds no original, the hold commits, then the 0400's tombstone
    reaches the ledger. The hold must end: the terminal was told its reversal is done.
    (Found by the fleet's cut-connection test under load: the Reverse was refused as
    ORIGINAL_IS_PENDING, the 0400 answered 00, and the hold stood.)"""
    async with open_ledger(config) as ledger:
        c = await make_chart(ledger, funds=10_000)
        tid = "T0000006"
        pa = Request(tid, "M0001", 1, 11)
        assert await ledger.request_transfers(tid, 1, 11, "preauth") == []  # the 0400's look
        held = await ledger.submit_linked(flows.preauth(pa, c.card, c.merchant, 4_000, 3600))
        assert held[0].ok
        rev = Request(tid, "M0001", 1, 11)
        res = await ledger.submit_linked(flows.undo_missing(rev, "reversal", pa.id("preauth")))
        assert res[0].ok and not res[0].duplicate
        card = await ledger.account(c.card)
        assert card is not None and (card.debits_pending, card.available) == (0, 10_000)
        hold = await ledger.transfer(pa.id("preauth"))
        assert hold is not None and hold.pending_state is PendingState.VOIDED
        # money.reversal's second look finds the hold and undoes it again: the same
        # operation, answered as the duplicate it is; so is the terminal's repeated 0400.
        late = await ledger.request_transfers(tid, 1, 11, "preauth")
        again = await ledger.submit_linked(flows.undo(rev, "reversal", late))
        assert again[0].ok and again[0].duplicate
        assert (await ledger.submit_linked(flows.preauth(pa, c.card, c.merchant, 4_000, 3600))
                )[0].duplicate  # fmt: skip
        card = await ledger.account(c.card)
        assert card is not None and (card.debits_pending, card.available) == (0, 10_000)
        # A completed hold is not voided by a Reverse (its completion is what to reverse).
        pb = Request(tid, "M0001", 1, 12)
        held = await ledger.submit_linked(flows.preauth(pb, c.card, c.merchant, 1_000, 3600))
        assert held[0].ok
        assert (await ledger.execute(PostPending(90, pb.id("preauth"), 600))).ok
        late_rev = await ledger.execute(Reverse(91, pb.id("preauth")))
        assert late_rev.code is RC.ORIGINAL_IS_PENDING
        assert await ledger.audit() == []


async def test_refunds(config: LedgerConfig) -> None:
    async with open_ledger(config) as ledger:
        c = await make_chart(ledger)
        sale = Request("T0000004", "M0001", 1, 1)
        await ledger.submit_linked(flows.sale(sale, c.card, c.merchant, c.fee, 10_000, 60))
        leg0, leg1 = sale.id("sale", 0), sale.id("sale", 1)
        r1 = await ledger.submit_linked(flows.refund(Request("T0000004", "M0001", 1, 2), c.card,
                                                     c.merchant, leg0, 4_000, c.fee, leg1, 24))
        assert all(r.ok for r in r1)
        r2 = await ledger.submit_linked(flows.refund(Request("T0000004", "M0001", 1, 3), c.card,
                                                     c.merchant, leg0, 6_001))
        assert r2[0].code is RC.REFUND_EXCEEDS_ORIGINAL
        r3 = await ledger.submit_linked(flows.refund(Request("T0000004", "M0001", 1, 4), c.card,
                                                     c.merchant, leg0, 6_000))
        assert r3[0].ok
        rec = await ledger.transfer(leg0)
        assert rec is not None and rec.refunded == 10_000
        wrong_way = await ledger.execute(Transfer(90, c.card, c.merchant, 1, "refund",
                                                  refund_of=leg0))
        assert wrong_way.code is RC.REFUND_ACCOUNTS_MISMATCH
        missing = await ledger.execute(Transfer(91, c.merchant, c.card, 1, "refund",
                                                refund_of=12345))
        assert missing.code is RC.ORIGINAL_NOT_FOUND
        assert (await ledger.execute(Reverse(92, leg0))).code is RC.ORIGINAL_HAS_REFUNDS
        # A reversed sale cannot be refunded.
        s2 = Request("T0000004", "M0001", 1, 5)
        await ledger.submit_linked(flows.sale(s2, c.card, c.merchant, c.fee, 1_000, 0))
        await ledger.execute(Reverse(93, s2.id("sale")))
        late = await ledger.execute(Transfer(94, c.merchant, c.card, 1, "refund",
                                             refund_of=s2.id("sale")))
        assert late.code is RC.ALREADY_REVERSED
        totals = await ledger.settlement_totals("T0000004", 1)
        assert (totals.credit_amount, totals.credit_count) == (10_000, 2)
        assert await ledger.audit() == []


async def test_preauth_lifecycle(config: LedgerConfig) -> None:
    async with open_ledger(config) as ledger:
        c = await make_chart(ledger, funds=10_000)
        tid = "T0000005"
        pa = Request(tid, "M0001", 1, 1)
        assert (await ledger.submit_linked(flows.preauth(pa, c.card, c.merchant, 6_000, 3600,
                                                         tolerance=600)))[0].ok
        card = await ledger.account(c.card)
        assert card is not None and (card.balance, card.debits_pending, card.available) == (
            10_000, 6_000, 4_000)
        # The hold counts against available funds.
        assert (await ledger.execute(Transfer(70, c.card, c.merchant, 4_001, "sale"))).code is \
            RC.INSUFFICIENT_FUNDS
        comp = Request(tid, "M0001", 1, 2)
        over = await ledger.submit_linked(flows.completion(comp, pa.id("preauth"), 6_601,
                                                           c.merchant, c.fee, 0))
        assert over[0].code is RC.EXCEEDS_PENDING_AMOUNT
        comp2 = Request(tid, "M0001", 1, 3)
        ok = await ledger.submit_linked(flows.completion(comp2, pa.id("preauth"), 6_600,
                                                         c.merchant, c.fee, 40))
        assert all(r.ok for r in ok)
        card = await ledger.account(c.card)
        assert card is not None and (card.balance, card.debits_pending) == (3_400, 0)
        rec = await ledger.transfer(pa.id("preauth"))
        assert rec is not None and rec.pending_state is PendingState.POSTED
        assert (await ledger.execute(PostPending(71, pa.id("preauth")))).code is \
            RC.PENDING_ALREADY_POSTED
        assert (await ledger.execute(VoidPending(72, pa.id("preauth")))).code is \
            RC.PENDING_ALREADY_POSTED
        # Partial completion of a second hold, then cancel of a third.
        pa2 = Request(tid, "M0001", 1, 4)
        await ledger.submit_linked(flows.preauth(pa2, c.card, c.merchant, 1_000, 3600))
        assert (await ledger.execute(PostPending(73, pa2.id("preauth"), 300))).ok
        pa3 = Request(tid, "M0001", 1, 5)
        await ledger.submit_linked(flows.preauth(pa3, c.card, c.merchant, 1_000, 3600))
        cancel = await ledger.submit_linked(flows.preauth_cancel(Request(tid, "M0001", 1, 6),
                                                                 pa3.id("preauth")))
        assert cancel[0].ok
        assert (await ledger.execute(PostPending(74, pa3.id("preauth")))).code is \
            RC.PENDING_ALREADY_VOIDED
        card = await ledger.account(c.card)
        assert card is not None and (card.balance, card.debits_pending) == (3_100, 0)
        # Completion void reverses the completion's legs.
        legs = await ledger.request_transfers(tid, 1, 3, "completion")
        undone = await ledger.submit_linked(flows.undo(Request(tid, "M0001", 1, 7),
                                                       "completion_void", legs))
        assert all(r.ok for r in undone)
        totals = await ledger.settlement_totals(tid, 1)
        assert (totals.debit_amount, totals.debit_count) == (6_600, 1)
        assert (totals.credit_amount, totals.credit_count) == (6_600, 1)
        assert (await ledger.execute(Reverse(75, pa2.id("preauth")))).code is \
            RC.ORIGINAL_IS_PENDING
        assert (await ledger.execute(PostPending(76, 70))).code is RC.PENDING_NOT_FOUND
        assert await ledger.audit() == []


async def test_pending_expiry(config: LedgerConfig) -> None:
    async with open_ledger(config) as ledger:
        c = await make_chart(ledger, funds=1_000)
        assert (await ledger.execute(Transfer(80, c.card, c.merchant, 700, "preauth",
                                              pending=True, timeout_s=1))).ok
        assert (await ledger.account(c.card)).available == 300  # type: ignore[union-attr]
        await trio.sleep(1.1)
        # Before the sweep, posting an overdue hold is refused.
        assert (await ledger.execute(PostPending(81, 80))).code is RC.PENDING_EXPIRED
        with trio.fail_after(5):
            while (await ledger.account(c.card)).available != 1_000:  # type: ignore[union-attr]
                await trio.sleep(0.05)
        rec = await ledger.transfer(80)
        assert rec is not None and rec.pending_state is PendingState.EXPIRED
        assert rec.type is TransferType.PENDING
        assert (await ledger.execute(VoidPending(82, 80))).code is RC.PENDING_EXPIRED
        assert await ledger.audit() == []


async def test_close_account(config: LedgerConfig) -> None:
    async with open_ledger(config) as ledger:
        c = await make_chart(ledger)
        await ledger.execute(Transfer(85, c.card, c.merchant, 100, "preauth", pending=True))
        assert (await ledger.execute(CloseAccount(c.card))).ok
        assert (await ledger.execute(CloseAccount(c.card))).duplicate
        assert (await ledger.execute(CloseAccount(31337))).code is RC.ACCOUNT_NOT_FOUND
        assert (await ledger.execute(Transfer(86, c.card, c.merchant, 1, "sale"))).code is \
            RC.ACCOUNT_CLOSED
        assert (await ledger.execute(PostPending(87, 85))).code is RC.ACCOUNT_CLOSED
        assert (await ledger.execute(VoidPending(88, 85))).ok  # holds can still be released
        assert (await ledger.account(c.card)).closed  # type: ignore[union-attr]


async def test_batches(config: LedgerConfig) -> None:
    async with open_ledger(config) as ledger:
        assert await ledger.current_batch("T0000006") == 1
        first = await ledger.execute(CloseBatch("T0000006", 1))
        assert first.ok and first.value == 2 and not first.duplicate
        again = await ledger.execute(CloseBatch("T0000006", 1))
        assert again.ok and again.duplicate and again.value == 2
        wrong = await ledger.execute(CloseBatch("T0000006", 7))
        assert wrong.code is RC.BATCH_MISMATCH and wrong.value == 2
        assert (await ledger.execute(CloseBatch("", 1))).code is RC.TERMINAL_INVALID
        assert await ledger.current_batch("T0000006") == 2
        # Two closes of the same batch in one commit: one closes, one is a duplicate.
        results = await ledger.submit([CloseBatch("T0000007", 1), CloseBatch("T0000007", 1)])
        assert [(r.ok, r.duplicate, r.value) for r in results] == [(True, False, 2),
                                                                   (True, True, 2)]


async def test_wire_ids_are_stable(config: LedgerConfig) -> None:
    async with open_ledger(config) as ledger:
        c = await make_chart(ledger)
        tid = transfer_id("T0000008", 3, 44, "sale")
        meta = WireMeta("T0000008", "M0001", 3, 44, "sale", rrn="1", masked_pan="622202******0001")
        await ledger.execute(Transfer(tid, c.card, c.merchant, 5, "sale", meta=meta))
        # A retry with a new RRN is the same request (metadata is not content).
        retry = WireMeta("T0000008", "M0001", 3, 44, "sale", rrn="2")
        r = await ledger.execute(Transfer(tid, c.card, c.merchant, 5, "sale", meta=retry))
        assert r.ok and r.duplicate
        rec = await ledger.transfer(tid)
        assert rec is not None and rec.meta == meta
