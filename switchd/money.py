"""Participants that read or move money: the last step of each financial flow.

Every posting goes to the ledger as one linked group (all legs or none), with
transfer ids derived from TID + batch + STAN + kind, so a retried request
can never post twice. The transaction's deadline cannot interrupt the ledger
call: once operations are submitted the switch waits for the ledger's
verdict (the engine's wait is not cancellable), because abandoning the wait
would not stop the commit. If the
verdict comes after the deadline, what was posted is undone at once and the
terminal is answered 98: late money is never left half-posted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING

import trio

from fastpath.codec import decode
from fastpath.kinds import Kind
from switchd import codes
from switchd.context import Txn, auth_code_of, rrn_of
from switchd.journal import JournalUnavailable
from switchd.ledger import (
    LedgerError,
    Op,
    ResultCode,
    card_account_id,
    fee_account_id,
    flows,
    merchant_account_id,
)
from switchd.ledger.model import PendingState, TransferRecord

if TYPE_CHECKING:
    from switchd.processor import Processor

log = logging.getLogger("switchd.money")

#: Wire kind names the ledger files transfers under (its settlement counts them).
LEDGER_KIND = {
    Kind.SALE: "sale",
    Kind.VOID: "void",
    Kind.REFUND: "refund",
    Kind.PREAUTH: "preauth",
    Kind.PREAUTH_CANCEL: "preauth_cancel",
    Kind.COMPLETION: "completion",
    Kind.COMPLETION_ADVICE: "completion",
    Kind.COMPLETION_VOID: "completion_void",
    Kind.REVERSAL: "reversal",
}


def _request(p: Processor, txn: Txn, batch: int | None = None, stan: int | None = None
             ) -> flows.Request:  # fmt: skip
    assert txn.terminal is not None
    return flows.Request(
        txn.terminal.tid, txn.terminal.mid, txn.batch if batch is None else batch,
        txn.stan if stan is None else stan, rrn=p.rrn(txn), masked_pan=txn.masked_pan(),
    )  # fmt: skip


def _card_account(p: Processor, txn: Txn) -> int:
    if txn.card is not None:
        # The card check found the card under this id (the store keys cards by
        # it): no second keyed hash of the PAN.
        return int(txn.card.card_id)
    assert txn.pan is not None
    return card_account_id(txn.pan, p.s.pan_key)


# Account ids of merchants and of the fee account depend on the MID and the
# currency alone: hashed once each, not on every posting.
_merchant_account = lru_cache(maxsize=65536)(merchant_account_id)
_fee_account = lru_cache(maxsize=16)(fee_account_id)


def _fee(txn: Txn, amount: int) -> int:
    assert txn.merchant is not None
    return flows.fee_amount(amount, txn.merchant.fee_bp)


async def _post(p: Processor, txn: Txn, ops: list[Op]) -> bool:
    """Submit one linked group; set the response code; True when it posted."""
    if not ops:
        return True
    # No shield needed around the submission: once queued, the ledger's wait
    # cannot be cancelled (engine.py) and the verdict always arrives.
    try:
        results = await p.s.ledger.submit_linked(ops)
    except LedgerError as exc:
        log.error("ledger commit failed: %s", exc)
        txn.decline(codes.SYSTEM_MALFUNCTION)
        return False
    failed = [r for r in results if not r.ok and r.code is not ResultCode.LINKED_EVENT_FAILED]
    if failed:
        txn.decline(codes.from_ledger(failed[0].code))
        return False
    if results[0].duplicate and await _undone(p, ops[0].id):
        # The ledger answers a repeated request with its first result, but
        # that posting has been undone since (an approval that came late or
        # could not be encoded, a reversal): approving the retry would report
        # money that did not move. The journal answers such retries; this
        # holds where it lost the record (journal.py).
        txn.decline(codes.from_ledger(ResultCode.ALREADY_REVERSED))
        return False
    if trio.current_time() > txn.deadline:
        # Too late for the terminal: undo what was posted, answer 98. The
        # deadline has passed, so the undo must be shielded from it.
        with trio.CancelScope(shield=True):
            records = [await p.s.ledger.transfer(op.id) for op in ops]
            await _compensate(p, txn, [r for r in records if r is not None], "a late posting")
        txn.decline(codes.ISSUER_TIMEOUT)
        return False
    return True


async def _undone(p: Processor, transfer_id: int) -> bool:
    """The transfer has been reversed, or (a hold) voided, since it was posted."""
    rec = await p.s.ledger.transfer(transfer_id)
    return rec is not None and (
        rec.reversed_by is not None or rec.pending_state == PendingState.VOIDED
    )


async def _compensate(p: Processor, txn: Txn, records: list[TransferRecord], what: str) -> None:
    """Undo `records` (what `txn` posted) at once; log.critical when that fails."""
    req = _request(p, txn)
    # Filed as the terminal's own reversal would be: if the terminal sends its
    # 0400 after all, the ledger sees the same ids and answers a duplicate.
    undo = flows.undo(req, "reversal", records)
    try:
        results = await p.s.ledger.submit_linked(undo)
    except LedgerError as exc:
        log.critical("could not undo %s (%s): reverse TID %s STAN %06d by hand",
                     what, exc, req.terminal_id, req.stan)  # fmt: skip
        return
    if not all(r.ok for r in results):
        log.critical("undo of %s refused (%s): reverse TID %s STAN %06d by hand",
                     what, [r.code.value for r in results], req.terminal_id, req.stan)  # fmt: skip


async def undo_unanswerable(p: Processor, txn: Txn) -> None:
    """Undo the posting of an approval whose answer cannot be encoded.

    The terminal is answered 96, which it reads as "declined, nothing done":
    it will not reverse, so the switch undoes the posting itself, as that
    0400 would have (`_compensate`). Only for kinds the terminal would
    reverse (fastpath.kinds.REVERSIBLE): a reversal's undo is what was asked
    for, and an advice (refund, completion advice) is kept and sent again by
    the terminal until it is answered, so undoing one would lose it.
    """
    assert txn.terminal is not None
    tid, what = txn.terminal.tid, "an approval that could not be encoded"
    try:
        records = await p.s.ledger.request_transfers(tid, txn.batch, txn.stan,
                                                     LEDGER_KIND[txn.kind])  # fmt: skip
    except Exception as exc:  # a read that failed (the database's own errors too)
        log.critical("could not undo %s (%s): reverse TID %s STAN %06d by hand",
                     what, exc, tid, txn.stan)  # fmt: skip
        return
    if not records:
        log.critical("could not undo %s (no posting found): check TID %s STAN %06d",
                     what, tid, txn.stan)  # fmt: skip
        return
    await _compensate(p, txn, records, what)


async def balance(p: Processor, txn: Txn) -> None:
    account = await p.s.ledger.account(_card_account(p, txn))
    if account is None:
        txn.decline(codes.INVALID_CARD)
        return
    avail = account.available
    sign = "C" if avail >= 0 else "D"
    txn.fields[54] = f"1002{p.cfg.transactions.currency}{sign}{abs(avail):012d}"


async def sale(p: Processor, txn: Txn) -> None:
    assert txn.amount is not None
    ops = flows.sale(
        _request(p, txn), _card_account(p, txn), _merchant_account(txn.terminal.mid),
        _fee_account(p.cfg.transactions.currency), txn.amount, _fee(txn, txn.amount),
    )  # fmt: skip
    await _post(p, txn, ops)


async def preauth(p: Processor, txn: Txn) -> None:
    assert txn.amount is not None
    tolerance = txn.amount * p.cfg.transactions.completion_tolerance_pct // 100
    ops = flows.preauth(
        _request(p, txn), _card_account(p, txn), _merchant_account(txn.terminal.mid),
        txn.amount, p.cfg.transactions.preauth_expiry_s, tolerance,
    )  # fmt: skip
    await _post(p, txn, ops)


async def _original(p: Processor, txn: Txn, kinds: tuple[Kind, ...], same_batch: bool,
                    dated: bool = False) -> list[TransferRecord] | None:  # fmt: skip
    """The approved original a void, refund, cancel or completion names in F61 (25 if none).

    `dated`: 61.3 (a refund's original date, MMDD) must be the F13 the
    original was answered with, when the terminal sends one.
    """
    msg = txn.msg
    assert txn.terminal is not None
    ob, os_ = msg.original_batch, msg.original_stan
    if ob is None or os_ is None:
        txn.decline(codes.FORMAT_ERROR)
        return None
    batch, stan = int(ob), int(os_)
    if same_batch and batch != txn.batch:
        txn.decline(codes.ORIGINAL_NOT_FOUND)
        return None
    try:
        entry = await p.s.journal.lookup(txn.terminal.tid, batch, stan, False)
    except JournalUnavailable as exc:
        # Without the original's record nothing can be undone safely: 96, and
        # the terminal may try again once the journal can be read.
        log.error("original %d/%06d of terminal %s not looked up: %s",
                  batch, stan, txn.terminal.tid, exc)  # fmt: skip
        txn.decline(codes.SYSTEM_MALFUNCTION)
        return None
    if entry is None:
        return await _original_in_ledger(p, txn, kinds, batch, stan, dated)
    names = {k.name.lower() for k in kinds}
    if entry.rc != codes.APPROVED or entry.kind not in names:
        txn.decline(codes.ORIGINAL_NOT_FOUND)
        return None
    response = entry.response
    if not _quotes(txn, dated, entry.rrn, entry.auth_code, lambda: decode(response).local_date):
        txn.decline(codes.ORIGINAL_NOT_FOUND)
        return None
    kind = LEDGER_KIND[next(k for k in kinds if k.name.lower() == entry.kind)]
    records = await p.s.ledger.request_transfers(txn.terminal.tid, batch, stan, kind)
    if not records:
        txn.decline(codes.ORIGINAL_NOT_FOUND)
        return None
    return records


def _quotes(txn: Txn, dated: bool, rrn: str, auth_code: str,
            local_date: Callable[[], str | None]) -> bool:  # fmt: skip
    """The request quotes the original's answer right: its F37 and F38 where both
    sides have one, and (`dated`) its 61.3 the original's F13, read only then."""
    msg = txn.msg
    if msg.rrn and rrn and msg.rrn != rrn:
        return False
    if msg.auth_code and auth_code and msg.auth_code.strip() != auth_code:
        return False
    date = msg.original_date if dated else None
    return not (date and date != "0000" and local_date() != date)


async def _original_in_ledger(p: Processor, txn: Txn, kinds: tuple[Kind, ...], batch: int,
                              stan: int, dated: bool) -> list[TransferRecord] | None:  # fmt: skip
    """The original of a request whose journal has no record of it, from the ledger.

    The journal writes its rows a little after the answers (journal.py) and
    a process killed in between loses them; the ledger, which keeps the
    money, has the original's transfers if it was approved. Its answer's
    RRN and auth code are derived from what names it (context.rrn_of), and
    its F13 is the local date of its commit, so the checks against F37, F38
    and 61.3 are the same as against a journal record. A transfer since
    undone (a reversal, a late answer's compensation) is for the ledger to
    refuse when the undo or the refund is posted.
    """
    assert txn.terminal is not None
    tid = txn.terminal.tid
    records: list[TransferRecord] = []
    for kind in dict.fromkeys(LEDGER_KIND[k] for k in kinds):
        records = await p.s.ledger.request_transfers(tid, batch, stan, kind)
        if records:
            break
    if not records or not _quotes(
        txn, dated, rrn_of(tid, batch, stan, False), auth_code_of(tid, batch, stan),
        lambda: time.strftime("%m%d", time.localtime(records[0].created_at_us / 1e6)),
    ):  # fmt: skip
        txn.decline(codes.ORIGINAL_NOT_FOUND)
        return None
    log.warning("original %d/%06d of terminal %s is not in the journal: found in the ledger",
                batch, stan, tid)  # fmt: skip
    return records


async def _undo_original(p: Processor, txn: Txn, kinds: tuple[Kind, ...], kind: str) -> None:
    """A void of the same batch, card and amount: every leg of the original undone once.

    A void names its original by F37 + F38 + F61 (PROTOCOL.md section 3): one
    without F37 or F38 is a format error (30), as one without F61 is. One
    whose card is not the original's names no original (25): undone, it
    would credit the original's card while the terminal prints another.
    """
    msg = txn.msg
    if not (msg.rrn or "").strip() or not (msg.auth_code or "").strip():
        txn.decline(codes.FORMAT_ERROR)
        return
    records = await _original(p, txn, kinds, same_batch=True)
    if records is None:
        return
    if records[0].debit_account_id != _card_account(p, txn):
        txn.decline(codes.ORIGINAL_NOT_FOUND)
        return
    if txn.amount != records[0].amount:
        txn.decline(codes.AMOUNT_DIFFERS)
        return
    await _post(p, txn, flows.undo(_request(p, txn), kind, records))


async def void(p: Processor, txn: Txn) -> None:
    await _undo_original(p, txn, (Kind.SALE,), "void")


async def completion_void(p: Processor, txn: Txn) -> None:
    await _undo_original(p, txn, (Kind.COMPLETION, Kind.COMPLETION_ADVICE), "completion_void")


async def refund(p: Processor, txn: Txn) -> None:
    """Partial refunds of a sale or completion, up to its amount in total (any batch)."""
    records = await _original(
        p, txn, (Kind.SALE, Kind.COMPLETION, Kind.COMPLETION_ADVICE), same_batch=False,
        dated=True,
    )  # fmt: skip
    if records is None:
        return
    assert txn.amount is not None
    leg0 = records[0]
    ops = flows.refund(
        _request(p, txn), _card_account(p, txn), _merchant_account(txn.terminal.mid),
        leg0.id, txn.amount,
    )  # fmt: skip
    await _post(p, txn, ops)


async def preauth_cancel(p: Processor, txn: Txn) -> None:
    records = await _original(p, txn, (Kind.PREAUTH,), same_batch=False)
    if records is None:
        return
    if txn.amount is not None and txn.amount != records[0].amount:
        txn.decline(codes.AMOUNT_DIFFERS)
        return
    await _post(p, txn, flows.preauth_cancel(_request(p, txn), records[0].id))


async def completion(p: Processor, txn: Txn) -> None:
    """Online completion or offline advice: post the hold, up to amount + tolerance."""
    records = await _original(p, txn, (Kind.PREAUTH,), same_batch=False)
    if records is None:
        return
    assert txn.amount is not None
    ops = flows.completion(
        _request(p, txn), records[0].id, txn.amount, _merchant_account(txn.terminal.mid),
        _fee_account(p.cfg.transactions.currency), _fee(txn, txn.amount),
    )  # fmt: skip
    await _post(p, txn, ops)


async def reversal(p: Processor, txn: Txn) -> None:
    """0400: undo the original exactly once; 00 whether or not it ever arrived."""
    assert txn.terminal is not None and txn.orig_kind is not None
    txn.pan = txn.msg.card_number  # for the journal and the log (masked there)
    kind = LEDGER_KIND[txn.orig_kind]
    records = await p.s.ledger.request_transfers(txn.terminal.tid, txn.batch, txn.stan, kind)
    req = _request(p, txn)
    if records:
        ops = flows.undo(req, "reversal", records)
    else:
        # The original never reached us (or not yet): a tombstone makes the
        # ledger refuse it if it arrives after its reversal.
        ops = flows.undo_missing(req, "reversal", req.id(kind, 0))
    posted = await _post(p, txn, ops)
    if posted and not records:
        # The original may have committed (on another node) between our look
        # and the tombstone: then only its leg 0 was reversed. Undo the rest;
        # the leg-0 reverse is the same id again and answers as a duplicate.
        late = await p.s.ledger.request_transfers(txn.terminal.tid, txn.batch, txn.stan, kind)
        if late:
            await _post(p, txn, flows.undo(req, "reversal", late))
    if not posted and txn.rc in (codes.INVALID_TRANSACTION, codes.ORIGINAL_NOT_FOUND):
        # Already undone (by a void, a timeout or an earlier reversal), or
        # nothing to undo: the terminal is told it is done, which it is.
        txn.rc = None
    elif not posted and txn.orig_kind is Kind.PREAUTH_CANCEL and txn.rc == codes.INSUFFICIENT_FUNDS:
        # The cancel released the hold and the card has spent the money since:
        # the hold cannot be held again. The 0400 is answered 00 as the
        # protocol wants (a terminal retries a refused reversal before every
        # new request); the pre-authorization stays cancelled, so a completion
        # of it is refused, and operations hear of it here.
        log.error("reversal of the pre-auth cancel TID %s STAN %06d: the hold cannot be"
                  " restored (insufficient funds); the pre-authorization stays cancelled",
                  txn.terminal.tid, txn.stan)  # fmt: skip
        txn.rc = None
