"""Participants of management messages: sign-on/off, echo, settlement, upload, parameters."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import orjson

from fastpath.codec import SettlementTotals
from hsm.codec import HsmCommandError
from hsm.pool import HsmUnavailable
from switchd import checks, codes
from switchd.context import Txn
from switchd.keys import sign_on_keys
from switchd.ledger import CloseBatch, LedgerError
from switchd.ledger import SettlementTotals as LedgerTotals
from switchd.store import Session, now_us

if TYPE_CHECKING:
    from switchd.processor import Processor

log = logging.getLogger("switchd.management")


async def sign_on(p: Processor, txn: Txn) -> None:
    """Fresh working keys under the TMK in F62, the open batch in 60.2."""
    t = txn.terminal
    assert t is not None
    netcode = txn.msg.network_code or "003"
    try:
        keys = await sign_on_keys(p.s.hsm, t.tmk_lmk, p.s.kek_zmk_lmk, p.s.kek, netcode)
    except (HsmCommandError, HsmUnavailable, KeyError) as exc:
        log.error("sign-on of %s failed at the HSM: %s", t.tid, exc)
        txn.decline(codes.SYSTEM_MALFUNCTION)
        return
    old = p.s.store.sessions.get(t.tid)
    if old is not None:
        p.macs.pop(old.mak_kek, None)
    await p.s.store.save_session(
        Session(t.tid, keys.pik_lmk, keys.mak_kek, keys.tdk_lmk, netcode, now_us())
    )
    batch = p.open_batches[t.tid] = await p.s.ledger.current_batch(t.tid)
    txn.mak = keys.mak
    txn.fields[62] = keys.field62
    txn.fields[60] = f"00{batch:06d}{netcode}"
    txn.fields[37] = p.rrn(txn)


async def sign_off(p: Processor, txn: Txn) -> None:
    assert txn.terminal is not None
    # Answer under the session key, then forget it: the next request needs a sign-on.
    await p.s.store.drop_session(txn.terminal.tid)


async def echo(p: Processor, txn: Txn) -> None:
    return None


def _totals_field(debit: int, dcount: int, credit: int, ccount: int, code: int) -> str:
    return f"{debit:012d}{dcount:03d}{credit:012d}{ccount:03d}{code}"


async def settlement(p: Processor, txn: Txn) -> None:
    """Compare the 0500's totals with the ledger's, answer 1 or 2, close the batch.

    Each part of F48 (domestic, foreign) gets its own code. Only the open
    batch can be settled. An 0500 for a batch settled before (the terminal
    missed our answer) is compared again and closes nothing; one for a
    batch the host never opened is 22 with "sign on again", whose answer
    carries the open batch.
    """
    assert txn.terminal is not None
    tid = txn.terminal.tid
    try:
        theirs = txn.msg.settlement_totals()
    except Exception:
        txn.decline(codes.FORMAT_ERROR)
        return
    if await checks.open_batch(p, tid, txn.batch) != txn.batch:
        await _settled_before(p, txn, theirs)
        return
    ours = await p.s.ledger.settlement_totals(tid, txn.batch)
    domestic, foreign = _compare(theirs, ours)
    balanced = domestic and foreign
    # The verdict is stored before the batch closes: if the close fails the
    # batch stays open and a resend overwrites it; if the answer is lost
    # after the close, a resend finds it (_settled_before).
    await p.s.store.db.execute(
        "INSERT INTO settlements (tid, batch, mid, balanced, terminal_totals, host_totals,"
        " created_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (tid, batch) DO UPDATE SET"
        " balanced = excluded.balanced, terminal_totals = excluded.terminal_totals,"
        " host_totals = excluded.host_totals, created_at = excluded.created_at",
        (
            tid, txn.batch, txn.terminal.mid, int(balanced),
            orjson.dumps([theirs.debit_amount, theirs.debit_count, theirs.credit_amount,
                          theirs.credit_count]).decode(),
            orjson.dumps([ours.debit_amount, ours.debit_count, ours.credit_amount,
                          ours.credit_count]).decode(),
            now_us(),
        ),
    )  # fmt: skip
    try:
        result = await p.s.ledger.execute(CloseBatch(tid, txn.batch))
    except LedgerError as exc:
        log.error("closing batch %d of %s failed: %s", txn.batch, tid, exc)
        txn.decline(codes.SYSTEM_MALFUNCTION)
        return
    if not result.ok or result.duplicate:
        # Closed meanwhile by another request (another worker, or a resend).
        p.open_batches.pop(tid, None)
        await _settled_before(p, txn, theirs)
        return
    p.open_batches[tid] = int(result.value)  # type: ignore[arg-type]
    # The batch is closed: its answers are no longer needed for duplicates.
    p.s.journal.forget_batch(tid, txn.batch)
    txn.fields[48] = _answer_totals(theirs, domestic, foreign)
    log.info(
        "settlement",
        extra={"fields": {"event": "settlement", "tid": tid, "batch": txn.batch,
                          "balanced": balanced}},
    )  # fmt: skip


def _compare(theirs: SettlementTotals, ours: LedgerTotals) -> tuple[bool, bool]:
    """Whether the domestic and the foreign totals each agree with the ledger's."""
    domestic = (
        theirs.debit_amount == ours.debit_amount
        and theirs.debit_count == ours.debit_count
        and theirs.credit_amount == ours.credit_amount
        and theirs.credit_count == ours.credit_count
    )
    # The foreign part may be absent from F48: then it counts as zeros.
    foreign = (
        (theirs.foreign_debit_amount or 0) == ours.foreign_debit_amount
        and (theirs.foreign_debit_count or 0) == ours.foreign_debit_count
        and (theirs.foreign_credit_amount or 0) == ours.foreign_credit_amount
        and (theirs.foreign_credit_count or 0) == ours.foreign_credit_count
    )
    return domestic, foreign


