"""The ledger's vocabulary: accounts, operations, results, and what queries return.

Everything that crosses the ledger's API is a frozen `msgspec.Struct`: typed,
cheap to build on the hot path, and encodable for logs and the admin API.
Those the switch creates per transaction are `gc=False`: frozen, holding only
scalars, enums and other frozen structs, they cannot be part of a reference
cycle, so the cyclic garbage collector need not track (and rescan) them.
Money is always an `int` number of minor units (fen); no float appears here.

Ids are 128-bit unsigned integers (see `ids.py` for how to derive them); 0 and
2**128 - 1 are reserved and rejected, as in TigerBeetle, so that an unset or
all-ones id can never be mistaken for a real one.
"""

from __future__ import annotations

from enum import StrEnum

import msgspec

#: Largest amount or balance: balances are stored as signed 64-bit integers
#: in both backends, so every sum must stay below this.
MAX_AMOUNT = 2**63 - 1

#: A batch number is six BCD digits on the wire (60.2); 999999 wraps to 1.
MAX_BATCH = 999_999


class AccountKind(StrEnum):
    CARDHOLDER = "cardholder"  # an on-us card: the bank owes the cardholder its balance
    MERCHANT = "merchant"  # merchant settlement: what the acquirer owes the merchant
    FEE_INCOME = "fee_income"  # the acquirer's fee (MDR) income
    SUSPENSE = "suspense"  # funding source and anything not yet explained


class TransferType(StrEnum):
    """How a transfer moves money; fixed by the operation that created it."""

    POSTED = "posted"  # an ordinary posted transfer
    PENDING = "pending"  # a hold (pre-authorization): pending balances only
    POST = "post"  # posts a pending transfer (completion)
    VOID = "void"  # voids a pending transfer; moves nothing itself
    REVERSE = "reverse"  # posted, the exact opposite of an earlier posted transfer
    REFUND = "refund"  # posted, credit→debit of an earlier one, partial allowed
    UNVOID = "unvoid"  # reverses a void: its hold is held again; moves nothing itself


class PendingState(StrEnum):
    PENDING = "pending"
    POSTED = "posted"
    VOIDED = "voided"
    EXPIRED = "expired"


class ResultCode(StrEnum):
    """Why an operation did or did not apply. `OK` is the only success."""

    OK = "ok"
    # identity and shape of the request
    ID_INVALID = "id_invalid"
    ID_EXISTS_DIFFERENT = "id_exists_with_different_content"
    AMOUNT_INVALID = "amount_invalid"
    TIMEOUT_INVALID = "timeout_invalid"
    ACCOUNTS_SAME = "accounts_must_be_different"
    CURRENCY_MISMATCH = "currency_mismatch"
    OVERFLOW = "overflow"
    CODE_INVALID = "code_invalid"  # the transfer code is empty or too long
    META_INVALID = "meta_invalid"  # a wire metadata field has the wrong type or size
    FIELD_INVALID = "field_invalid"
    # accounts
    ACCOUNT_NOT_FOUND = "account_not_found"
    DEBIT_ACCOUNT_NOT_FOUND = "debit_account_not_found"
    CREDIT_ACCOUNT_NOT_FOUND = "credit_account_not_found"
    ACCOUNT_CLOSED = "account_closed"
    ACCOUNT_EXISTS_DIFFERENT = "account_exists_with_different_content"
    ACCOUNT_INVALID = "account_invalid"
    INSUFFICIENT_FUNDS = "insufficient_funds"
    CREDIT_LIMIT_EXCEEDED = "credit_limit_exceeded"
    # pending transfers
    PENDING_NOT_FOUND = "pending_transfer_not_found"
    NOT_PENDING = "transfer_is_not_pending"
    PENDING_ALREADY_POSTED = "pending_transfer_already_posted"
    PENDING_ALREADY_VOIDED = "pending_transfer_already_voided"
    PENDING_EXPIRED = "pending_transfer_expired"
    EXCEEDS_PENDING_AMOUNT = "exceeds_pending_amount"
    # reversal and refund
    ORIGINAL_NOT_FOUND = "original_not_found"
    ORIGINAL_NOT_POSTED = "original_not_posted"
    ORIGINAL_IS_PENDING = "original_is_pending"
    ALREADY_REVERSED = "already_reversed"
    ORIGINAL_HAS_REFUNDS = "original_has_refunds"
    REFUND_ACCOUNTS_MISMATCH = "refund_accounts_mismatch"
    REFUND_EXCEEDS_ORIGINAL = "refund_exceeds_original"
    # batches
    BATCH_MISMATCH = "batch_mismatch"
    TERMINAL_INVALID = "terminal_invalid"
    # linked groups and faults inside the writer
    LINKED_EVENT_FAILED = "linked_event_failed"
    INTERNAL_ERROR = "internal_error"


