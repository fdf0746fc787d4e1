"""The operations each terminal transaction needs, built the one way the ledger expects.

The daemon calls these and submits the list with `Ledger.submit_linked`, so
every leg of one request commits or fails together. Each builder derives the
transfer ids from (TID, batch, STAN, kind, leg), so a repeated request is the
same operations and the ledger answers it as a duplicate.

Legs of a sale or a completion:
    leg 0  card → merchant settlement   the whole amount (what the terminal knows)
    leg 1  merchant → fee income        the merchant's fee, when it is not zero
Debits equal credits on every leg; the cardholder sees one debit of the
amount; settlement totals count leg 0 only.

Over-completion: a pre-authorization carries a `post_tolerance` (in minor
units, which the daemon computes from the merchant's configured percentage);
a completion may post up to the held amount plus that tolerance, and the
excess is checked against the cardholder's available balance like a new debit.
"""

from __future__ import annotations

from collections.abc import Sequence

from .ids import transfer_id
from .model import (
    Op,
    PostPending,
    Reverse,
    Transfer,
    TransferRecord,
    TransferType,
    VoidPending,
    WireMeta,
)

#: Fee rates are in basis points (1/100 of a percent): 60 = 0.60 %.
BASIS = 10_000


def fee_amount(amount: int, rate_bp: int) -> int:
    """The fee on `amount` at `rate_bp`, rounded half up to the minor unit; integers only."""
    if amount < 0 or not 0 <= rate_bp <= BASIS:
        raise ValueError(f"bad amount or fee rate: {amount}, {rate_bp}")
    return (amount * rate_bp + BASIS // 2) // BASIS


class Request:
    """What identifies a terminal request on the wire (all the builders need)."""

    __slots__ = ("batch", "foreign", "masked_pan", "merchant_id", "rrn", "stan", "terminal_id")

    def __init__(
        self,
        terminal_id: str,
        merchant_id: str,
        batch: int,
        stan: int,
        rrn: str = "",
        masked_pan: str = "",
        foreign: bool = False,
    ) -> None:
        self.terminal_id = terminal_id
        self.merchant_id = merchant_id
        self.batch = batch
        self.stan = stan
        self.rrn = rrn
        self.masked_pan = masked_pan
        self.foreign = foreign

    def id(self, kind: str, leg: int = 0) -> int:
        return transfer_id(self.terminal_id, self.batch, self.stan, kind, leg)

    def meta(self, kind: str, leg: int = 0) -> WireMeta:
        return WireMeta(
            terminal_id=self.terminal_id,
            merchant_id=self.merchant_id,
            batch=self.batch,
            stan=self.stan,
            kind=kind,
            leg=leg,
            rrn=self.rrn,
            masked_pan=self.masked_pan,
            foreign=self.foreign,
        )


def sale(
    req: Request, card: int, merchant: int, fee_account: int, amount: int, fee: int
) -> list[Op]:
    """A sale: the card pays the merchant the amount; the merchant pays its fee."""
    if not 0 <= fee <= amount:
        raise ValueError("fee must be between 0 and the amount")
    ops: list[Op] = [
        Transfer(req.id("sale", 0), card, merchant, amount, "sale", meta=req.meta("sale", 0))
    ]
    if fee:
        ops.append(
            Transfer(
                req.id("sale", 1),
                merchant,
                fee_account,
                fee,
                "merchant_fee",
                meta=req.meta("sale", 1),
            )
        )
    return ops


def undo(req: Request, kind: str, original: Sequence[TransferRecord]) -> list[Op]:
    """Undo every leg of an earlier request exactly once.

    `kind` is "void" (sale void), "completion_void", or "reversal" (0400);
    `original` is `Ledger.request_transfers(...)` of the request undone.
    Posted legs are reversed, a hold is voided, and a void leg (a pre-auth
    cancel) is reversed too, which holds its hold again (the ledger's
    UNVOID). Reversing a completion holds its hold again (the
    pre-authorization may be completed again). With no
    original on record (a 0400 that overtook its original) use
    `undo_missing` instead.
    """
    ops: list[Op] = []
    for leg, rec in enumerate(original):
        if rec.type is TransferType.PENDING:
            ops.append(VoidPending(req.id(kind, leg), rec.id, code=kind, meta=req.meta(kind, leg)))
        else:
            ops.append(Reverse(req.id(kind, leg), rec.id, code=kind, meta=req.meta(kind, leg)))
    return ops


def undo_missing(req: Request, kind: str, original_id: int) -> list[Op]:
    """A reversal of a request the ledger has not seen: tombstones its leg 0.

    If the original commits between the caller's `request_transfers` and this
    reversal (on another node too: see `core.Store.guard_new_ids`), its leg 0
    is reversed instead (voided, if it is a hold), but a fee leg 1 is not: the
    caller should look the legs up again when this answers OK, and undo the
    rest with `undo`.
    """
    return [Reverse(req.id(kind, 0), original_id, code=kind, meta=req.meta(kind, 0))]


def refund(
    req: Request,
    card: int,
    merchant: int,
    original_sale_leg0: int,
    amount: int,
    fee_account: int | None = None,
    original_fee_leg: int | None = None,
    fee_refund: int = 0,
) -> list[Op]:
    """A refund: the merchant pays the card back, up to the sale's amount over all refunds.

    Optionally the fee income returns `fee_refund` to the merchant, limited by
    the sale's fee leg the same way.
    """
    ops: list[Op] = [
        Transfer(
            req.id("refund", 0),
            merchant,
            card,
            amount,
            "refund",
            refund_of=original_sale_leg0,
            meta=req.meta("refund", 0),
        )
    ]
    if fee_refund:
        if fee_account is None or original_fee_leg is None:
            raise ValueError("a fee refund needs the fee account and the sale's fee leg")
        ops.append(
            Transfer(
                req.id("refund", 1),
                fee_account,
                merchant,
                fee_refund,
                "merchant_fee_refund",
                refund_of=original_fee_leg,
                meta=req.meta("refund", 1),
            )
        )
    return ops


def preauth(
    req: Request, card: int, merchant: int, amount: int, timeout_s: int, tolerance: int = 0
) -> list[Op]:
    """A pre-authorization: a hold on the card's available balance."""
    return [
        Transfer(
            req.id("preauth", 0),
            card,
            merchant,
            amount,
            "preauth",
            pending=True,
            timeout_s=timeout_s,
            post_tolerance=tolerance,
            meta=req.meta("preauth", 0),
        )
    ]


def preauth_cancel(req: Request, preauth_id: int) -> list[Op]:
    return [
        VoidPending(
            req.id("preauth_cancel", 0),
            preauth_id,
            code="preauth_cancel",
            meta=req.meta("preauth_cancel", 0),
        )
    ]


def completion(
    req: Request, preauth_id: int, amount: int, merchant: int, fee_account: int, fee: int
) -> list[Op]:
    """Complete a pre-authorization for `amount` (partial, full, or within the tolerance)."""
    ops: list[Op] = [
        PostPending(
            req.id("completion", 0),
            preauth_id,
            amount,
            code="completion",
            meta=req.meta("completion", 0),
        )
    ]
    if fee:
        ops.append(
            Transfer(
                req.id("completion", 1),
                merchant,
                fee_account,
                fee,
                "merchant_fee",
                meta=req.meta("completion", 1),
            )
        )
    return ops
