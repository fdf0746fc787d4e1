"""Participants every request shares: terminal, MAC, duplicates, card, limits, PIN."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from fastpath.crypto import DesKey
from fastpath.kinds import NAMES, Kind
from hsm.codec import HsmCommandError
from hsm.pool import HsmUnavailable
from switchd import codes, metrics
from switchd.context import LOCAL_TIME, Txn, luhn_ok
from switchd.journal import JournalUnavailable
from switchd.keys import mak_from_store
from switchd.ledger import card_account_id

if TYPE_CHECKING:
    from switchd.processor import Processor

log = logging.getLogger("switchd.checks")

#: The payment method the switch's card transactions belong to (ERP settings).
BANKCARD = "bankcard"
#: Kinds that need the payment method's "allow sale" / "allow refund" flag.
SALE_LIKE = frozenset({Kind.SALE, Kind.PREAUTH, Kind.COMPLETION, Kind.COMPLETION_ADVICE})
REFUND_LIKE = frozenset({Kind.REFUND})


async def terminal(p: Processor, txn: Txn) -> None:
    """The application (TPDU destination), then TID + MID: 97 / 03."""
    msg = txn.msg
    routing = p.cfg.routing
    app = routing.applications.get(f"{msg.destination:04X}", routing.default_application)
    if app != "bankcard":
        txn.decline(codes.NOT_SUPPORTED)
        return
    tid, mid = msg.tid, msg.mid
    if tid is None or mid is None:
        txn.decline(codes.FORMAT_ERROR)
        return
    t = p.s.store.terminals.get(tid)
    if t is None or not t.active:
        txn.decline(codes.NOT_REGISTERED)
        return
    txn.terminal = t
    m = p.s.store.merchants.get(mid)
    if t.mid != mid or m is None or not m.active:
        txn.decline(codes.INVALID_MERCHANT)
        return
    txn.merchant = m


async def mac(p: Processor, txn: Txn) -> None:
    """A signed-on session and a valid MAC, or A0 with 'sign on again'."""
    assert txn.terminal is not None
    tid = txn.terminal.tid
    session = await p.s.store.session(tid)
    key = _mak(p, session.mak_kek) if session is not None else None
    if key is None or not txn.msg.verify_mac(key):
        # Our copy may be stale: the terminal may have signed on again
        # through another worker process. One fresh read settles it.
        fresh = await p.s.store.session(tid, fresh=True)
        if fresh is not None and (session is None or fresh.mak_kek != session.mak_kek):
            session, key = fresh, _mak(p, fresh.mak_kek)
            if not txn.msg.verify_mac(key):
                key = None
        else:
            key = None
    if session is None or key is None:
        if session is not None:
            metrics.MAC_FAILURES.inc()
        txn.decline(codes.MAC_ERROR)
        txn.processing = 3
        return
    txn.session = session
    txn.mak = key


def _mak(p: Processor, mak_kek: str) -> DesKey:
    key = p.macs.get(mak_kek)
    if key is None:
        key = p.macs[mak_kek] = mak_from_store(p.s.kek, mak_kek)
    return key


async def duplicate(p: Processor, txn: Txn) -> None:
    """Same TID + batch + STAN: the first answer again, or 94 if the request differs.

    "Differs" leaves out the PIN block: it is under the session's PIK, so a
    request resent after a new sign-on carries another block for the same PIN.

    A request without F11 is a format error (30): the STAN is what names it
    to its duplicates and to its reversal (PROTOCOL.md §3), and its answer
    must echo it. Taken as STAN 0, it was approved with no F11 in the answer.
    """
    assert txn.terminal is not None
    if txn.msg.stan is None:
        log.warning("terminal %s: %s request without F11 refused", txn.terminal.tid, txn.msg.mti)
        txn.decline(codes.FORMAT_ERROR)
        return
    key = (txn.terminal.tid, txn.batch, txn.stan, txn.kind is Kind.REVERSAL)
    while (busy := p.in_progress.get(key)) is not None:
        await busy.wait()  # the same request is being answered right now
    try:
        entry = await p.s.journal.lookup(*key)
    except JournalUnavailable as exc:
        log.error("duplicate check impossible: %s", exc)
        txn.decline(codes.SYSTEM_MALFUNCTION)
        return
    if entry is not None:
        # A reversal may be repeated with another reason in F39 (PROTOCOL.md
        # §3): it is still the same undo, answered as the first time.
        if entry.digest == txn.request_digest() or txn.kind is Kind.REVERSAL:
            txn.replay = entry.response
        else:
            txn.decline(codes.DUPLICATE)
        return
    p.in_progress[key] = trio.Event()
    txn.claimed = key


async def open_batch(p: Processor, tid: str, named: int) -> int:
    """The terminal's open batch, as this process knows it, checked afresh when it differs.

    The copy held here may be stale: the batch may have been closed through
    another worker process or node. One read of the ledger settles it.
    """
    current = p.open_batches.get(tid)
    if current != named:
        current = p.open_batches[tid] = await p.s.ledger.current_batch(tid)
    return current


async def batch(p: Processor, txn: Txn) -> None:
    """60.2 must name the open batch (the host owns the number): else 22, sign on again.

    A request under a closed batch or a number the host never gave would be
    posted where no settlement counts it; the sign-on answer carries the
    open batch, so the terminal resynchronises.
    """
    assert txn.terminal is not None
    tid = txn.terminal.tid
    current = await open_batch(p, tid, txn.batch)
    if current != txn.batch:
        log.warning("terminal %s sent batch %06d; the open batch is %06d", tid, txn.batch, current)
        txn.decline(codes.OPERATION_ERROR)
        txn.processing = 3


async def card(p: Processor, txn: Txn) -> None:
    """Issuer by BIN (15), Luhn (14), on file and active (14/05), not expired (54).

    Tracks encrypted under the TDK (F53 digit 3 = 1) are refused 40: the
    method is not in PROTOCOL.md, and guessing it would misread every card.
    """
    security = txn.msg.security_control
    if security and security[2:3] == "1":
        log.warning("terminal %s sent encrypted tracks (F53 %s): not supported",
                    txn.msg.tid, security[:3])  # fmt: skip
        txn.decline(codes.NOT_SUPPORTED)
        return
    pan = txn.msg.card_number
    if not pan:
        txn.decline(codes.FORMAT_ERROR)
        return
    txn.pan = pan
    issuer = p.s.issuer_for(pan)
    if issuer is None:
        txn.decline(codes.NO_SUCH_ISSUER)
        return
    if not luhn_ok(pan):
        txn.decline(codes.INVALID_CARD)
        return
    if not issuer.on_us:
        # No upstream network is configured: only on-us cards can be authorised.
        txn.decline(codes.ISSUER_UNAVAILABLE)
        return
    c = p.s.store.cards.get(str(card_account_id(pan, p.s.pan_key)))
    if c is None:
        txn.decline(codes.INVALID_CARD)
        return
    txn.card = c
    if c.status != "active":
        txn.decline(codes.DO_NOT_HONOR)
        return
    expiry = txn.msg.expiry or _track_expiry(txn.msg.track2) or c.expiry
    if _expired(expiry) or _expired(c.expiry):
        txn.decline(codes.EXPIRED_CARD)


def _track_expiry(track2: str | None) -> str | None:
    if not track2 or "=" not in track2:
        return None
    exp = track2.split("=", 1)[1][:4]
    return exp if len(exp) == 4 else None


def _expired(yymm: str) -> bool:
    if len(yymm) != 4 or not yymm.isdigit():
        return True
    return yymm < LOCAL_TIME.now().yymm


async def permitted(p: Processor, txn: Txn) -> None:
    """The merchant's permitted kinds (58) and payment method flags (40)."""
    m = txn.merchant
    assert m is not None
    kind = NAMES[txn.orig_kind or txn.kind]
    if m.permitted and kind not in m.permitted:
        txn.decline(codes.NOT_PERMITTED)
        return
    method = p.s.store.methods.get((m.mid, BANKCARD))
    if method is None:
        return
    if (txn.kind in SALE_LIKE and not method.allow_sale) or (
        txn.kind in REFUND_LIKE and not method.allow_refund
    ):
        txn.decline(codes.NOT_SUPPORTED)