def _answer_totals(theirs: SettlementTotals, domestic: bool, foreign: bool) -> str:
    """F48 of the answer: the terminal's totals back, each part with its own code (1 or 2)."""
    return _totals_field(
        theirs.debit_amount, theirs.debit_count, theirs.credit_amount, theirs.credit_count,
        1 if domestic else 2,
    ) + _totals_field(
        theirs.foreign_debit_amount or 0, theirs.foreign_debit_count or 0,
        theirs.foreign_credit_amount or 0, theirs.foreign_credit_count or 0, 1 if foreign else 2,
    )  # fmt: skip


async def _settled_before(p: Processor, txn: Txn, theirs: SettlementTotals) -> None:
    """An 0500 that names a batch other than the open one."""
    assert txn.terminal is not None
    tid = txn.terminal.tid
    rows = await p.s.store.db.fetchall(
        "SELECT balanced FROM settlements WHERE tid = ? AND batch = ?", (tid, txn.batch)
    )
    if rows:
        # Compared again with the closed batch's totals, which only a late
        # reversal can have changed since: then the new verdict is the true one.
        log.info("settlement of %s repeated for closed batch %06d", tid, txn.batch)
        ours = await p.s.ledger.settlement_totals(tid, txn.batch)
        txn.fields[48] = _answer_totals(theirs, *_compare(theirs, ours))
        return
    log.warning("settlement of %s names batch %06d, which is not open", tid, txn.batch)
    txn.decline(codes.OPERATION_ERROR)
    txn.processing = 3


async def batch_upload(p: Processor, txn: Txn) -> None:
    """0320: keep each record; on the last one (207/202) reconcile with the journal."""
    assert txn.terminal is not None
    msg = txn.msg
    netcode = msg.network_code or ""
    records = msg.get(48) or ""
    await p.s.store.db.execute(
        "INSERT INTO batch_uploads (tid, batch, stan, netcode, records, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (tid, batch, stan) DO NOTHING",
        (txn.terminal.tid, txn.batch, txn.stan, netcode, records, now_us()),
    )
    if netcode in ("202", "207"):
        rows = await p.s.store.db.fetchall(
            "SELECT COUNT(*) FROM batch_uploads WHERE tid = ? AND batch = ?",
            (txn.terminal.tid, txn.batch),
        )
        log.info(
            "batch upload complete",
            extra={"fields": {"event": "batch_upload", "tid": txn.terminal.tid,
                              "batch": txn.batch, "messages": rows[0][0]}},
        )  # fmt: skip


async def parameter_download(p: Processor, txn: Txn) -> None:
    """0800 / 360: the configured parameters in F62 (``Parameters.field62``: GBK text)."""
    txn.fields[62] = p.cfg.parameters.field62()
