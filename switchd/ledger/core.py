"""Applying one batch of operations: the ledger's rules, independent of the database.

The writer hands a batch (every group submitted since its last commit) to
`apply_batch` inside one open database transaction. The plan:

1. collect every id the batch mentions (new transfer ids, the pending or
   original transfers they refer to, accounts, terminals);
2. load those rows with a fixed number of set queries — state rows, the
   referred-to transfers, accounts, terminal batches, and only then the new
   ids (for idempotency), each sorted by key. The PostgreSQL store locks
   states, accounts and terminals (`FOR UPDATE`) as it reads; the fixed order
   (the new-id guard, see `Store`, then states before accounts before
   terminals, ascending keys within each) is what keeps two switch
   processes from deadlocking;
3. run the operations in submission order against those rows in memory,
   each group under an undo journal: a failing operation, or a failing
   member of a linked group, is rolled back in memory and no other group
   notices;
4. hand the store the net changes (new rows, final balances of the touched
   accounts) to write with a handful of bulk statements.

So a batch of thousands of sales costs a few queries, not thousands: that is
where group commit gets its speed, on top of sharing one durable commit.

Error handling: every rule violation is a `ResultCode` for that operation;
an unexpected exception inside one operation is caught, its changes undone,
and reported as INTERNAL_ERROR for its group, so one bad operation never
takes the writer down. Database errors are not caught here: they abort the
whole transaction, and the caller fails or retries the whole batch.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import msgspec

from .ids import ID_MAX, ID_MIN, to_bytes, valid_id
from .model import (
    MAX_AMOUNT,
    MAX_BATCH,
    AccountKind,
    CloseAccount,
    CloseBatch,
    CreateAccount,
    Op,
    PendingState,
    PostPending,
    Result,
    ResultCode,
    Reverse,
    Transfer,
    TransferType,
    VoidPending,
    WireMeta,
)

log = logging.getLogger("switchd.ledger")

#: A hold may not outlive this; longer would be a typo, not a pre-authorization.
MAX_TIMEOUT_S = 366 * 86_400
MAX_CODE_LEN = 32
MAX_TEXT_LEN = 64

RC = ResultCode
_OK = Result(RC.OK)
#: The results of a group whose one operation got the plain OK: one shared tuple.
OK_ONLY = (_OK,)


def all_plain_ok(results: Sequence[Result]) -> bool:
    """Whether every result is the shared plain OK (not a duplicate's, not with a value)."""
    return results is OK_ONLY or all(r is _OK for r in results)


_PENDING = PendingState.PENDING.value
_PENDING_TYPE = TransferType.PENDING.value
_POSTED = TransferType.POSTED.value
_POST = TransferType.POST.value
_HELD_POSTED = PendingState.POSTED.value
_REVERSE = TransferType.REVERSE.value
_VOID = TransferType.VOID.value
#: Transfers whose reversal changes the state of the transfer they refer to.
_UNDOING = frozenset((_REVERSE, _VOID, _POST))
#: Fingerprint of a rejection recorded for an id nobody submitted yet: a
#: transfer reversed before it arrived. Real fingerprints are hashes, never this.
TOMBSTONE = bytes(16)


class ExpireDue(msgspec.Struct, frozen=True, gc=False, tag="expire_due"):
    """Internal: release up to `limit` holds whose expiry has passed (the sweeper's op)."""

    limit: int = 1000


class Group(msgspec.Struct, gc=False):
    """Operations that succeed or fail together when `linked`; otherwise a single op.

    (gc=False: it holds a tuple of frozen operations, never a cycle.)"""

    ops: tuple[Op | ExpireDue, ...]
    linked: bool = False


class Changes(msgspec.Struct):
    """Rows for the store to write, as tuples in the column order of the schema."""

    new_accounts: list[tuple[object, ...]]
    account_updates: list[tuple[object, ...]]
    new_transfers: list[tuple[object, ...]]
    #: Plain posted transfers (the bulk of every batch) in the shorter shape
    #: POSTED_COLUMNS: their type, ref_id, expires_at and post_tolerance are
    #: always 'posted', NULL, NULL, 0, so they are not carried (nor bound) per row.
    new_posted: list[tuple[object, ...]]
    new_states: list[tuple[object, ...]]
    state_updates: list[tuple[object, ...]]
    rejections: list[tuple[object, ...]]
    batch_inserts: list[tuple[object, ...]]  # (terminal_id, current_batch, updated_at)
    batch_updates: list[tuple[object, ...]]  # (current_batch, updated_at, terminal_id)
    closures: list[tuple[object, ...]]


#: The columns of a `Changes.new_posted` row, in order.
POSTED_COLUMNS = (
    "id",
    "debit_account_id",
    "credit_account_id",
    "amount",
    "code",
    "fingerprint",
    "created_at",
    "terminal_id",
    "merchant_id",
    "batch_no",
    "stan",
    "txn_kind",
    "leg",
    "rrn",
    "masked_pan",
    "foreign_card",
)


def posted_as_transfer_row(r: tuple[object, ...]) -> tuple[object, ...]:
    """A `new_posted` row in the full column order of `new_transfers`."""
    return (r[0], _POSTED, r[1], r[2], r[3], r[4], None, None, 0, *r[5:])


class NeedsExclusiveGuard(Exception):
    """The batch must be retried holding the new-id guard exclusively (nothing was applied)."""


class Store(Protocol):
    """What `apply_batch` needs from a backend, inside one open transaction.

    Loads take sorted keys and may lock what they return (PostgreSQL does).

    `concurrent`: other processes may write to the same ledger at the same
    time. Then `guard_new_ids` is called first in every batch that creates
    transfers. The race it closes: a 0400 reversal whose original is not on
    record writes a tombstone (a rejection under the original's id), while
    the original itself is inserted into `transfers`. Those are two different
    tables and the row does not exist yet, so no row lock or unique key makes
    the two batches meet: each looks, sees nothing, and both commit (the sale
    posted, never reversed). The guard is one lock per ledger: every batch
    creating transfers holds it shared from before it looks its new ids up
    until its commit (shared holders never wait for each other); a batch that
    may tombstone holds it exclusively, so it starts only once every batch
    that may be inserting that id has committed, and every later one looks
    its ids up only after the tombstone has committed. Whichever commits
    second sees the other. Taken before any row lock, it adds no lock cycle.
    """

    concurrent: bool

    def guard_new_ids(self, exclusive: bool) -> None: ...

    def load_due_pending(self, now_us: int, limit: int) -> list[bytes]: ...
    def load_states(self, ids: list[bytes]) -> Iterable[tuple]: ...  # type: ignore[type-arg]
    def load_transfers(self, ids: list[bytes]) -> Iterable[tuple]: ...  # type: ignore[type-arg]
    def load_rejections(self, ids: list[bytes]) -> Iterable[tuple]: ...  # type: ignore[type-arg]
    def load_accounts(self, ids: list[bytes]) -> Iterable[tuple]: ...  # type: ignore[type-arg]
    def load_terminal_batches(self, tids: list[str]) -> Iterable[tuple]: ...  # type: ignore[type-arg]
    def write(self, changes: Changes) -> None: ...


def _blob(value: bytes) -> bytearray:
    """An id as a row parameter. Python's sqlite3 binds a bytearray as a BLOB
    directly, but passes every bytes value through its adapter registry first
    (a tuple, a dict lookup and two attribute lookups, per value); for rows of
    four ids that was a sixth of a sale's cost. psycopg dumps both as bytea."""
    return bytearray(value)


class _Acct(msgspec.Struct, gc=False):
    """An account row while a batch runs (balances change in place). A struct
    without GC tracking: it holds only scalars. `closed` counts by its truth."""

    id: bytes
    kind: str
    currency: str
    owner: str
    limit: int | None
    closed: int | bool
    dp: int
    cp: int
    dpend: int
    cpend: int
    created_at: int
    new: bool
    blob: bytearray  # the id as a row parameter (see _blob)


class _Xfer(msgspec.Struct, gc=False):
    """A transfer as the rules need it (immutable once written). A struct
    without GC tracking: one is made per transfer of every batch."""

    id: bytes
    type: str
    debit: bytes
    credit: bytes
    amount: int
    ref: bytes | None
    expires_at: int | None
    tolerance: int
    fp: bytes


class _State:
    __slots__ = (
        "expires_at",
        "id",
        "new",
        "pending_state",
        "refunded",
        "resolved_by",
        "reversed_by",
    )

    def __init__(self, row: tuple, new: bool = False) -> None:  # type: ignore[type-arg]
        (
            self.id,
            self.pending_state,
            self.expires_at,
            self.resolved_by,
            self.reversed_by,
            self.refunded,
        ) = row
        self.new = new


#: An empty BLAKE2b-128 state: copying it is cheaper than building a new hasher
#: (argument parsing and parameter block) for every fingerprint; same digest.
_FP_EMPTY = hashlib.blake2b(digest_size=16)


def _fp(text: str) -> bytes:
    """Fingerprint of what must match for a repeated id to count as the same request.

    Wire metadata (RRN, masked PAN, ...) is left out on purpose: the switch
    assigns the RRN per attempt, and a retry is the same money movement.
    """
    h = _FP_EMPTY.copy()
    h.update(text.encode())
    return h.digest()


def _is_int(v: object) -> bool:
    return type(v) is int


def _amount_ok(v: object) -> bool:
    return type(v) is int and 0 < v <= MAX_AMOUNT  # type: ignore[operator]


def _code_ok(code: object) -> bool:
    return isinstance(code, str) and 0 < len(code) <= MAX_CODE_LEN


def _meta_ok(meta: WireMeta | None) -> bool:
    if meta is None:
        return True
    if type(meta) is not WireMeta:
        return False
    t, m, b, n, k, leg, rrn, pan = (
        meta.terminal_id,
        meta.merchant_id,
        meta.batch,
        meta.stan,
        meta.kind,
        meta.leg,
        meta.rrn,
        meta.masked_pan,
    )
    return (
        type(t) is str
        and type(m) is str
        and type(k) is str
        and type(rrn) is str
        and type(pan) is str
        and type(b) is int
        and type(n) is int
        and type(leg) is int
        and 0 < len(t) <= MAX_TEXT_LEN
        and len(m) <= MAX_TEXT_LEN
        and 0 < len(k) <= MAX_CODE_LEN
        and len(rrn) <= MAX_TEXT_LEN
        and len(pan) <= MAX_TEXT_LEN
        and 0 <= b <= MAX_BATCH
        and 0 <= n <= 999_999
        and 0 <= leg <= 99
        and type(meta.foreign) is bool
    )


_NO_META = (None, None, None, None, None, None, None, None, None)


def _meta_cols(meta: WireMeta | None) -> tuple[object, ...]:
    if meta is None:
        return _NO_META
    return (
        meta.terminal_id,
        meta.merchant_id or None,
        meta.batch,
        meta.stan,
        meta.kind,
        meta.leg,
        meta.rrn or None,
        meta.masked_pan or None,
        int(meta.foreign),
    )


class _Reject(Exception):
    def __init__(self, code: ResultCode) -> None:
        self.code = code


#: Account rows kept by the one writer between its batches (see `apply_batch`).
AccountCache = dict[bytes, _Acct]


class _Batch:
    def __init__(
        self, now_us: int, exclusive: bool = False, cache: AccountCache | None = None
    ) -> None:
        self.now = now_us
        self.exclusive = exclusive
        self.cache = cache
        self.accounts: dict[bytes, _Acct] = {}
        # The accounts of plain transfers as loaded, by their int ids: the hot
        # path looks them up without converting each id to bytes again.
        self.by_int: dict[int, _Acct] = {}
        self.transfers: dict[bytes, _Xfer] = {}
        self.states: dict[bytes, _State] = {}
        self.rejections: dict[bytes, tuple[bytes, str]] = {}
        self.batches: dict[str, int] = {}
        self.dirty_accounts: dict[bytes, _Acct] = {}
        self.dirty_states: dict[bytes, _State] = {}
        self.new_transfers: list[tuple[object, ...]] = []
        self.new_posted: list[tuple[object, ...]] = []
        # Keyed by id: an id may be tombstoned and then rejected in one batch
        # (a reversal whose own id is the original's); one row per id is written.
        self.new_rejections: dict[bytes, tuple[object, ...]] = {}
        self.dirty_batches: set[str] = set()
        self.loaded_batches: set[str] = set()
        self.closures: list[tuple[object, ...]] = []
        self.due: list[bytes] = []
        # Rejections for originals that a reversal overtook. Kept apart from
        # new_rejections: a failing reversal is undone, its tombstone is not.
        self.tombstones: dict[bytes, tuple[object, ...]] = {}
        self.journal: list[Callable[[], None]] = []
        # (id, fingerprint) of the op being applied, once it is known to be new:
        # if it fails, that is what the rejection is stored under.
        self.candidate: tuple[bytes, bytes] | None = None

    # --- loading ----------------------------------------------------------

    def load(self, store: Store, groups: Sequence[Group]) -> None:
        new_ids: set[bytes] = set()
        refs: set[bytes] = set()
        accts: set[bytes] = set()
        tids: set[str] = set()
        reversed_ids: set[bytes] = set()
        # Accounts of well-formed transfers, as ints: converted once each, not once per use.
        transfer_accts: set[int] = set()
        expire_limit = 0

        def add(ids: set[bytes], value: object) -> None:
            if type(value) is int and ID_MIN <= value <= ID_MAX:
                ids.add(value.to_bytes(16, "big"))

        for g in groups:
            for op in g.ops:
                t = type(op)
                if t is Transfer:
                    i, di, ci = op.id, op.debit_account_id, op.credit_account_id  # type: ignore[union-attr]
                    if (
                        type(i) is int
                        and type(di) is int
                        and type(ci) is int
                        and ID_MIN <= i <= ID_MAX
                        and ID_MIN <= di <= ID_MAX
                        and ID_MIN <= ci <= ID_MAX
                    ):
                        new_ids.add(i.to_bytes(16, "big"))
                        transfer_accts.add(di)
                        transfer_accts.add(ci)
                    else:
                        add(new_ids, i)
                        add(accts, di)
                        add(accts, ci)
                    if op.refund_of is not None:  # type: ignore[union-attr]
                        add(refs, op.refund_of)  # type: ignore[union-attr]
                elif t is PostPending or t is VoidPending:
                    add(new_ids, op.id)  # type: ignore[union-attr]
                    add(refs, op.pending_id)  # type: ignore[union-attr]
                elif t is Reverse:
                    add(new_ids, op.id)  # type: ignore[union-attr]
                    add(refs, op.original_id)  # type: ignore[union-attr]
                    add(reversed_ids, op.original_id)  # type: ignore[union-attr]
                elif t is CreateAccount or t is CloseAccount:
                    add(accts, op.id)  # type: ignore[union-attr]
                elif t is CloseBatch:
                    if isinstance(op.terminal_id, str):  # type: ignore[union-attr]
                        tids.add(op.terminal_id)  # type: ignore[union-attr]
                elif t is ExpireDue:
                    expire_limit = max(expire_limit, op.limit)  # type: ignore[union-attr]

        keys = {v: v.to_bytes(16, "big") for v in transfer_accts}
        accts.update(keys.values())

        # With several writers, a new transfer id and a tombstone for it must
        # not be decided at once by two batches (see `Store.guard_new_ids`).
        # The guard is the first lock a batch takes, before any row lock.
        guarded = store.concurrent and bool(new_ids)
        if guarded:
            store.guard_new_ids(self.exclusive)
        if expire_limit > 0:
            self.due = store.load_due_pending(self.now, expire_limit)
            refs.update(self.due)
        # Order matters with several writers (PostgreSQL): lock first, then
        # look. The referred-to transfers are immutable and tell which accounts
        # to lock; only once the states, accounts and terminals are locked are
        # the new ids looked up, so a concurrent batch that posted the same id
        # through the same accounts has committed and is seen (a duplicate),
        # instead of both evaluating it.
        if refs:
            # Transfers are immutable: read before any lock, they tell which
            # states to lock too. Reversing a reversal makes what it reversed
            # reversible again (_reverse), reversing a void holds its hold
            # again (_unvoid), reversing a completion holds its hold again and
            # reversing that reversal posts the hold once more
            # (_hold_again, _post_again): the states of those transfers are
            # locked with the others, in the one ascending order, and the
            # transfers read along the chain (a reversal, its completion, the
            # completion's hold) one link per round.
            states = set(refs)
            follow = reversed_ids
            todo = sorted(refs)
            while todo:
                further: set[bytes] = set()
                for row in store.load_transfers(todo):
                    x = _Xfer(*row)
                    self.transfers[x.id] = x
                    accts.add(x.debit)
                    accts.add(x.credit)
                    if x.ref is not None and x.id in follow and x.type in _UNDOING:
                        states.add(x.ref)
                        if x.type != _VOID and x.ref not in self.transfers:
                            further.add(x.ref)
                follow = further
                todo = sorted(further)
            for row in store.load_states(sorted(states)):
                self.states[row[0]] = _State(row)
        cache = self.cache
        if cache is not None and accts:
            accounts = self.accounts
            missing = set()
            for k in accts:
                a = cache.get(k)
                if a is None:
                    missing.add(k)
                else:
                    accounts[k] = a
            accts = missing
        if accts:
            for row in store.load_accounts(sorted(accts)):
                self.accounts[row[0]] = _Acct(*row, False, _blob(row[0]))
        accounts = self.accounts
        self.by_int = {v: a for v, k in keys.items() if (a := accounts.get(k)) is not None}
        if tids:
            for tid, current in store.load_terminal_batches(sorted(tids)):
                self.batches[tid] = current
                self.loaded_batches.add(tid)
        # Without references (a batch of sales), both lookups take the new ids:
        # sorted once, and only for a store that locks (a lone writer's
        # lookups need no order: sorting a batch's ids cost as much as a rule).
        order = sorted if store.concurrent else list
        fresh = order(new_ids - refs if refs else new_ids)
        if fresh:
            for row in store.load_transfers(fresh):
                x = _Xfer(*row)
                self.transfers[x.id] = x
        xids = order(new_ids | refs) if refs else fresh
        if xids:
            for rid, fp, code in store.load_rejections(xids):
                self.rejections[rid] = (fp, code)
        if guarded and not self.exclusive:
            for xid in reversed_ids:
                if xid not in self.transfers and xid not in self.rejections:
                    # This reversal may tombstone its original: that decision
                    # needs the guard exclusively (one more attempt, rarely).
                    raise NeedsExclusiveGuard

    # --- running groups ---------------------------------------------------

    def run_group(self, group: Group) -> list[Result]:
        ops = group.ops
        if len(ops) == 1:
            return [self._run_one(ops[0])]
        if not group.linked:
            return [self._run_one(op) for op in ops]
        results: list[Result] = []
        evaluated: list[tuple[bytes, bytes] | None] = []
        failed: int | None = None
        held_back: int | None = None
        self.journal = []
        for i, op in enumerate(group.ops):
            result = self._apply_guarded(op)
            results.append(result)
            evaluated.append(self.candidate)
            if result.ok:
                continue
            if result.duplicate and result.code is RC.LINKED_EVENT_FAILED:
                # A member recorded as failed only because of another one does
                # not decide a repeated group: the member that did decides it.
                # But it did not apply, so if no member decides, it fails the
                # group (a group is never posted in part).
                if held_back is None:
                    held_back = i
                continue
            failed = i
            break
        if failed is None:
            failed = held_back
        if failed is None:
            self.journal = []
            return results
        self._undo()
        code = results[failed].code
        out: list[Result] = []
        for i, _op in enumerate(group.ops):
            own = code if i == failed else RC.LINKED_EVENT_FAILED
            if i < len(results) and results[i].duplicate and i != failed:
                # A member already on record stays as it was; the group failed.
                out.append(Result(RC.LINKED_EVENT_FAILED, duplicate=True))
                continue
            if i <= failed and evaluated[i] is not None and code is not RC.INTERNAL_ERROR:
                self._reject(evaluated[i], own)  # type: ignore[arg-type]
            out.append(results[failed] if i == failed else Result(own))
        return out

    def _run_one(self, op: Op | ExpireDue) -> Result:
        # The journal is empty here: every group leaves it so.
        if (
            type(op) is Transfer
            and op.pending is False
            and op.refund_of is None
            and type(op.timeout_s) is int
            and not op.timeout_s
            and type(op.post_tolerance) is int
            and not op.post_tolerance
        ):
            # The hot path, without the generic dispatch of _apply_guarded.
            self.candidate = None
            try:
                result = self._posted_fast(op, False)
            except Exception:
                log.exception("ledger: unexpected error applying a transfer")
                self._undo()
                self.candidate = None
                result = Result(RC.INTERNAL_ERROR)
            if result is _OK:
                return result  # journal=False: nothing was journaled
        else:
            self.journal = []
            result = self._apply_guarded(op)
        if result.code is not RC.OK:
            self._undo()
            if self.candidate is not None:
                self._reject(self.candidate, result.code)
        self.journal = []
        return result

    def _apply_guarded(self, op: Op | ExpireDue) -> Result:
        self.candidate = None
        mark = len(self.journal)
        try:
            return self._apply(op)
        except _Reject as r:
            self._undo(mark)
            return Result(r.code)
        except Exception:
            # A bug must cost one group, not the writer: undo, report, go on.
            log.exception("ledger: unexpected error applying %s", type(op).__name__)
            self._undo(mark)
            self.candidate = None
            return Result(RC.INTERNAL_ERROR)

    def _undo(self, mark: int = 0) -> None:
        while len(self.journal) > mark:
            self.journal.pop()()

    def _reject(self, cand: tuple[bytes, bytes], code: ResultCode) -> None:
        rid, fp = cand
        if code is RC.INTERNAL_ERROR:
            return  # not a business answer: a retry deserves a fresh evaluation
        self.rejections[rid] = (fp, code.value)
        self.new_rejections[rid] = (rid, fp, code.value, self.now)

    def _apply(self, op: Op | ExpireDue) -> Result:
        t = type(op)
        if t is Transfer:
            return self._transfer(op)  # type: ignore[arg-type]
        if t is PostPending:
            return self._post(op)  # type: ignore[arg-type]
        if t is VoidPending:
            return self._void(op)  # type: ignore[arg-type]
        if t is Reverse:
            return self._reverse(op)  # type: ignore[arg-type]
        if t is CreateAccount:
            return self._create_account(op)  # type: ignore[arg-type]
        if t is CloseAccount:
            return self._close_account(op)  # type: ignore[arg-type]
        if t is CloseBatch:
            return self._close_batch(op)  # type: ignore[arg-type]
        if t is ExpireDue:
            return self._expire()
        raise TypeError(f"not a ledger operation: {t.__name__}")

    # --- shared checks and mutations --------------------------------------

    def _dup(self, idb: bytes, fp: bytes) -> Result | None:
        """The first answer for a repeated id, or None when the id is new."""
        x = self.transfers.get(idb)
        if x is not None:
            return Result(RC.OK, duplicate=True) if x.fp == fp else Result(RC.ID_EXISTS_DIFFERENT)
        rej = self.rejections.get(idb)
        if rej is not None:
            if rej[0] == TOMBSTONE:
                # The ledger's answer for this id was given by the reversal.
                return Result(RC.ALREADY_REVERSED, duplicate=True)
            if rej[0] != fp:
                return Result(RC.ID_EXISTS_DIFFERENT)
            return Result(RC(rej[1]), duplicate=True)
        self.candidate = (idb, fp)
        return None

    @staticmethod
    def _bad_fields(code: object, meta: WireMeta | None) -> Result | None:
        if not _code_ok(code):
            return Result(RC.CODE_INVALID)
        if not _meta_ok(meta):
            return Result(RC.META_INVALID)
        return None

    def _account_or_none(self, value: object) -> _Acct | None:
        if type(value) is not int or not valid_id(value):
            return None
        return self.accounts.get(to_bytes(value))

    def _account(self, value: object, missing: ResultCode) -> _Acct:
        a = self._account_or_none(value)
        if a is None:
            raise _Reject(missing)
        return a

    @staticmethod
    def _check_debit(a: _Acct, amount: int) -> None:
        """The payer may go down to −credit_limit, holds included, and no further."""
        if a.limit is not None and a.cp - a.dp - a.dpend - amount < -a.limit:
            raise _Reject(RC.INSUFFICIENT_FUNDS if a.limit == 0 else RC.CREDIT_LIMIT_EXCEEDED)

    def _touch(self, a: _Acct) -> None:
        """Journal an account's balances before they change, and mark it for writing."""
        snap = (a.dp, a.cp, a.dpend, a.cpend, a.closed)

        def restore() -> None:
            a.dp, a.cp, a.dpend, a.cpend, a.closed = snap

        self.journal.append(restore)
        self.dirty_accounts[a.id] = a

    def _move(self, d: _Acct, c: _Acct, posted: int, pending: int) -> None:
        """Add `posted` to posted and `pending` (may be negative) to pending balances."""
        if (
            d.dp + posted > MAX_AMOUNT
            or c.cp + posted > MAX_AMOUNT
            or d.dpend + pending > MAX_AMOUNT
            or c.cpend + pending > MAX_AMOUNT
        ):
            raise _Reject(RC.OVERFLOW)
        self._touch(d)
        self._touch(c)
        d.dp += posted
        c.cp += posted
        d.dpend += pending
        c.cpend += pending

    def _touch_state(self, s: _State) -> None:
        snap = (s.pending_state, s.resolved_by, s.reversed_by, s.refunded)

        def restore() -> None:
            s.pending_state, s.resolved_by, s.reversed_by, s.refunded = snap

        self.journal.append(restore)
        self.dirty_states[s.id] = s

    def _state_of(self, xid: bytes) -> _State:
        """The mutable state row of a transfer, created on first need."""
        s = self.states.get(xid)
        if s is None:
            s = _State((xid, None, None, None, None, 0), new=True)
            self.states[xid] = s

            def forget() -> None:
                self.states.pop(xid, None)
                self.dirty_states.pop(xid, None)

            self.journal.append(forget)
        return s

    def _insert(self, x: _Xfer, code: str, meta: WireMeta | None) -> None:
        self.transfers[x.id] = x
        self.new_transfers.append(
            (
                x.id,
                x.type,
                x.debit,
                x.credit,
                x.amount,
                code,
                x.ref,
                x.expires_at,
                x.tolerance,
                x.fp,
                self.now,
                *_meta_cols(meta),
            )
        )

        def forget() -> None:
            self.transfers.pop(x.id, None)
            self.new_transfers.pop()

        self.journal.append(forget)

    # --- operations -------------------------------------------------------

    def _posted_fast(self, op: Transfer, journal: bool) -> Result:
        """The common case (a plain posted transfer), with the checks of `_transfer`
        in the same order but without its generality: this is the hot loop of
        every sale, and on SQLite the batch's Python time is the ceiling of
        group commit. Anything unusual falls through to `_transfer`.

        Nothing changes before every check has passed, so a single operation
        (`journal` False) needs no undo step; a member of a linked group does."""
        i = op.id
        if type(i) is not int or not ID_MIN <= i <= ID_MAX:
            return Result(RC.ID_INVALID)
        idb = i.to_bytes(16, "big")
        di, ci, amount, code = op.debit_account_id, op.credit_account_id, op.amount, op.code
        fp = _fp(f"T|{di}|{ci}|{amount}|{code}|False|0|0|None")
        transfers = self.transfers
        if idb in transfers or idb in self.rejections:
            return self._dup(idb, fp)  # type: ignore[return-value]
        self.candidate = (idb, fp)
        if type(amount) is not int or not 0 < amount <= MAX_AMOUNT:
            return Result(RC.AMOUNT_INVALID)
        if type(code) is not str or not 0 < len(code) <= MAX_CODE_LEN:
            return Result(RC.CODE_INVALID)
        meta = op.meta
        if meta is not None and not _meta_ok(meta):
            return Result(RC.META_INVALID)
        if di == ci:
            return Result(RC.ACCOUNTS_SAME)
        # by_int holds the accounts loaded for this batch's transfers; one
        # created earlier in this batch is found under its bytes id.
        by_int = self.by_int
        d = by_int.get(di) if type(di) is int else None
        if d is None:
            d = self._account_or_none(di)
            if d is None:
                return Result(RC.DEBIT_ACCOUNT_NOT_FOUND)
        c = by_int.get(ci) if type(ci) is int else None
        if c is None:
            c = self._account_or_none(ci)
            if c is None:
                return Result(RC.CREDIT_ACCOUNT_NOT_FOUND)
        if d.closed or c.closed:
            return Result(RC.ACCOUNT_CLOSED)
        if d.currency != c.currency:
            return Result(RC.CURRENCY_MISMATCH)
        d_dp, c_cp = d.dp, c.cp
        if d.limit is not None and d.cp - d_dp - d.dpend - amount < -d.limit:
            return Result(RC.INSUFFICIENT_FUNDS if d.limit == 0 else RC.CREDIT_LIMIT_EXCEEDED)
        if d_dp + amount > MAX_AMOUNT or c_cp + amount > MAX_AMOUNT:
            return Result(RC.OVERFLOW)
        did, cid, now = d.id, c.id, self.now
        x = _Xfer(idb, _POSTED, did, cid, amount, None, None, 0, fp)
        if meta is None:
            row: tuple[object, ...] = (
                _blob(idb),
                d.blob,
                c.blob,
                amount,
                code,
                _blob(fp),
                now,
                *_NO_META,
            )
        else:
            row = (
                _blob(idb),
                d.blob,
                c.blob,
                amount,
                code,
                _blob(fp),
                now,
                meta.terminal_id,
                meta.merchant_id or None,
                meta.batch,
                meta.stan,
                meta.kind,
                meta.leg,
                meta.rrn or None,
                meta.masked_pan or None,
                1 if meta.foreign else 0,
            )
        rows = self.new_posted
        if journal:
            # One undo step for everything this op changes (linked groups need it).

            def undo() -> None:
                d.dp, c.cp = d_dp, c_cp
                transfers.pop(idb, None)
                rows.pop()

            self.journal.append(undo)
        transfers[idb] = x
        rows.append(row)
        d.dp = d_dp + amount
        c.cp = c_cp + amount
        dirty = self.dirty_accounts
        dirty[did] = d
        dirty[cid] = c
        return _OK

    def _transfer(self, op: Transfer) -> Result:
        if (
            op.pending is False
            and op.refund_of is None
            and type(op.timeout_s) is int
            and not op.timeout_s
            and type(op.post_tolerance) is int
            and not op.post_tolerance
        ):
            return self._posted_fast(op, True)
        if type(op.id) is not int or not valid_id(op.id):
            return Result(RC.ID_INVALID)
        idb = to_bytes(op.id)
        dup = self._dup(
            idb,
            _fp(
                f"T|{op.debit_account_id}|{op.credit_account_id}|{op.amount}|{op.code}|"
                f"{op.pending}|{op.timeout_s}|{op.post_tolerance}|{op.refund_of}"
            ),
        )
        if dup is not None:
            return dup
        if not _amount_ok(op.amount):
            return Result(RC.AMOUNT_INVALID)
        bad = self._bad_fields(op.code, op.meta)
        if bad is not None:
            return bad
        if type(op.pending) is not bool:
            return Result(RC.FIELD_INVALID)
        if not _is_int(op.timeout_s) or not 0 <= op.timeout_s <= MAX_TIMEOUT_S:
            return Result(RC.TIMEOUT_INVALID)
        if (
            not _is_int(op.post_tolerance)
            or not 0 <= op.post_tolerance <= MAX_AMOUNT
            or (op.post_tolerance and not op.pending)
        ):
            return Result(RC.AMOUNT_INVALID)
        if op.timeout_s and not op.pending:
            return Result(RC.TIMEOUT_INVALID)
        if op.debit_account_id == op.credit_account_id:
            return Result(RC.ACCOUNTS_SAME)
        d = self._account(op.debit_account_id, RC.DEBIT_ACCOUNT_NOT_FOUND)
        c = self._account(op.credit_account_id, RC.CREDIT_ACCOUNT_NOT_FOUND)
        if d.closed or c.closed:
            return Result(RC.ACCOUNT_CLOSED)
        if d.currency != c.currency:
            return Result(RC.CURRENCY_MISMATCH)

        ttype = TransferType.PENDING.value if op.pending else TransferType.POSTED.value
        ref: bytes | None = None
        if op.refund_of is not None:
            if op.pending:
                return Result(RC.AMOUNT_INVALID)
            ttype = TransferType.REFUND.value
            orig = self._original(op.refund_of)
            if orig.type not in (TransferType.POSTED.value, TransferType.POST.value):
                return Result(RC.ORIGINAL_NOT_POSTED)
            if orig.debit != c.id or orig.credit != d.id:
                return Result(RC.REFUND_ACCOUNTS_MISMATCH)
            st = self._state_of(orig.id)
            if st.reversed_by is not None:
                return Result(RC.ALREADY_REVERSED)
            if st.refunded + op.amount > orig.amount:
                return Result(RC.REFUND_EXCEEDS_ORIGINAL)
            self._touch_state(st)
            st.refunded += op.amount
            ref = orig.id

        self._check_debit(d, op.amount)
        expires = self.now + op.timeout_s * 1_000_000 if op.timeout_s else None
        x = _Xfer(
            *(idb, ttype, d.id, c.id, op.amount, ref, expires, op.post_tolerance, self.candidate[1])
        )  # type: ignore[index]
        if op.pending:
            self._move(d, c, 0, op.amount)
            st = self._state_of(idb)
            self._touch_state(st)
            st.pending_state = _PENDING
            st.expires_at = expires
        else:
            self._move(d, c, op.amount, 0)
        self._insert(x, op.code, op.meta)
        return _OK

    def _original(self, value: object, tombstone: bool = False) -> _Xfer:
        if type(value) is not int or not valid_id(value):
            raise _Reject(RC.ORIGINAL_NOT_FOUND)
        xid = to_bytes(value)
        x = self.transfers.get(xid)
        if x is None:
            if tombstone and xid not in self.rejections:
                # A reversal that overtook its original: answer it (the host
                # answers 00 either way) and make sure the original, should it
                # still arrive, is refused rather than posted un-reversed.
                self.rejections[xid] = (TOMBSTONE, RC.ALREADY_REVERSED.value)
                self.tombstones[xid] = (xid, TOMBSTONE, RC.ALREADY_REVERSED.value, self.now)
            raise _Reject(RC.ORIGINAL_NOT_FOUND)
        return x

    def _open_pending(self, value: object) -> tuple[_Xfer, _State]:
        """The hold a post or void refers to, if it is still open."""
        if type(value) is not int or not valid_id(value):
            raise _Reject(RC.PENDING_NOT_FOUND)
        p = self.transfers.get(to_bytes(value))
        if p is None:
            raise _Reject(RC.PENDING_NOT_FOUND)
        if p.type != TransferType.PENDING.value:
            raise _Reject(RC.NOT_PENDING)
        st = self.states[p.id]
        if st.pending_state == PendingState.POSTED.value:
            raise _Reject(RC.PENDING_ALREADY_POSTED)
        if st.pending_state == PendingState.VOIDED.value:
            raise _Reject(RC.PENDING_ALREADY_VOIDED)
        if st.pending_state == PendingState.EXPIRED.value:
            raise _Reject(RC.PENDING_EXPIRED)
        return p, st

    def _post(self, op: PostPending) -> Result:
        fingerprint = f"P|{op.pending_id}|{op.amount}|{op.code}"
        idb, refused = self._admit(op.id, fingerprint, op.code, op.meta)
        if refused is not None:
            return refused
        if op.amount is not None and not _amount_ok(op.amount):
            return Result(RC.AMOUNT_INVALID)
        p, st = self._open_pending(op.pending_id)
        if st.expires_at is not None and self.now >= st.expires_at:
            return Result(RC.PENDING_EXPIRED)
        amount = p.amount if op.amount is None else op.amount
        if amount > p.amount + p.tolerance:
            return Result(RC.EXCEEDS_PENDING_AMOUNT)
        d, c = self.accounts[p.debit], self.accounts[p.credit]
        if d.closed or c.closed:
            return Result(RC.ACCOUNT_CLOSED)
        if amount > p.amount:
            # Over-completion: the excess is new money, checked like a new debit
            # once the hold itself is released.
            self._check_debit(d, amount - p.amount)
        self._move(d, c, amount, -p.amount)
        self._touch_state(st)
        st.pending_state = PendingState.POSTED.value
        st.resolved_by = idb
        x = _Xfer(
            *(idb, TransferType.POST.value, d.id, c.id, amount, p.id, None, 0, self.candidate[1])
        )  # type: ignore[index]
        self._insert(x, op.code, op.meta)
        return _OK

    def _admit(self, op_id: object, fingerprint: str, code: object, meta: object
               ) -> tuple[bytes, Result | None]:  # fmt: skip
        """What post, void and reverse check first, in this order: a valid id,
        not a duplicate (the first answer again), a well-formed code and meta."""
        if type(op_id) is not int or not valid_id(op_id):
            return b"", Result(RC.ID_INVALID)
        idb = to_bytes(op_id)
        dup = self._dup(idb, _fp(fingerprint))
        if dup is not None:
            return idb, dup
        return idb, self._bad_fields(code, meta)

    def _void(self, op: VoidPending) -> Result:
        idb, refused = self._admit(op.id, f"V|{op.pending_id}|{op.code}", op.code, op.meta)
        if refused is not None:
            if refused.code is RC.ID_EXISTS_DIFFERENT:
                # A hold voided by a Reverse of it (_reverse) is the same undo.
                x = self.transfers.get(idb)
                if x is not None and x.fp == _fp(f"R|{op.pending_id}|{op.code}"):
                    return Result(RC.OK, duplicate=True)
            return refused
        p, st = self._open_pending(op.pending_id)
        return self._end_hold(idb, p, st, op.code, op.meta)

    def _end_hold(self, idb: bytes, p: _Xfer, st: _State, code: str,
                  meta: WireMeta | None) -> Result:  # fmt: skip
        # Voiding an overdue hold the sweeper has not reached yet is allowed:
        # either way the hold ends and nothing moves.
        d, c = self.accounts[p.debit], self.accounts[p.credit]
        self._move(d, c, 0, -p.amount)
        self._touch_state(st)
        st.pending_state = PendingState.VOIDED.value
        st.resolved_by = idb
        x = _Xfer(
            *(idb, TransferType.VOID.value, d.id, c.id, p.amount, p.id, None, 0, self.candidate[1])
        )  # type: ignore[index]
        self._insert(x, code, meta)
        return _OK

    def _reverse(self, op: Reverse) -> Result:
        idb, refused = self._admit(op.id, f"R|{op.original_id}|{op.code}", op.code, op.meta)
        if refused is not None:
            return refused
        orig = self._original(op.original_id, tombstone=True)
        if orig.type == _PENDING_TYPE:
            st = self.states.get(orig.id)
            if st is None or st.pending_state != _PENDING:
                return Result(RC.ORIGINAL_IS_PENDING)
            # A 0400 that looked for its pre-authorization just before that
            # committed (flows.undo_missing): the hold is open, so undoing it
            # is voiding it, as flows.undo would have asked. (Refusing it
            # answered the 0400 00 and left the hold standing.) The
            # VoidPending that flows.undo sends for it later is its duplicate:
            # see _void.
            return self._end_hold(idb, orig, st, op.code, op.meta)
        st = self._state_of(orig.id)
        if st.reversed_by is not None:
            return Result(RC.ALREADY_REVERSED)
        if orig.type == _VOID:
            return self._unvoid(idb, orig, st, op)
        if st.refunded:
            return Result(RC.ORIGINAL_HAS_REFUNDS)
        # The reversal runs the other way: the original's payee pays it back.
        d, c = self.accounts[orig.credit], self.accounts[orig.debit]
        if d.closed or c.closed:
            return Result(RC.ACCOUNT_CLOSED)
        if orig.type == _REVERSE and orig.ref is not None:
            self._post_again(orig)  # first: the hold it releases pays for the re-post
        self._check_debit(d, orig.amount)
        self._move(d, c, orig.amount, 0)
        self._touch_state(st)
        st.reversed_by = idb
        if orig.type == _POST:
            self._hold_again(orig)
        elif orig.type == _REVERSE and orig.ref is not None:
            # A reversal undone (a terminal's 0400 for its void) puts back what
            # it had reversed: the sale stands and may be voided again.
            undone = self.states.get(orig.ref)
            if undone is not None and undone.reversed_by == orig.id:
                self._touch_state(undone)
                undone.reversed_by = None
        x = _Xfer(
            *(
                idb,
                TransferType.REVERSE.value,
                d.id,
                c.id,
                orig.amount,
                orig.id,
                None,
                0,
                self.candidate[1],
            )
        )  # type: ignore[index]
        self._insert(x, op.code, op.meta)
        return _OK

    def _hold_again(self, post: _Xfer) -> None:
        """A completion reversed (its void, or the terminal's 0400): the
        pre-authorization stands again, as before the completion, and may be
        completed or cancelled again. Its hold comes back with its original
        expiry; past that expiry it ends as expired instead. If the payer can
        no longer cover the hold (it spent the money since a partial
        completion), the hold stays ended: the reversal itself still stands.
        """
        held = self.states.get(post.ref) if post.ref is not None else None
        p = self.transfers.get(post.ref) if post.ref is not None else None
        if held is None or p is None or held.pending_state != _HELD_POSTED \
                or held.resolved_by != post.id:  # fmt: skip
            return
        if held.expires_at is not None and self.now >= held.expires_at:
            self._touch_state(held)
            held.pending_state = PendingState.EXPIRED.value
            held.resolved_by = None
            return
        d, c = self.accounts[p.debit], self.accounts[p.credit]
        if d.closed or c.closed:
            return
        try:
            self._check_debit(d, p.amount)
        except _Reject:
            return
        self._move(d, c, 0, p.amount)
        self._touch_state(held)
        held.pending_state = _PENDING
        held.resolved_by = None

    def _post_again(self, reversal: _Xfer) -> None:
        """A completion's reversal undone: the completion stands again, so the
        hold that reversal gave back (`_hold_again`) is used up again. Refused
        when the hold has been completed again since: posting both would
        charge the card twice."""
        post = self.transfers.get(reversal.ref) if reversal.ref is not None else None
        if post is None or post.type != _POST or post.ref is None:
            return
        posted = self.states.get(post.id)
        if posted is None or posted.reversed_by != reversal.id:
            return
        held = self.states.get(post.ref)
        p = self.transfers.get(post.ref)
        if held is None or p is None:
            return
        if held.pending_state == _HELD_POSTED and held.resolved_by != post.id:
            raise _Reject(RC.PENDING_ALREADY_POSTED)
        if held.pending_state != _PENDING:
            return  # cancelled or expired since: the completion is posted without it
        self._move(self.accounts[p.debit], self.accounts[p.credit], 0, -p.amount)
        self._touch_state(held)
        held.pending_state = _HELD_POSTED
        held.resolved_by = post.id

    def _unvoid(self, idb: bytes, void: _Xfer, st: _State, op: Reverse) -> Result:
        """Reverse a void: the hold it released is held again, as it was.

        A pre-auth cancel is reversible (PROTOCOL.md §3): when the terminal
        reverses one, the pre-authorization stands again and may still be
        completed. The new transfer (UNVOID) moves nothing itself; the hold's
        pending amounts come back, if the payer can still cover them and the
        hold has not reached its expiry since.
        """
        held = self.states.get(void.ref) if void.ref is not None else None
        if held is None or held.pending_state != PendingState.VOIDED.value \
                or held.resolved_by != void.id:  # fmt: skip
            return Result(RC.ORIGINAL_NOT_POSTED)
        if held.expires_at is not None and self.now >= held.expires_at:
            return Result(RC.PENDING_EXPIRED)
        d, c = self.accounts[void.debit], self.accounts[void.credit]
        if d.closed or c.closed:
            return Result(RC.ACCOUNT_CLOSED)
        self._check_debit(d, void.amount)
        self._move(d, c, 0, void.amount)
        self._touch_state(held)
        held.pending_state = _PENDING
        held.resolved_by = None
        self._touch_state(st)
        st.reversed_by = idb
        x = _Xfer(
            *(idb, TransferType.UNVOID.value, d.id, c.id, void.amount, void.id, None, 0,
              self.candidate[1])
        )  # type: ignore[index]
        self._insert(x, op.code, op.meta)
        return _OK

    def _create_account(self, op: CreateAccount) -> Result:
        if type(op.id) is not int or not valid_id(op.id):
            return Result(RC.ID_INVALID)
        try:
            kind = AccountKind(op.kind)
        except ValueError:
            return Result(RC.ACCOUNT_INVALID)
        limit = op.credit_limit
        if limit is None and kind is AccountKind.CARDHOLDER:
            limit = 0
        if limit is not None and (not _is_int(limit) or not 0 <= limit <= MAX_AMOUNT):
            return Result(RC.ACCOUNT_INVALID)
        if (
            not isinstance(op.currency, str)
            or not 0 < len(op.currency) <= 3
            or not isinstance(op.owner, str)
            or len(op.owner) > MAX_TEXT_LEN
        ):
            return Result(RC.ACCOUNT_INVALID)
        idb = to_bytes(op.id)
        existing = self.accounts.get(idb)
        if existing is not None:
            same = (existing.kind, existing.currency, existing.owner, existing.limit) == (
                kind.value,
                op.currency,
                op.owner,
                limit,
            )
            return Result(RC.OK, duplicate=True) if same else Result(RC.ACCOUNT_EXISTS_DIFFERENT)
        a = _Acct(
            idb,
            kind.value,
            op.currency,
            op.owner,
            limit,
            False,
            0,
            0,
            0,
            0,
            self.now,
            True,
            _blob(idb),
        )
        self.accounts[idb] = a
        self.dirty_accounts[idb] = a

        def forget() -> None:
            self.accounts.pop(idb, None)
            self.dirty_accounts.pop(idb, None)

        self.journal.append(forget)
        return _OK

    def _close_account(self, op: CloseAccount) -> Result:
        a = self._account(op.id, RC.ACCOUNT_NOT_FOUND)
        if a.closed:
            return Result(RC.OK, duplicate=True)
        self._touch(a)
        a.closed = True
        return _OK

    def _close_batch(self, op: CloseBatch) -> Result:
        tid = op.terminal_id
        if not isinstance(tid, str) or not 0 < len(tid) <= MAX_TEXT_LEN:
            return Result(RC.TERMINAL_INVALID)
        current = self.batches.get(tid, 1)
        if not _is_int(op.batch) or not 1 <= op.batch <= MAX_BATCH:
            return Result(RC.BATCH_MISMATCH, value=current)
        following = op.batch % MAX_BATCH + 1
        if op.batch != current:
            if current == following and tid in self.batches:
                return Result(RC.OK, duplicate=True, value=current)
            return Result(RC.BATCH_MISMATCH, value=current)
        had = tid in self.batches
        self.batches[tid] = following
        self.dirty_batches.add(tid)
        self.closures.append((tid, op.batch, self.now))

        def restore() -> None:
            if had:
                self.batches[tid] = current
            else:
                self.batches.pop(tid, None)
            self.closures.pop()

        self.journal.append(restore)
        return Result(RC.OK, value=following)

    def _expire(self) -> Result:
        count = 0
        for xid in self.due:
            st = self.states.get(xid)
            p = self.transfers.get(xid)
            if st is None or p is None or st.pending_state != _PENDING:
                continue  # resolved earlier in this batch
            if st.expires_at is None or st.expires_at > self.now:
                continue
            self._move(self.accounts[p.debit], self.accounts[p.credit], 0, -p.amount)
            self._touch_state(st)
            st.pending_state = PendingState.EXPIRED.value
            count += 1
        self.due = []
        return Result(RC.OK, value=count)

    # --- output -----------------------------------------------------------

    def changes(self) -> Changes:
        new_accounts = []
        account_updates = []
        for a in self.dirty_accounts.values():
            if a.new:
                new_accounts.append(
                    (
                        a.blob,
                        a.kind,
                        a.currency,
                        a.owner,
                        a.limit,
                        int(a.closed),
                        a.dp,
                        a.cp,
                        a.dpend,
                        a.cpend,
                        a.created_at,
                    )
                )
            else:
                account_updates.append((a.dp, a.cp, a.dpend, a.cpend, int(a.closed), a.blob))
        new_states = []
        state_updates = []
        for s in self.dirty_states.values():
            if s.new:
                new_states.append(
                    (s.id, s.pending_state, s.expires_at, s.resolved_by, s.reversed_by, s.refunded)
                )
            else:
                state_updates.append(
                    (s.pending_state, s.resolved_by, s.reversed_by, s.refunded, s.id)
                )
        return Changes(
            new_accounts=new_accounts,
            account_updates=account_updates,
            new_transfers=self.new_transfers,
            new_posted=self.new_posted,
            new_states=new_states,
            state_updates=state_updates,
            rejections=list({**self.tombstones, **self.new_rejections}.values()),
            batch_inserts=[
                (t, self.batches[t], self.now)
                for t in sorted(self.dirty_batches)
                if t in self.batches and t not in self.loaded_batches
            ],
            batch_updates=[
                (self.batches[t], self.now, t)
                for t in sorted(self.dirty_batches)
                if t in self.loaded_batches
            ],
            closures=self.closures,
        )


def apply_batch(
    store: Store,
    groups: Sequence[Group],
    now_us: int,
    exclusive: bool = False,
    cache: AccountCache | None = None,
) -> list[Sequence[Result]]:
    """Apply `groups` in order inside the store's open transaction; write the net changes.

    Returns the results of each group, in order (a list, or one tuple shared
    by every group whose one operation got the plain OK). Raises what the store raises, and
    (only with a `concurrent` store) NeedsExclusiveGuard before anything was
    applied when a reversal's original is not on record: roll back and call
    again with `exclusive=True`.

    `cache`: accounts as this writer left them at its last commit, for a store
    nobody else writes to (SQLite: one writer). Accounts found there are not
    read again, and on return it holds every account of this batch as written.
    Those objects carry the batch's uncommitted balances: unless the
    transaction commits, the caller must empty it.
    """
    batch = _Batch(now_us, exclusive, cache)
    batch.load(store, groups)
    # Single operations (nearly every group) go to _run_one without the
    # extra call through run_group.
    run_one, run_group = batch._run_one, batch.run_group
    results: list[Sequence[Result]] = []
    append = results.append
    for g in groups:
        if len(g.ops) == 1:
            r = run_one(g.ops[0])
            # The usual answer is one shared constant, not a new list: a list
            # per operation lived until its caller woke, long enough for the
            # garbage collector to promote it and walk it again (thousands a
            # batch, and they brought on full collections).
            append(OK_ONLY if r is _OK else [r])
        else:
            append(run_group(g))
    store.write(batch.changes())
    if cache is not None:
        for a in batch.dirty_accounts.values():
            a.new = False  # inserted by this batch: from now on it is updated
        cache.update(batch.accounts)
    return results