class WireMeta(msgspec.Struct, frozen=True):
    """What identifies a transfer on the wire; stored with it for settlement and reports.

    `kind` is the wire transaction (sale, completion, void, completion_void,
    refund, reversal, preauth, preauth_cancel, ...): settlement totals are
    computed from it, not from the transfer's code. `leg` numbers the
    transfers of one request (as in `ids.transfer_id`); leg 0 carries the
    amount the terminal knows (card → merchant, the whole amount), later legs
    are the ledger's own splits (merchant → fee income), so settlement counts
    leg 0 only. Only a masked PAN belongs here, never a full one.
    """

    terminal_id: str
    merchant_id: str
    batch: int
    stan: int
    kind: str
    leg: int = 0
    rrn: str = ""
    masked_pan: str = ""
    foreign: bool = False  # a foreign card: settled in F48's second half


# --- operations -----------------------------------------------------------


class CreateAccount(msgspec.Struct, frozen=True, gc=False, tag="create_account"):
    """Create an account; the caller chooses its id (see `ids.py`).

    `credit_limit`: how far below zero the balance (credits − debits − pending
    debits) may go. None means the kind's default: 0 for a cardholder (never
    below zero), no limit for merchant, fee income and suspense accounts.
    """

    id: int
    kind: AccountKind
    currency: str
    owner: str = ""
    credit_limit: int | None = None


class CloseAccount(msgspec.Struct, frozen=True, tag="close_account"):
    """Close an account: it takes part in no new transfer; holds may still be voided."""

    id: int


class Transfer(msgspec.Struct, frozen=True, gc=False, tag="transfer"):
    """Move `amount` from `debit_account_id` to `credit_account_id`.

    pending=True makes it a hold (pre-authorization) that a later PostPending or
    VoidPending resolves; `timeout_s` (0 = never) expires it, and
    `post_tolerance` is how much more than `amount` the completion may post
    (checked against the payer's available balance like a new transfer).
    `refund_of` makes it a refund of an earlier posted transfer: it must run
    the other way (credit→debit), and the refunds of one original never add up
    to more than its amount.
    """

    id: int
    debit_account_id: int
    credit_account_id: int
    amount: int
    code: str
    pending: bool = False
    timeout_s: int = 0
    post_tolerance: int = 0
    refund_of: int | None = None
    meta: WireMeta | None = None


class PostPending(msgspec.Struct, frozen=True, gc=False, tag="post_pending"):
    """Post a pending transfer: amount None posts the held amount; less is a partial
    completion, more (up to the pending's post_tolerance) an over-completion."""

    id: int
    pending_id: int
    amount: int | None = None
    code: str = "completion"
    meta: WireMeta | None = None


class VoidPending(msgspec.Struct, frozen=True, gc=False, tag="void_pending"):
    """Release a hold (pre-auth cancel, reversal of a pre-auth)."""

    id: int
    pending_id: int
    code: str = "preauth_cancel"
    meta: WireMeta | None = None


class Reverse(msgspec.Struct, frozen=True, gc=False, tag="reverse"):
    """Post the exact opposite of a posted transfer, once (sale void, 0400 reversal).

    An original that is an open hold is voided instead (a 0400 tombstone that
    reached the ledger just after its pre-authorization: `flows.undo_missing`).
    """

    id: int
    original_id: int
    code: str = "reversal"
    meta: WireMeta | None = None


class CloseBatch(msgspec.Struct, frozen=True, tag="close_batch"):
    """Close a terminal's current batch; the result's `value` is the next batch number.

    Closing the batch that was just closed again is a duplicate (same result);
    any other number is BATCH_MISMATCH with `value` = the current batch.
    """

    terminal_id: str
    batch: int