async def amount(p: Processor, txn: Txn) -> None:
    """A positive amount (13) within the merchant's limits (61), in our currency (30).

    A request without F4, or whose F49 names another currency than the
    switch's (PROTOCOL.md §2: an3, 156), is a format error: posting its
    minor units as ours would move the wrong money.
    """
    m = txn.merchant
    assert m is not None
    amt = txn.amount
    limits = p.cfg.limits
    currency = txn.msg.currency
    if amt is None or (currency is not None and currency != p.cfg.transactions.currency):
        log.warning("terminal %s: amount %s in currency %s refused", txn.msg.tid, amt, currency)
        txn.decline(codes.FORMAT_ERROR)
        return
    if amt <= 0:
        txn.decline(codes.INVALID_AMOUNT)
        return
    low = m.min_amount if m.min_amount is not None else limits.min_amount
    high = m.max_amount if m.max_amount is not None else limits.max_amount
    if amt < low:
        txn.decline(codes.INVALID_AMOUNT)
    elif amt > high:
        txn.decline(codes.AMOUNT_LIMIT)


#: F53 digit 1 (PROTOCOL.md §2): how the terminal formed its PIN block.
PIN_WITH_PAN = "2"  # ANSI X9.8 / ISO 0 with the PAN (the default when F53 is absent)
PIN_WITHOUT_PAN = "1"  # ANSI X9.8 with an all-zero account
#: The account a PIN block "without PAN" was formed with.
NO_ACCOUNT = "0" * 12
#: Thales format codes (THALES.md §5): ISO 0, and ISO 1, which needs no account.
ISO_0, ISO_1 = "01", "05"


