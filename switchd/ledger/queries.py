"""Read-side queries, the same SQL for both backends.

They run on a reader connection in a worker thread, never through the writer,
so reports and balance inquiries do not wait for group commits (SQLite's WAL
lets readers run beside the writer; PostgreSQL uses pooled connections). What
they see is committed data: a `submit` that has returned is visible.

SQL is written with `?` placeholders; `Dialect.sql` turns them into `%s` for
psycopg.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any, Protocol

from .ids import from_bytes, to_bytes
from .model import (
    REVERSAL_KIND,
    SETTLEMENT_CREDIT_KINDS,
    SETTLEMENT_DEBIT_KINDS,
    Account,
    AccountKind,
    AnsweredRequest,
    PendingState,
    SettlementTotals,
    TransferRecord,
    TransferType,
    WireMeta,
)


class Conn(Protocol):
    """What both sqlite3 and psycopg connections offer."""

    def execute(self, sql: str, params: Any = ..., /) -> Any: ...


class Dialect:
    def __init__(self, name: str) -> None:
        self.name = name

    def sql(self, text: str) -> str:
        return text if self.name == "sqlite" else text.replace("?", "%s")


_ACCOUNT_COLS = (
    "id, kind, currency, owner, credit_limit, closed, debits_posted, credits_posted,"
    " debits_pending, credits_pending, created_at"
)
_TRANSFER_COLS = (
    "t.id, t.type, t.debit_account_id, t.credit_account_id, t.amount, t.code,"
    " t.ref_id, t.expires_at, t.post_tolerance, t.created_at, t.terminal_id,"
    " t.merchant_id, t.batch_no, t.stan, t.txn_kind, t.leg, t.rrn, t.masked_pan,"
    " s.pending_state, s.reversed_by, s.refunded, t.foreign_card"
)
_TRANSFER_FROM = "transfers t LEFT JOIN transfer_state s ON s.id = t.id"


def _account(row: tuple[Any, ...]) -> Account:
    return Account(
        id=from_bytes(row[0]),
        kind=AccountKind(row[1]),
        currency=row[2],
        owner=row[3],
        credit_limit=row[4],
        closed=bool(row[5]),
        debits_posted=row[6],
        credits_posted=row[7],
        debits_pending=row[8],
        credits_pending=row[9],
        created_at_us=row[10],
    )


def _transfer(row: tuple[Any, ...]) -> TransferRecord:
    meta = None
    if row[10] is not None:
        meta = WireMeta(
            terminal_id=row[10],
            merchant_id=row[11] or "",
            batch=row[12],
            stan=row[13],
            kind=row[14],
            leg=row[15],
            rrn=row[16] or "",
            masked_pan=row[17] or "",
            foreign=bool(row[21]),
        )
    return TransferRecord(
        id=from_bytes(row[0]),
        type=TransferType(row[1]),
        debit_account_id=from_bytes(row[2]),
        credit_account_id=from_bytes(row[3]),
        amount=row[4],
        code=row[5],
        ref_id=from_bytes(row[6]) if row[6] is not None else None,
        expires_at_us=row[7],
        post_tolerance=row[8],
        created_at_us=row[9],
        meta=meta,
        pending_state=PendingState(row[18]) if row[18] is not None else None,
        reversed_by=from_bytes(row[19]) if row[19] is not None else None,
        refunded=row[20] or 0,
    )


def get_account(conn: Conn, d: Dialect, account_id: int) -> Account | None:
    row = conn.execute(
        d.sql(f"SELECT {_ACCOUNT_COLS} FROM accounts WHERE id = ?"), (to_bytes(account_id),)
    ).fetchone()
    return _account(row) if row else None


def get_transfer(conn: Conn, d: Dialect, transfer_id: int) -> TransferRecord | None:
    row = conn.execute(
        d.sql(f"SELECT {_TRANSFER_COLS} FROM {_TRANSFER_FROM} WHERE t.id = ?"),
        (to_bytes(transfer_id),),
    ).fetchone()
    return _transfer(row) if row else None


def transfers_by_batch(
    conn: Conn, d: Dialect, terminal_id: str, batch: int
) -> list[TransferRecord]:
    rows = conn.execute(
        d.sql(
            f"SELECT {_TRANSFER_COLS} FROM {_TRANSFER_FROM}"
            " WHERE t.terminal_id = ? AND t.batch_no = ? ORDER BY t.created_at, t.stan, t.leg"
        ),
        (terminal_id, batch),
    ).fetchall()
    return [_transfer(r) for r in rows]


def request_transfers(
    conn: Conn, d: Dialect, terminal_id: str, batch: int, stan: int, kind: str
) -> list[TransferRecord]:
    """The legs one terminal request created, leg 0 first."""
    rows = conn.execute(
        d.sql(
            f"SELECT {_TRANSFER_COLS} FROM {_TRANSFER_FROM}"
            " WHERE t.terminal_id = ? AND t.batch_no = ? AND t.stan = ? AND t.txn_kind = ?"
            " ORDER BY t.leg"
        ),
        (terminal_id, batch, stan, kind),
    ).fetchall()
    return [_transfer(r) for r in rows]


def transfers_by_merchant(
    conn: Conn, d: Dialect, merchant_id: str, start_us: int, end_us: int
) -> list[TransferRecord]:
    rows = conn.execute(
        d.sql(
            f"SELECT {_TRANSFER_COLS} FROM {_TRANSFER_FROM}"
            " WHERE t.merchant_id = ? AND t.created_at >= ? AND t.created_at < ?"
            " ORDER BY t.created_at, t.terminal_id, t.stan, t.leg"
        ),
        (merchant_id, start_us, end_us),
    ).fetchall()
    return [_transfer(r) for r in rows]


def answered_since(conn: Conn, d: Dialect, since_us: int) -> list[AnsweredRequest]:
    """Every request whose leg 0 committed at or after `since_us`, oldest first.

    Cheap on a large ledger: no index leads with created_at (one more index
    maintained by every posting, for a start-up query, was not worth it), so
    the recursive CTE skips through `transfers_by_merchant_time` one merchant
    at a time (a loose index scan: one seek per distinct merchant) and reads
    each merchant's range from `since_us` on. Same SQL on both backends.
    """
    rows = conn.execute(
        d.sql(
            "WITH RECURSIVE m(mid) AS ("
            " SELECT MIN(merchant_id) FROM transfers WHERE merchant_id IS NOT NULL"
            " UNION ALL"
            " SELECT (SELECT MIN(merchant_id) FROM transfers WHERE merchant_id > m.mid)"
            " FROM m WHERE m.mid IS NOT NULL)"
            " SELECT t.terminal_id, t.merchant_id, t.batch_no, t.stan, t.txn_kind, t.amount,"
            " t.masked_pan, t.rrn, t.created_at, rv.txn_kind, rs.txn_kind, o.batch_no, o.stan"
            " FROM m JOIN transfers t ON t.merchant_id = m.mid AND t.created_at >= ?"
            " LEFT JOIN transfer_state s ON s.id = t.id"
            " LEFT JOIN transfers rv ON rv.id = s.reversed_by"
            " LEFT JOIN transfers rs ON rs.id = s.resolved_by"
            " LEFT JOIN transfers o ON o.id = t.ref_id"
            " WHERE t.terminal_id IS NOT NULL AND t.leg = 0"
            " ORDER BY t.created_at"
        ),
        (since_us,),
    ).fetchall()
    return [_answered(r) for r in rows]


def _answered(r: tuple[Any, ...]) -> AnsweredRequest:
    return AnsweredRequest(
        terminal_id=r[0], merchant_id=r[1] or "", batch=r[2], stan=r[3], kind=r[4],
        amount=r[5], masked_pan=r[6] or "", rrn=r[7] or "", created_at_us=r[8],
        undone_by_reversal=REVERSAL_KIND in (r[9], r[10]), orig_batch=r[11], orig_stan=r[12],
    )  # fmt: skip


def day_bounds_us(day: date, tz: tzinfo = UTC) -> tuple[int, int]:
    """[start, end) of a calendar day in `tz`, in microseconds since the epoch."""
    start = datetime(day.year, day.month, day.day, tzinfo=tz)
    end = start + timedelta(days=1)
    return int(start.timestamp()) * 1_000_000, int(end.timestamp()) * 1_000_000


def settlement_totals(conn: Conn, d: Dialect, terminal_id: str, batch: int) -> SettlementTotals:
    # Leg 0 carries the amount the terminal knows; a transaction whose leg 0
    # was undone by a 0400 reversal is not in the terminal's totals either.
    rows = conn.execute(
        d.sql(
            "SELECT t.txn_kind, t.foreign_card, COUNT(*), COALESCE(SUM(t.amount), 0)"
            " FROM transfers t"
            " LEFT JOIN transfer_state s ON s.id = t.id"
            " LEFT JOIN transfers r ON r.id = s.reversed_by"
            " WHERE t.terminal_id = ? AND t.batch_no = ? AND t.leg = 0"
            " AND t.type IN ('posted', 'post', 'reverse', 'refund')"
            " AND (r.txn_kind IS NULL OR r.txn_kind <> ?)"
            " GROUP BY t.txn_kind, t.foreign_card"
        ),
        (terminal_id, batch, REVERSAL_KIND),
    ).fetchall()
    # [domestic, foreign] x [debit amount, debit count, credit amount, credit count]
    sums = [[0, 0, 0, 0], [0, 0, 0, 0]]
    for kind, foreign, count, amount in rows:
        side = sums[1 if foreign else 0]
        if kind in SETTLEMENT_DEBIT_KINDS:
            side[0] += int(amount)
            side[1] += int(count)
        elif kind in SETTLEMENT_CREDIT_KINDS:
            side[2] += int(amount)
            side[3] += int(count)
    (da, dc, ca, cc), (fda, fdc, fca, fcc) = sums
    return SettlementTotals(
        terminal_id=terminal_id, batch=batch,
        debit_amount=da, debit_count=dc, credit_amount=ca, credit_count=cc,
        foreign_debit_amount=fda, foreign_debit_count=fdc,
        foreign_credit_amount=fca, foreign_credit_count=fcc,
    )


def current_batch(conn: Conn, d: Dialect, terminal_id: str) -> int:
    row = conn.execute(
        d.sql("SELECT current_batch FROM terminal_batches WHERE terminal_id = ?"), (terminal_id,)
    ).fetchone()
    return int(row[0]) if row else 1


def audit(conn: Conn, d: Dialect) -> list[str]:
    """Recompute every balance from the transfers; return what disagrees (empty = sound).

    Checks: cached balances equal the sums of the transfers (posted: posted,
    post, reverse and refund transfers; pending: holds still pending), the
    sum of all balances is zero, and no account is below its limit.
    """
    problems: list[str] = []
    accounts = {r[0]: r for r in conn.execute(f"SELECT {_ACCOUNT_COLS} FROM accounts").fetchall()}
    sums: dict[bytes, list[int]] = {k: [0, 0, 0, 0] for k in accounts}
    rows = conn.execute(
        "SELECT t.debit_account_id, t.credit_account_id, t.type, s.pending_state,"
        " SUM(t.amount) FROM transfers t LEFT JOIN transfer_state s ON s.id = t.id"
        " GROUP BY t.debit_account_id, t.credit_account_id, t.type, s.pending_state"
    ).fetchall()
    for debit, credit, ttype, pstate, amount in rows:
        amount = int(amount)
        if debit not in sums or credit not in sums:
            problems.append(f"transfer refers to a missing account {debit.hex()}/{credit.hex()}")
            continue
        if ttype in ("posted", "post", "reverse", "refund"):
            sums[debit][0] += amount
            sums[credit][1] += amount
        elif ttype == "pending" and pstate == "pending":
            sums[debit][2] += amount
            sums[credit][3] += amount
    total = 0
    for key, row in accounts.items():
        cached = [row[6], row[7], row[8], row[9]]
        if cached != sums[key]:
            problems.append(f"account {key.hex()}: cached {cached} != from transfers {sums[key]}")
        total += row[7] - row[6]
        limit = row[4]
        if limit is not None and row[7] - row[6] - row[8] < -limit:
            problems.append(f"account {key.hex()} below its limit")
    if total != 0:
        problems.append(f"sum of balances is {total}, not 0")
    return problems
