"""Transaction search over the journal (every answered request) and one
transaction in full with its ledger legs.

The journal holds only the masked PAN; the stored ISO response is never
returned (it is the terminal's business, and would need care with field 35/55
if a future message layout put them there).
"""

from __future__ import annotations

from switchd.ledger import fee_account_id, merchant_account_id, suspense_account_id

from . import schemas as s
from .api import READ, Api, Req
from .common import decode_cursor, encode_cursor, to_us
from .errors import ApiError, not_found

api = Api()

_COLS = (
    "tid, batch, stan, reversal, kind, mid, rc, amount, masked_pan, rrn, auth_code,"
    " created_at, orig_batch, orig_stan"
)
#: Newest first; the primary key breaks ties so the order (and so the cursor) is total.
_ORDER = "created_at DESC, tid DESC, batch DESC, stan DESC, reversal DESC"
_KEY_SHAPE = (int, str, int, int, int)


def txn_id(tid: str, batch: int, stan: int, reversal: bool) -> str:
    return f"{tid}.{batch:06d}.{stan:06d}.{int(reversal)}"


def _out(r: tuple) -> s.TxnOut:  # type: ignore[type-arg]
    return s.TxnOut(
        id=txn_id(r[0], r[1], r[2], bool(r[3])),
        tid=r[0],
        batch=r[1],
        stan=r[2],
        reversal=bool(r[3]),
        kind=r[4],
        mid=r[5],
        rc=r[6],
        approved=r[6] == "00",
        amount=r[7],
        masked_pan=r[8],
        rrn=r[9],
        auth_code=r[10],
        created_at_us=r[11],
    )


@api.op(
    "GET",
    "/v1/transactions",
    "Search transactions (newest first, cursor pagination)",
    tag="transactions",
    roles=READ,
    query=s.TxnQuery,
    response=s.TxnList,
)
async def search(req: Req) -> s.TxnList:
    q: s.TxnQuery = req.query
    where: list[str] = []
    params: list[object] = []

    def add(cond: str, *values: object) -> None:
        where.append(cond)
        params.extend(values)

    mid = req.scope_mid(q.mid)
    if mid is not None:
        add("mid = ?", mid)
    if q.tid is not None:
        add("tid = ?", q.tid)
    if q.batch is not None:
        add("batch = ?", q.batch)
    if q.since is not None:
        add("created_at >= ?", to_us(q.since))
    if q.until is not None:
        add("created_at < ?", to_us(q.until))
    if q.kind is not None:
        add("kind = ?", q.kind)
    if q.rc is not None:
        add("rc = ?", q.rc)
    if q.pan_suffix is not None:
        add("masked_pan LIKE ?", "%" + q.pan_suffix)
    if q.rrn is not None:
        add("rrn = ?", q.rrn)
    if q.cursor is not None:
        key = decode_cursor(q.cursor, _KEY_SHAPE)
        add("(created_at, tid, batch, stan, reversal) < (?, ?, ?, ?, ?)", *key)
    sql = f"SELECT {_COLS} FROM journal"
    if where:
        sql += " WHERE " + " AND ".join(where)
    rows = await req.db.fetchall(f"{sql} ORDER BY {_ORDER} LIMIT ?", (*params, q.limit + 1))
    items = [_out(r) for r in rows[: q.limit]]
    nxt = None
    if len(rows) > q.limit:
        r = rows[q.limit - 1]
        nxt = encode_cursor([r[11], r[0], r[1], r[2], int(r[3])])
    return s.TxnList(items=items, next_cursor=nxt)


def _parse_id(value: str) -> tuple[str, int, int, int]:
    parts = value.split(".")
    if (
        len(parts) != 4
        or not all(p.isdigit() for p in parts[1:])
        or len(parts[0]) != 8
        or parts[3] not in ("0", "1")
        or len(parts[1]) > 6
        or len(parts[2]) > 6
    ):
        raise ApiError(422, "invalid", "a transaction id is TID.BATCH.STAN.REVERSAL", "txn_id")
    return parts[0], int(parts[1]), int(parts[2]), int(parts[3])


@api.op(
    "GET",
    "/v1/transactions/{txn_id}",
    "One transaction in full, with its ledger legs (never a full PAN, track or PIN block)",
    tag="transactions",
    roles=READ,
    response=s.TxnDetail,
)
async def detail(req: Req) -> s.TxnDetail:
    tid, batch, stan, rev = _parse_id(req.path["txn_id"])
    row = await req.db.fetchone(
        f"SELECT {_COLS} FROM journal WHERE tid = ? AND batch = ? AND stan = ? AND reversal = ?",
        (tid, batch, stan, rev),
    )
    if row is None or req.scope_mid(None) not in (None, row[5]):
        raise not_found("transaction")
    base = _out(row)
    ledger = req.ctx.ledger
    kinds = [base.kind] + (["completion"] if base.kind == "completion_advice" else [])
    records = []
    for kind in kinds:
        records = await ledger.request_transfers(tid, batch, stan, kind)
        if records:
            break
    cur = req.ctx.currency
    names = {
        merchant_account_id(base.mid): "merchant",
        fee_account_id(cur): "fee_income",
        suspense_account_id(cur): "suspense",
    }
    legs = []
    fee = 0
    for rec in records:
        leg = rec.meta.leg if rec.meta else 0
        debit = names.get(rec.debit_account_id, "card")
        credit = names.get(rec.credit_account_id, "card")
        if leg > 0:
            fee += rec.amount if credit == "fee_income" else -rec.amount
        legs.append(
            s.LegOut(
                leg=leg,
                type=str(rec.type),
                code=rec.code,
                amount=rec.amount,
                debit=debit,
                credit=credit,
                pending_state=str(rec.pending_state) if rec.pending_state else None,
                reversed=rec.reversed_by is not None,
                refunded=rec.refunded,
            )
        )
    return s.TxnDetail(
        **{f: getattr(base, f) for f in base.__struct_fields__},
        orig_batch=row[12],
        orig_stan=row[13],
        legs=legs,
        fee=fee,
    )