async def pin(p: Processor, txn: Txn) -> None:
    """When F52 is present: the HSM checks it against the card's PVV (55 / 75).

    Tries (security.pin_tries = N): wrong PINs 1 to N-1 are 55; the Nth, the
    one that reaches the limit, is 75, as issuers answer it; after that every
    PIN is 75 without asking the HSM. A right PIN before the limit resets
    the count.

    F53's first digit says how the block was formed; a block that F53 says
    is not there (0) or in a format we do not know is 99, sign on again.
    Its second digit (0 single DES, 6 3DES) is not checked: the PIK's length
    is the one its sign-on made (60.3), and a block made otherwise does not
    decrypt to a PIN block (the HSM's 20/23/24: 99 here, no try counted),
    while a wrong digit over a good block would only refuse a good PIN.
    """
    block = txn.msg.pin_block
    if block is None:
        return
    c, session, pan = txn.card, txn.session, txn.pan
    assert c is not None and session is not None and pan is not None
    form = (txn.msg.security_control or PIN_WITH_PAN)[:1]
    if form != PIN_WITH_PAN and form != PIN_WITHOUT_PAN:
        log.warning("PIN block sent with F53 PIN format %r", form)
        txn.decline(codes.PIN_FORMAT)
        txn.processing = 3
        return
    tries = p.cfg.security.pin_tries
    if c.pin_failures >= tries:
        txn.decline(codes.PIN_TRIES_EXCEEDED)
        return
    pvk = p.s.store.issuer_keys.get(c.bin)
    if pvk is None:
        log.error("no PVK for BIN %s", c.bin)
        txn.decline(codes.SYSTEM_MALFUNCTION)
        return
    block_hex, account, pvki = block.hex().upper(), pan[-13:-1], str(c.pvki)
    hsm = p.s.hsm
    try:
        if form == PIN_WITH_PAN:
            ok = await hsm.verify_pin_pvv(session.pik_lmk, pvk, block_hex, account, pvki, c.pvv)
        else:
            # DC takes one account for the block and the PVV, and this block
            # has none: move it under the switch's zone key as ISO 1 (which
            # binds no account), then verify that against the card's PAN.
            zpk = await p.zone_pin_key()
            moved = await hsm.translate_pin(session.pik_lmk, zpk, block_hex, NO_ACCOUNT,
                                            src_format=ISO_0, dst_format=ISO_1)  # fmt: skip
            ok = await hsm.verify_interchange_pin_pvv(
                zpk, pvk, moved.pin_block, account, pvki, c.pvv, pin_format=ISO_1
            )
    except HsmCommandError as exc:
        # 20/23/24: the block does not decrypt to a PIN block under this PIK.
        log.warning("PIN verification refused by the HSM: error %s", exc.code)
        txn.decline(codes.PIN_FORMAT)
        txn.processing = 3
        return
    except HsmUnavailable:
        log.error("no HSM available for PIN verification")
        txn.decline(codes.SYSTEM_MALFUNCTION)
        return
    if ok:
        if c.pin_failures:
            txn.card = await p.s.store.set_pin_failures(c, 0)
        return
    failures = c.pin_failures + 1
    txn.card = await p.s.store.set_pin_failures(c, failures)
    txn.decline(codes.PIN_TRIES_EXCEEDED if failures >= tries else codes.WRONG_PIN)
