"""From a frame to its answer: decode, classify, run the participants, encode.

The flow of each transaction kind is a short list of participants (the jPOS
TransactionManager's idea): the list, not the code, shows what a sale does.
Each participant reads and sets the ``Txn``; the first one that sets a
response code ends the list. Participants that need money or secrets call
the ledger (``switchd.money``) or the HSM; none of them touches a socket.

Errors: a frame that does not decode is answered ``30`` when its MTI can be
read, echoing what decoded before the bad field; a bug inside a participant
is logged and answered ``96``; nothing escapes ``handle`` but the answer, so
one bad request never harms another.
An answer that cannot be encoded becomes a bare ``96``; if it was the
approval of a request the terminal would reverse, its posting is undone
first, since a terminal does not reverse a 96.

Overload: at most ``max_in_flight`` transactions run their participants at
once; the others wait their turn (``switchd.admission``), and one that waits
past ``queue_timeout_s`` is answered 96 having done nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from fastpath.classify import classify
from fastpath.codec import build_response, decode, decode_frame, decode_readable, encode_frame
from fastpath.crypto import DesKey
from fastpath.errors import CodecError, DecodeError
from fastpath.kinds import FINANCIAL, NAMES, REVERSIBLE, Kind
from hsm.cheap_metrics import cheap
from hsm.client import ZPK
from switchd import checks, codes, metrics, money
from switchd.admission import Admission
from switchd.context import LOCAL_TIME, Txn, auth_code_of, rrn_of
from switchd.deadlines import Deadlines
from switchd.journal import Entry
from switchd.jsonlog import log_txn
from switchd.services import Services

log = logging.getLogger("switchd.processor")

Participant = Callable[["Processor", Txn], Awaitable[None]]

#: What each kind's answer echoes from the request.
# PROTOCOL.md §3: a sale answer echoes 2, 3, 4, 11, 25, 41, 42, 49, 60; the
# answers that quote an original also return its reference (61).
FINANCIAL_ECHO = (2, 3, 4, 11, 25, 41, 42, 49, 60, 61)
MANAGEMENT_ECHO = (11, 41, 42, 60)
SETTLEMENT_ECHO = (11, 41, 42, 49, 60, 63)
#: What the 30 to a request that does not decode echoes, by its MTI (the
#: kind is unknown): as the answers to that MTI's kinds do, else MANAGEMENT_ECHO.
UNDECODABLE_ECHO = {100: FINANCIAL_ECHO, 200: FINANCIAL_ECHO, 220: FINANCIAL_ECHO,
                    400: FINANCIAL_ECHO, 500: SETTLEMENT_ECHO}  # fmt: skip
#: Headers' processing-requirement nibble: sign on again.
SIGN_ON_AGAIN = 3
#: The answers that ask for it (MAC error, PIN format, batch not open): a
#: replay of one asks again, as the first answer did.
SIGN_ON_AGAIN_CODES = frozenset({codes.MAC_ERROR, codes.PIN_FORMAT, codes.OPERATION_ERROR})
#: The leading participants an answer needs to be signed (terminal, session
#: MAK): a request turned away for want of a slot still runs these.
TO_SIGN_ORDER = (checks.terminal, checks.mac)
TO_SIGN = frozenset(TO_SIGN_ORDER)
#: Two updates per request: written without prometheus's lock (and, with
#: several workers, its pid check), as the children in _account are.
_IN_FLIGHT = cheap(metrics.IN_FLIGHT)


class Processor:
    def __init__(self, services: Services) -> None:
        self.s = services
        self.cfg = services.cfg
        # Requests in progress by duplicate key: a retransmission that
        # overtakes its original waits for it instead of running twice.
        self.in_progress: dict[tuple[str, int, int, bool], trio.Event] = {}
        # Labelled metric children, looked up once (labels() costs a lock and a
        # hash), as their cheap writers (hsm/cheap_metrics.py).
        self._counters: dict[tuple[Kind, str], Any] = {}
        self._timers: dict[Kind, Any] = {}
        # Session MAKs as DesKeys (key schedule built once), by their stored form.
        self.macs: dict[str, DesKey] = {}
        self.admission = Admission(self.cfg.transactions.max_in_flight)
        # Ends transactions past timeout_s; its sweeper runs in the daemon (run()).
        self.deadlines: Deadlines[trio.CancelScope] = Deadlines(trio.CancelScope.cancel)
        # Each terminal's open batch as last seen (checks.open_batch re-reads on a mismatch).
        self.open_batches: dict[str, int] = {}
        # A zone PIN key of this process (under the LMK), made on first need:
        # PIN blocks formed without the PAN are verified through it.
        self._zone_pin_key: str | None = None
        from switchd import flows  # the participant lists, which import this module's helpers

        self.flows = flows.FLOWS

    async def handle(self, body: bytes) -> bytes | None:
        _IN_FLIGHT.inc()
        try:
            return await self._handle(body)
        finally:
            _IN_FLIGHT.dec()

    async def _handle(self, body: bytes) -> bytes | None:
        try:
            msg = decode_frame(body)
        except DecodeError as exc:
            return self._undecodable(body, exc)
        kind, orig_kind, rc = classify(msg)
        txn = Txn(msg, kind, orig_kind)
        if rc is not None:
            await self._refuse_kind(txn, rc)
        else:
            await self._run(txn)
        try:
            frame = self._answer(txn)
            if frame is None:  # an approval that moved money could not be encoded
                frame = await self._undo_unanswerable(txn)
            return frame
        finally:
            if txn.claimed is not None:
                self.in_progress.pop(txn.claimed).set()

    async def _run(self, txn: Txn) -> None:
        participants = self.flows.get(txn.kind, ())
        admission = self.admission
        if not await admission.enter(self.cfg.transactions.queue_timeout_s):
            await self._turn_away(txn, participants)
            return
        try:
            await self._run_admitted(txn, participants)
        finally:
            admission.leave()

    async def _run_admitted(self, txn: Txn, participants: tuple[Participant, ...]) -> None:
        # The deadline is kept by the sweeper (deadlines.py), not by trio's
        # deadline heap, which costs more per transaction.
        txn.deadline = trio.current_time() + self.cfg.transactions.timeout_s
        with trio.CancelScope() as deadline:
            self.deadlines.add(deadline, txn.deadline)
            try:
                for participant in participants:
                    await participant(self, txn)
                    if txn.done:
                        break
            except Exception:
                log.exception("transaction failed: %s", txn.kind.name)
                txn.rc = codes.SYSTEM_MALFUNCTION
            finally:
                self.deadlines.discard(deadline)
        if deadline.cancelled_caught and not txn.done:
            # Money moves only in the last participant, whose ledger wait the
            # deadline cannot interrupt (see money.py),
            # so a deadline here means nothing was posted.
            txn.rc = codes.SYSTEM_MALFUNCTION
            log.warning("transaction %s timed out before posting", txn.kind.name)
        if txn.rc is None and txn.replay is None:
            txn.rc = codes.APPROVED
        elif (txn.rc == codes.INVALID_MERCHANT and txn.terminal is not None
              and txn.mak is None and txn.kind is not Kind.SIGN_ON):  # fmt: skip
            # A known terminal naming another merchant: its MAK can still sign
            # the 03 (a sign-on request has no MAC to check).
            await self._signed_refusal(txn, codes.INVALID_MERCHANT, (checks.mac,))

    async def _refuse_kind(self, txn: Txn, rc: str) -> None:
        """A request whose kind is refused (12/30/40) is answered signed when it can be."""
        await self._signed_refusal(txn, rc, TO_SIGN_ORDER)

    async def _signed_refusal(self, txn: Txn, rc: str,
                              participants: tuple[Participant, ...]) -> None:  # fmt: skip
        """Answer rc, signed if `participants` find the terminal's session MAK.

        If they fail the refusal goes out unsigned, with its own code (not
        97 or A0: the refusal's reason is what is wrong).
        """
        txn.rc = None
        try:
            for participant in participants:
                await participant(self, txn)
                if txn.rc is not None:
                    txn.mak = None
                    break
        except Exception:
            log.exception("signing the refusal of a %s failed", txn.msg.mti)
            txn.mak = None
        txn.rc = rc
        txn.processing = 0

    async def _turn_away(self, txn: Txn, participants: tuple[Participant, ...]) -> None:
        """No slot came in time: answer 96, signed, with nothing done.

        Only the participants the answer's MAC needs run (who is asking, its
        session key), neither the HSM nor the ledger. Nothing is
        journaled (no duplicate key was claimed), so the terminal's retry
        of the same STAN is processed afresh.
        """
        timeout = self.cfg.transactions.timeout_s
        with trio.move_on_after(timeout):
            try:
                for participant in participants:
                    if participant not in TO_SIGN:
                        break
                    await participant(self, txn)
                    if txn.done:
                        return
            except Exception:
                log.exception("transaction failed: %s", txn.kind.name)
        if not txn.done:
            txn.rc = codes.SYSTEM_MALFUNCTION

    # -- answers ------------------------------------------------------------

    def _answer(self, txn: Txn) -> bytes | None:
        """The answer's frame, accounted and journaled; None when it is an
        approval of a reversible request that cannot be encoded, whose money
        must be undone first (_undo_unanswerable)."""
        msg = txn.msg
        if txn.replay is not None:
            frame = self._replay(txn)
            self._account(txn, "replay")
            return frame
        rc = txn.rc or codes.SYSTEM_MALFUNCTION
        fields = txn.fields
        fields[39] = rc
        now = LOCAL_TIME.now()
        fields.setdefault(12, now.hhmmss)
        fields.setdefault(13, now.mmdd)
        if txn.kind in FINANCIAL or txn.kind is Kind.REVERSAL:
            echo = FINANCIAL_ECHO
            fields.setdefault(15, now.mmdd)
            fields.setdefault(32, self.cfg.transactions.acquirer_id)
            fields.setdefault(37, self.rrn(txn))
            if rc == codes.APPROVED and txn.kind is not Kind.REVERSAL:
                fields.setdefault(38, self.auth_code(txn))
        elif txn.kind is Kind.SETTLEMENT:
            echo = SETTLEMENT_ECHO
            fields.setdefault(15, now.mmdd)
        else:
            echo = MANAGEMENT_ECHO
        mak = txn.mak if rc != codes.MAC_ERROR else None
        mti = f"{msg.mti_code + 10:04d}" if msg.mti_code % 20 < 10 else msg.mti
        try:
            frame = build_response(
                msg, mti, fields, mak, echo=echo, swap_tpdu=self.cfg.terminals.swap_tpdu,
                processing=txn.processing,
            )  # fmt: skip
        except CodecError:
            log.exception("cannot encode the answer to %s", txn.kind.name)
            if rc == codes.APPROVED and txn.kind in REVERSIBLE:
                return None
            frame = self._malfunction(txn, mti, mak, echo)
            rc = codes.SYSTEM_MALFUNCTION
        self._account(txn, rc)
        if txn.claimed is not None and rc != codes.SYSTEM_MALFUNCTION:
            # Only requests that passed the MAC and claimed their duplicate key
            # are journaled: an A0 kept under a STAN would be replayed to the
            # terminal's honest retry after it signs on again. Nor is a 96: it
            # says nothing was done, and a repeated reversal must get its undo
            # once the fault has passed, not the 96 again (the one exception,
            # _undo_unanswerable, did something and undid it). Reprocessing
            # is safe because ledger ids come from TID + batch + STAN.
            self.s.journal.record(self._entry(txn, rc, frame))
        return frame

    async def _undo_unanswerable(self, txn: Txn) -> bytes:
        """An approval whose money moved and whose answer cannot be encoded:
        the posting is undone, then the terminal is answered 96.

        A terminal reads 96 as "declined, nothing done" and does not reverse
        it, so the switch undoes it as that reversal would (money.py). The
        96 is journaled, unlike any other: the terminal's retry of the same
        STAN gets it again, where running the retry afresh would find the
        posting in the ledger as a duplicate and approve money since undone.
        """
        with trio.CancelScope(shield=True):  # a closing connection must not stop the undo
            await money.undo_unanswerable(self, txn)
        # A reversible request is an 0100 or 0200: its answer is the MTI + 10.
        mti = f"{txn.msg.mti_code + 10:04d}"
        frame = self._malfunction(txn, mti, txn.mak, FINANCIAL_ECHO)
        self._account(txn, codes.SYSTEM_MALFUNCTION)
        if txn.claimed is not None:
            self.s.journal.record(self._entry(txn, codes.SYSTEM_MALFUNCTION, frame))
        return frame

    def _malfunction(self, txn: Txn, mti: str, mak: DesKey | None,
                     echo: tuple[int, ...]) -> bytes:  # fmt: skip
        """The bare 96 sent in place of an answer that cannot be encoded."""
        return build_response(
            txn.msg, mti, {39: codes.SYSTEM_MALFUNCTION}, mak, echo=echo,
            swap_tpdu=self.cfg.terminals.swap_tpdu, processing=0,
        )  # fmt: skip

    def _entry(self, txn: Txn, rc: str, frame: bytes) -> Entry:
        msg = txn.msg
        iso = frame[13:]
        if txn.mak is not None and rc != codes.MAC_ERROR:
            iso = iso[:-8]  # stored unsigned: a replay is signed with the key of its day
            iso = iso[:2] + (int.from_bytes(iso[2:10], "big") & ~1).to_bytes(8, "big") + iso[10:]
        return Entry(
            tid=txn.terminal.tid if txn.terminal else msg.tid or "",
            batch=txn.batch,
            stan=txn.stan,
            reversal=txn.kind is Kind.REVERSAL,
            kind=NAMES[txn.orig_kind or txn.kind]
            if txn.kind is not Kind.REVERSAL
            else "reversal",
            mid=msg.mid or "",
            digest=txn.request_digest(),
            rc=rc,
            amount=txn.amount,
            masked_pan=txn.masked_pan(),
            rrn=self.rrn(txn) if txn.kind in FINANCIAL or txn.kind is Kind.REVERSAL else "",
            auth_code=self.auth_code(txn) if rc == codes.APPROVED else "",
            orig_batch=int(msg.original_batch) if msg.original_batch else None,
            orig_stan=int(msg.original_stan) if msg.original_stan else None,
            response=iso,
            created_at=time.time_ns() // 1000,
        )

    def _replay(self, txn: Txn) -> bytes:
        """A duplicate gets its first answer again, signed with today's MAK."""
        stored = decode(txn.replay)
        fields = {f: stored[f] for f in stored.fields if f != 64}
        msg = txn.msg
        txn.rc = stored.response_code
        processing = SIGN_ON_AGAIN if txn.rc in SIGN_ON_AGAIN_CODES else 0
        tpdu, header = self._answer_tpdu(msg.tpdu), _answer_header(msg.header, processing)
        return encode_frame(tpdu, header, stored.mti, fields, txn.mak)

    def _undecodable(self, body: bytes, exc: DecodeError) -> bytes | None:
        metrics.FRAMES_REJECTED.labels("format").inc()
        log.warning("undecodable frame: %s", exc)
        # Answer 30 when the MTI is readable and names a request; else drop it.
        if len(body) < 13 or body[0] != 0x60:
            return None
        hi, lo = body[11], body[12]
        if max(hi >> 4, hi & 15, lo >> 4, lo & 15) > 9:
            return None
        mti = (hi >> 4) * 1000 + (hi & 15) * 100 + (lo >> 4) * 10 + (lo & 15)
        if mti % 20 >= 10 or mti not in (100, 200, 220, 320, 400, 500, 800, 820):
            return None
        metrics.TRANSACTIONS.labels("unsupported", codes.FORMAT_ERROR).inc()
        readable = decode_readable(body, exc)
        if readable is not None:
            # The fields that decoded before the bad one are echoed as in any
            # answer to this MTI (PROTOCOL.md section 3): a terminal matches
            # an answer to its request by them (F11, F41, ...), and would
            # drop a 30 that carried F39 alone. Unsigned: no MAC was checked.
            return build_response(
                readable, f"{mti + 10:04d}", {39: codes.FORMAT_ERROR}, None,
                echo=UNDECODABLE_ECHO.get(mti, MANAGEMENT_ECHO),
                swap_tpdu=self.cfg.terminals.swap_tpdu, processing=0,
            )  # fmt: skip
        tpdu = self._answer_tpdu(body[:5])
        return encode_frame(tpdu, _answer_header(body[5:11]), f"{mti + 10:04d}",
                            {39: codes.FORMAT_ERROR})  # fmt: skip

    def _answer_tpdu(self, tpdu: bytes) -> bytes:
        """An answer's TPDU for answers built outside build_response (which swaps itself)."""
        if self.cfg.terminals.swap_tpdu:
            return tpdu[:1] + tpdu[3:5] + tpdu[1:3]
        return tpdu

    def _account(self, txn: Txn, rc: str) -> None:
        elapsed = time.perf_counter() - txn.started
        counter = self._counters.get((txn.kind, rc))
        if counter is None:
            counter = self._counters[(txn.kind, rc)] = cheap(
                metrics.TRANSACTIONS.labels(NAMES[txn.kind], rc)
            )
        counter.inc()
        timer = self._timers.get(txn.kind)
        if timer is None:
            timer = self._timers[txn.kind] = cheap(
                metrics.TRANSACTION_SECONDS.labels(NAMES[txn.kind])
            )
        timer.observe(elapsed)
        log_txn(txn, rc, elapsed)

    async def zone_pin_key(self) -> str:
        if self._zone_pin_key is None:
            self._zone_pin_key = (await self.s.hsm.generate_key(ZPK)).under_lmk
        return self._zone_pin_key

    # -- derived values ---------------------------------------------------

    def rrn(self, txn: Txn) -> str:
        """Derived from TID + batch + STAN: a retried request gets the same RRN."""
        if not txn.rrn:
            tid = txn.msg.tid or ""
            txn.rrn = rrn_of(tid, txn.batch, txn.stan, txn.kind is Kind.REVERSAL)
        return txn.rrn

    def auth_code(self, txn: Txn) -> str:
        if not txn.auth:
            txn.auth = auth_code_of(txn.msg.tid or "", txn.batch, txn.stan)
        return txn.auth


def _answer_header(header: bytes, processing: int = 0) -> bytes:
    """The request's header with the host's processing requirement (0: nothing asked)."""
    return header[:2] + bytes([(header[2] & 0xF0) | processing]) + header[3:]
