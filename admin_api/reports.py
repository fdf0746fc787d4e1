"""Reports, computed from the ledger's transfers so they add up to what the
ledger holds, to the minor unit: daily sales per merchant or terminal,
settlement per merchant and day, fee income; and batch history from the
switch's settlement records. Each as JSON or, with ``?format=csv``, CSV.

Days are UTC calendar days. Every transfer a terminal request creates carries
its wire kind and leg (see switchd.ledger.flows): leg 0 is the amount between
card and merchant, later legs are the merchant's fee (or its return). Only
transfers that moved posted money count toward money totals (a pre-auth
hold is not money paid; its completion is).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable

import orjson

from switchd.ledger import TransferRecord, TransferType, fee_account_id, merchant_account_id

from . import schemas as s
from .api import READ, Api, Req, Table
from .common import check_range, decode_cursor, encode_cursor

api = Api()

#: Transfer types that move posted balances (pending and void ones do not).
POSTED_TYPES = frozenset(
    {TransferType.POSTED, TransferType.POST, TransferType.REVERSE, TransferType.REFUND}
)
#: Settlement buckets of leg 0 by wire kind.
BUCKETS = {
    "sale": "gross",
    "completion": "gross",
    "completion_advice": "gross",
    "void": "voids",
    "completion_void": "voids",
    "reversal": "reversals",
    "refund": "refunds",
}
#: The payment method of every card transaction the switch carries (ERP settings).
BANKCARD = "bankcard"


async def merchants_in_scope(req: Req, mid: str | None) -> list[str]:
    mid = req.scope_mid(mid)
    if mid is not None:
        return [mid]
    return [r[0] for r in await req.db.fetchall("SELECT mid FROM merchants ORDER BY mid")]


def _leg(t: TransferRecord) -> int:
    return t.meta.leg if t.meta else 0


def _kind(t: TransferRecord) -> str:
    return t.meta.kind if t.meta else t.code


def daily_sales_rows(
    day: dt.date, mid: str, transfers: Iterable[TransferRecord], by_terminal: bool
) -> list[dict]:  # type: ignore[type-arg]
    groups: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for t in transfers:
        if _leg(t) != 0:
            continue
        tid = t.meta.terminal_id if (t.meta and by_terminal) else ""
        g = groups[(tid, _kind(t))]
        g[0] += 1
        g[1] += t.amount
    rows = []
    for (tid, kind), (count, amount) in sorted(groups.items()):
        row = {"date": day.isoformat(), "mid": mid}
        if by_terminal:
            row["tid"] = tid
        row |= {"payment_method": BANKCARD, "kind": kind, "count": count, "amount": amount}
        rows.append(row)
    return rows


def settlement_row(day: dt.date, mid: str, transfers: Iterable[TransferRecord]) -> dict:  # type: ignore[type-arg]
    """Gross, voids, reversals, refunds, fees and net for one merchant and day.

    net = gross - voids - reversals - refunds - fees, and equals the change of
    the merchant's settlement account from these transfers (what is owed).
    """
    acct = merchant_account_id(mid)
    sums = dict.fromkeys(("gross", "voids", "reversals", "refunds", "fees", "other"), 0)
    count = 0
    for t in transfers:
        if t.type not in POSTED_TYPES:
            continue
        if t.credit_account_id == acct:
            delta = t.amount
        elif t.debit_account_id == acct:
            delta = -t.amount
        else:
            continue
        if _leg(t) > 0:
            sums["fees"] -= delta
            continue
        bucket = BUCKETS.get(_kind(t), "other")
        if bucket == "gross":
            sums["gross"] += delta
            count += 1
        elif bucket == "other":
            sums["other"] += delta
        else:
            sums[bucket] -= delta
    net = (
        sums["gross"]
        - sums["voids"]
        - sums["reversals"]
        - sums["refunds"]
        - sums["fees"]
        + sums["other"]
    )
    return {"date": day.isoformat(), "mid": mid, "sales_count": count, **sums, "net": net}


def fee_row(day: dt.date, mid: str, currency: str, transfers: Iterable[TransferRecord]) -> dict:  # type: ignore[type-arg]
    fee_acct = fee_account_id(currency)
    charged = returned = 0
    for t in transfers:
        if t.type not in POSTED_TYPES:
            continue
        if t.credit_account_id == fee_acct:
            charged += t.amount
        elif t.debit_account_id == fee_acct:
            returned += t.amount
    return {
        "date": day.isoformat(),
        "mid": mid,
        "fees_charged": charged,
        "fees_returned": returned,
        "net": charged - returned,
    }


SALES_COLUMNS = ["date", "mid", "payment_method", "kind", "count", "amount"]
SETTLEMENT_COLUMNS = [
    "date",
    "mid",
    "sales_count",
    "gross",
    "voids",
    "reversals",
    "refunds",
    "fees",
    "other",
    "net",
]
FEE_COLUMNS = ["date", "mid", "fees_charged", "fees_returned", "net"]
BATCH_COLUMNS = [
    "tid",
    "mid",
    "batch",
    "outcome",
    "terminal_debit_amount",
    "terminal_debit_count",
    "terminal_credit_amount",
    "terminal_credit_count",
    "host_debit_amount",
    "host_debit_count",
    "host_credit_amount",
    "host_credit_count",
    "settled_at_us",
]


@api.op(
    "GET",
    "/v1/reports/daily-sales",
    "Daily sales per merchant or per terminal: count and "
    "amount by transaction kind and payment method",
    tag="reports",
    roles=READ,
    query=s.SalesQuery,
    response=s.ReportOut,
    csv=True,
)
async def daily_sales(req: Req) -> Table:
    q: s.SalesQuery = req.query
    rows = []
    for mid in await merchants_in_scope(req, q.mid):
        transfers = await req.ctx.ledger.transfers_by_merchant_day(mid, q.date)
        rows += daily_sales_rows(q.date, mid, transfers, q.by == "terminal")
    cols = SALES_COLUMNS if q.by == "merchant" else [*SALES_COLUMNS[:2], "tid", *SALES_COLUMNS[2:]]
    return Table(cols, rows, filename=f"daily-sales-{q.date}.csv")


@api.op(
    "GET",
    "/v1/reports/settlement",
    "Settlement per merchant and day: gross, voids, "
    "reversals, refunds, fees and the net to pay the merchant",
    tag="reports",
    roles=READ,
    query=s.DayQuery,
    response=s.SettlementReport,
    csv=True,
)
async def settlement(req: Req) -> Table:
    q: s.DayQuery = req.query
    rows = []
    for mid in await merchants_in_scope(req, q.mid):
        transfers = await req.ctx.ledger.transfers_by_merchant_day(mid, q.date)
        rows.append(settlement_row(q.date, mid, transfers))
    totals = {c: sum(r[c] for r in rows) for c in SETTLEMENT_COLUMNS[2:]}
    return Table(SETTLEMENT_COLUMNS, rows, {"totals": totals}, filename=f"settlement-{q.date}.csv")


@api.op(
    "GET",
    "/v1/reports/fee-income",
    "Fee income per merchant and day over a date range (at most 92 days)",
    tag="reports",
    roles=READ,
    query=s.RangeQuery,
    response=s.SettlementReport,
    csv=True,
)
async def fee_income(req: Req) -> Table:
    q: s.RangeQuery = req.query
    check_range(q.since, q.until, 92)
    rows = []
    mids = await merchants_in_scope(req, q.mid)
    day = q.since
    while day <= q.until:
        for mid in mids:
            transfers = await req.ctx.ledger.transfers_by_merchant_day(mid, day)
            row = fee_row(day, mid, req.ctx.currency, transfers)
            if row["fees_charged"] or row["fees_returned"]:
                rows.append(row)
        day += dt.timedelta(days=1)
    totals = {c: sum(r[c] for r in rows) for c in FEE_COLUMNS[2:]}
    return Table(
        FEE_COLUMNS, rows, {"totals": totals}, filename=f"fee-income-{q.since}-{q.until}.csv"
    )


def _totals(prefix: str, text: str) -> dict[str, int]:
    v = orjson.loads(text)
    return {
        f"{prefix}_debit_amount": v[0],
        f"{prefix}_debit_count": v[1],
        f"{prefix}_credit_amount": v[2],
        f"{prefix}_credit_count": v[3],
    }


@api.op(
    "GET",
    "/v1/reports/batches",
    "Batch history per terminal: the terminal's totals, the host's, and whether they balanced",
    tag="reports",
    roles=READ,
    query=s.BatchQuery,
    response=s.ReportOut,
    csv=True,
)
async def batches(req: Req) -> Table:
    q: s.BatchQuery = req.query
    where, params = ["1 = 1"], []  # type: ignore[var-annotated]
    mid = req.scope_mid(q.mid)
    if mid is not None:
        where.append("mid = ?")
        params.append(mid)
    if q.tid is not None:
        where.append("tid = ?")
        params.append(q.tid)
    if q.cursor is not None:
        tid, batch = decode_cursor(q.cursor, (str, int))
        where.append("(tid > ? OR (tid = ? AND batch < ?))")
        params += [tid, tid, batch]
    rows = await req.db.fetchall(
        "SELECT tid, mid, batch, balanced, terminal_totals, host_totals, created_at"
        f" FROM settlements WHERE {' AND '.join(where)} ORDER BY tid, batch DESC LIMIT ?",
        (*params, q.limit + 1),
    )
    out = [
        {
            "tid": r[0],
            "mid": r[1],
            "batch": r[2],
            "outcome": "balanced" if r[3] else "unbalanced",
            **_totals("terminal", r[4]),
            **_totals("host", r[5]),
            "settled_at_us": r[6],
        }
        for r in rows[: q.limit]
    ]
    nxt = encode_cursor([out[-1]["tid"], out[-1]["batch"]]) if len(rows) > q.limit else None
    return Table(BATCH_COLUMNS, out, {"next_cursor": nxt}, filename="batches.csv")
