"""The ledger: double-entry accounts and immutable transfers, with group commit.

Semantics follow TigerBeetle (double entry, immutable transfers, idempotent
ids, pending/post/void), stored in SQLite (the embedded default) or PostgreSQL
(shared by several switch nodes). Money is always an int of minor units.

Use (trio):

    async with open_ledger(config) as ledger:              # LedgerConfig
        req = flows.Request(tid, mid, batch, stan, rrn=rrn, masked_pan=masked)
        results = await ledger.submit_linked(               # all or nothing
            flows.sale(req, card, merchant, fee_account, amount, fee))
        if results[0].ok: ...                               # else results[i].code

Writing (each returns once the commit holding it is durable):
    Ledger.submit(ops) -> list[Result]         independent operations
    Ledger.submit_linked(ops) -> list[Result]  one group: all apply or none
    Ledger.execute(op) -> Result
    Ledger.expire_due() -> int                 the sweeper does this every second
  Operations (model.py): CreateAccount, CloseAccount, Transfer (posted,
  pending, or refund_of), PostPending, VoidPending, Reverse, CloseBatch.
  Result(code: ResultCode, duplicate: bool, value: int | None); a failed
  commit raises CommitFailed for every operation of that batch (resubmit the
  same ids: idempotency makes that safe); after close, LedgerClosed.
Reading (never waits for the writer):
    account(id) -> Account | None              balances: posted, pending, available
    transfer(id) -> TransferRecord | None
    answered_since(us) -> list[AnsweredRequest]  leg 0 of recent requests (journal repair)
    request_transfers(tid, batch, stan, kind)  the legs a void/reversal undoes
    transfers_by_batch(tid, batch); transfers_by_merchant_day(mid, day, tz)
    settlement_totals(tid, batch) -> SettlementTotals   (the 0500 comparison)
    current_batch(tid) -> int; audit() -> list[str]     (empty = consistent)
Building operations: flows.py (sale, undo, undo_missing, refund, preauth,
preauth_cancel, completion, fee_amount); ids: ids.py (transfer_id,
card_account_id, merchant_account_id, fee_account_id, suspense_account_id).

Decisions:
- Account ids are chosen by the caller, derived from stable keys (ids.py);
  the ledger allocates none. A card's id is a keyed hash of its PAN, so no
  PAN is stored; only masked PANs travel in WireMeta.
- Transfer ids: BLAKE2b-128 of "TID|batch|STAN|kind|leg". A repeated id with
  the same content gets the first answer (including a decline) and changes
  nothing; with other content, ID_EXISTS_DIFFERENT. Wire metadata (RRN...)
  is not content.
- Over-completion is supported up to the `post_tolerance` the pre-auth was
  created with (minor units); the excess is checked like a new debit.
- Reversing a completion (its void, or the terminal's 0400) holds its hold
  again, with its expiry, so the pre-authorization may be completed anew;
  reversing a pre-auth cancel does the same (UNVOID). Undoing either reversal
  undoes that too, and is refused where it would charge a hold twice.
- A 0400 that overtakes its original tombstones the original's id: the
  original, if it arrives later, is refused with ALREADY_REVERSED. With
  several writers (PostgreSQL), the tombstone and the original's insert are
  serialized by a per-ledger guard lock (core.Store.guard_new_ids), so
  whichever commits second sees the other, even on two switch nodes.
- PostgreSQL with several writers: row locks in READ COMMITTED with a fixed
  lock order, retries only for races (see postgres_backend.py for why not
  SERIALIZABLE).
"""

from __future__ import annotations

from .config import LedgerConfig, PostgresConfig, SqliteConfig
from .engine import Ledger, open_ledger
from .ids import (
    account_id,
    card_account_id,
    fee_account_id,
    merchant_account_id,
    suspense_account_id,
    transfer_id,
)
from .model import (
    Account,
    AccountKind,
    AnsweredRequest,
    CloseAccount,
    CloseBatch,
    CommitFailed,
    CreateAccount,
    LedgerClosed,
    LedgerError,
    Op,
    PendingState,
    PostPending,
    Result,
    ResultCode,
    Reverse,
    SettlementTotals,
    Transfer,
    TransferRecord,
    TransferType,
    VoidPending,
    WireMeta,
)

__all__ = [
    "Account",
    "AccountKind",
    "AnsweredRequest",
    "CloseAccount",
    "CloseBatch",
    "CommitFailed",
    "CreateAccount",
    "Ledger",
    "LedgerClosed",
    "LedgerConfig",
    "LedgerError",
    "Op",
    "PendingState",
    "PostPending",
    "PostgresConfig",
    "Result",
    "ResultCode",
    "Reverse",
    "SettlementTotals",
    "SqliteConfig",
    "Transfer",
    "TransferRecord",
    "TransferType",
    "VoidPending",
    "WireMeta",
    "account_id",
    "card_account_id",
    "fee_account_id",
    "merchant_account_id",
    "open_ledger",
    "suspense_account_id",
    "transfer_id",
]