Op = CreateAccount | CloseAccount | Transfer | PostPending | VoidPending | Reverse | CloseBatch


class Result(msgspec.Struct, frozen=True, gc=False):
    """The outcome of one operation.

    `duplicate` is True when the ledger already had an answer for this id:
    nothing changed, and `code` is that first answer (for a transfer a
    reversal overtook: ALREADY_REVERSED). `value` carries an operation's answer where it
    has one (CloseBatch: the next batch number; ExpirePending: how many expired).
    """

    code: ResultCode
    duplicate: bool = False
    value: int | None = None

    @property
    def ok(self) -> bool:
        return self.code is ResultCode.OK


# --- what queries return --------------------------------------------------


class Account(msgspec.Struct, frozen=True, gc=False):
    id: int
    kind: AccountKind
    currency: str
    owner: str
    credit_limit: int | None
    closed: bool
    debits_posted: int
    credits_posted: int
    debits_pending: int
    credits_pending: int
    created_at_us: int

    @property
    def balance(self) -> int:
        """Posted balance, credit-normal: what the ledger owes the owner."""
        return self.credits_posted - self.debits_posted

    @property
    def available(self) -> int:
        """What the owner may still spend: posted balance less held debits plus the limit."""
        limit = self.credit_limit if self.credit_limit is not None else 0
        return self.credits_posted - self.debits_posted - self.debits_pending + limit


class TransferRecord(msgspec.Struct, frozen=True, gc=False):
    id: int
    type: TransferType
    debit_account_id: int
    credit_account_id: int
    amount: int
    code: str
    ref_id: int | None  # pending (post/void), original (reverse/refund)
    expires_at_us: int | None
    post_tolerance: int
    created_at_us: int
    meta: WireMeta | None
    pending_state: PendingState | None  # only for PENDING transfers
    reversed_by: int | None
    refunded: int


class AnsweredRequest(msgspec.Struct, frozen=True, gc=False):
    """A terminal request the ledger approved, as its leg 0 records it (what the
    journal's row of it says: journal_repair.py rebuilds lost rows from these).

    `undone_by_reversal`: leg 0 has since been reversed or voided by a 0400
    (`kind` "reversal") filed under the same TID + batch + STAN: the
    terminal never took the approval (or the switch undid a late or
    unencodable one, answered 98 or 96). `orig_batch`/`orig_stan`: the
    request the transfer refers to (a void's sale, a completion's hold).
    """

    terminal_id: str
    merchant_id: str
    batch: int
    stan: int
    kind: str
    amount: int
    masked_pan: str
    rrn: str
    created_at_us: int
    undone_by_reversal: bool
    orig_batch: int | None
    orig_stan: int | None


class SettlementTotals(msgspec.Struct, frozen=True):
    """What a terminal's 0500 F48 is compared with (PROTOCOL.md §3 Settlement).

    Debits = sales + completions, credits = voids + refunds; counts are wire
    transactions (one sale = its merchant leg and fee leg), and a transaction
    undone by a 0400 reversal counts nowhere, as on the terminal.
    """

    terminal_id: str
    batch: int
    debit_amount: int  # domestic cards
    debit_count: int
    credit_amount: int
    credit_count: int
    foreign_debit_amount: int = 0  # foreign cards (WireMeta.foreign)
    foreign_debit_count: int = 0
    foreign_credit_amount: int = 0
    foreign_credit_count: int = 0


#: Wire kinds counted as settlement debits and credits (PROTOCOL.md §3).
SETTLEMENT_DEBIT_KINDS = frozenset({"sale", "completion"})
SETTLEMENT_CREDIT_KINDS = frozenset({"void", "completion_void", "refund"})
#: The wire kind of a 0400 reversal: what it undoes counts nowhere.
REVERSAL_KIND = "reversal"


class LedgerError(Exception):
    """Base of the errors `submit` raises (as opposed to per-op result codes)."""


class CommitFailed(LedgerError):
    """The database transaction holding this operation did not commit.

    Every operation of that batch gets this error. If the connection was lost
    during COMMIT the outcome is unknown: resubmit the same ids; idempotency
    makes that safe and tells which happened.
    """


class LedgerClosed(LedgerError):
    """submit() after the ledger began to close."""
