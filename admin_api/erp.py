"""Merchant ERP: the store-side data a commercial-management POS keeps next to
its payments: products with price history, stock per location (stock-takes,
receipts, bounds, turnover), members with points, and sales documents linked
by RRN to the card payment that paid them.

Conventions: prices are tax-inclusive minor units and the tax is the part of
the line amount at the line's rate (rounded half up); quantities are whole
units; available stock is on hand less reserved (ordered goods are not on the
shelf yet). Posting a sales document moves its quantities (gifts included)
out of the location's stock, a return moves them back; both are recorded as
stock moves, which is what turnover is computed from.

Points: a posted sale with a member, paid by a card payment (its RRN, an
approved sale or completion of the same merchant) earns one point per whole
currency unit of the card payment when the merchant's ``bankcard`` payment
method has ``earns_points``.
"""

from __future__ import annotations

import datetime as dt
import secrets
from fractions import Fraction
from typing import Any

from switchd.db import Cursor
from switchd.store import now_us

from . import schemas as s
from .api import ADMIN, READ, Api, Req
from .common import check_range, day_start_us, decode_cursor, encode_cursor, require_merchant
from .errors import conflict, invalid, not_found

api = Api()
BASIS = 10_000
POINT_UNIT = 100  # minor units per point
PAID_KINDS = ("sale", "completion", "completion_advice")


def _id() -> str:
    return secrets.token_hex(8)


def _product_row(c: Cursor, mid: str, code: str) -> tuple | None:  # type: ignore[type-arg]
    c.execute(
        "SELECT code, name, category, price, tax_rate_bp, active, updated_at"
        " FROM erp_products WHERE mid = ? AND code = ?",
        (mid, code),
    )
    return c.fetchone()


def _product(r: tuple) -> s.ProductOut:  # type: ignore[type-arg]
    return s.ProductOut(
        code=r[0],
        name=r[1],
        category=r[2],
        price=r[3],
        tax_rate_bp=r[4],
        active=bool(r[5]),
        updated_at_us=r[6],
    )


# --- products -------------------------------------------------------------------


@api.op(
    "GET",
    "/v1/merchants/{mid}/products",
    "A merchant's products",
    tag="erp",
    roles=READ,
    query=s.ProductQuery,
    response=s.ProductList,
)
async def list_products(req: Req) -> s.ProductList:
    mid = req.path["mid"]
    q: s.ProductQuery = req.query
    after = decode_cursor(q.cursor, (str,))[0] if q.cursor else ""

    def go(c: Cursor) -> list:  # type: ignore[type-arg]
        require_merchant(c, mid)
        sql = (
            "SELECT code, name, category, price, tax_rate_bp, active, updated_at"
            " FROM erp_products WHERE mid = ? AND code > ?"
        )
        params: list[Any] = [mid, after]
        if q.category is not None:
            sql += " AND category = ?"
            params.append(q.category)
        c.execute(sql + " ORDER BY code LIMIT ?", (*params, q.limit + 1))
        return c.fetchall()

    rows = await req.db.run(go)
    items = [_product(r) for r in rows[: q.limit]]
    nxt = encode_cursor([items[-1].code]) if len(rows) > q.limit else None
    return s.ProductList(items=items, next_cursor=nxt)


@api.op(
    "POST",
    "/v1/merchants/{mid}/products",
    "Create a product",
    tag="erp",
    roles=ADMIN,
    body=s.ProductIn,
    response=s.ProductOut,
    status=201,
)
async def create_product(req: Req) -> s.ProductOut:
    mid = req.path["mid"]
    b: s.ProductIn = req.body

    def go(c: Cursor) -> tuple:  # type: ignore[type-arg]
        require_merchant(c, mid)
        if _product_row(c, mid, b.code):
            raise conflict(f"product {b.code} exists", "code")
        ts = now_us()
        c.execute(
            "INSERT INTO erp_products (mid, code, name, category, price, tax_rate_bp,"
            " active, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (mid, b.code, b.name, b.category, b.price, b.tax_rate_bp, int(b.active), ts),
        )
        c.execute(
            "INSERT INTO erp_price_history (mid, code, price, tax_rate_bp, valid_from)"
            " VALUES (?, ?, ?, ?, ?)",
            (mid, b.code, b.price, b.tax_rate_bp, ts),
        )
        return _product_row(c, mid, b.code)  # type: ignore[return-value]

    return _product(await req.db.run(go))


@api.op(
    "GET",
    "/v1/merchants/{mid}/products/{code}",
    "One product",
    tag="erp",
    roles=READ,
    response=s.ProductOut,
)
async def get_product(req: Req) -> s.ProductOut:
    mid, code = req.path["mid"], req.path["code"]

    def go(c: Cursor) -> tuple | None:  # type: ignore[type-arg]
        return _product_row(c, mid, code)

    row = await req.db.run(go)
    if row is None:
        raise not_found(f"product {code}")
    return _product(row)


@api.op(
    "PATCH",
    "/v1/merchants/{mid}/products/{code}",
    "Change a product; a new price or tax rate is added to its price history",
    tag="erp",
    roles=ADMIN,
    body=s.ProductPatch,
    response=s.ProductOut,
)
async def patch_product(req: Req) -> s.ProductOut:
    mid, code = req.path["mid"], req.path["code"]
    b: s.ProductPatch = req.body
    changes = s.given(b)
    if "active" in changes:
        changes["active"] = int(changes["active"])

    def go(c: Cursor) -> tuple:  # type: ignore[type-arg]
        cur = _product_row(c, mid, code)
        if cur is None:
            raise not_found(f"product {code}")
        if not changes:
            return cur
        ts = max(now_us(), cur[6] + 1)  # history keys never collide, even within a µs
        sets = ", ".join(f"{k} = ?" for k in changes)
        c.execute(
            f"UPDATE erp_products SET {sets}, updated_at = ? WHERE mid = ? AND code = ?",
            (*changes.values(), ts, mid, code),
        )
        price, rate = changes.get("price", cur[3]), changes.get("tax_rate_bp", cur[4])
        if (price, rate) != (cur[3], cur[4]):
            c.execute(
                "INSERT INTO erp_price_history (mid, code, price, tax_rate_bp, valid_from)"
                " VALUES (?, ?, ?, ?, ?)",
                (mid, code, price, rate, ts),
            )
        return _product_row(c, mid, code)  # type: ignore[return-value]

    return _product(await req.db.run(go))


@api.op(
    "GET",
    "/v1/merchants/{mid}/products/{code}/price-history",
    "A product's prices over time, oldest first",
    tag="erp",
    roles=READ,
    response=list[s.PricePoint],
)
async def price_history(req: Req) -> list[s.PricePoint]:
    mid, code = req.path["mid"], req.path["code"]

    def go(c: Cursor) -> list:  # type: ignore[type-arg]
        if _product_row(c, mid, code) is None:
            raise not_found(f"product {code}")
        c.execute(
            "SELECT price, tax_rate_bp, valid_from FROM erp_price_history"
            " WHERE mid = ? AND code = ? ORDER BY valid_from",
            (mid, code),
        )
        return c.fetchall()

    return [
        s.PricePoint(price=r[0], tax_rate_bp=r[1], valid_from_us=r[2]) for r in await req.db.run(go)
    ]


# --- stock --------------------------------------------------------------------

_STOCK_COLS = "location, code, on_hand, ordered, reserved, max_stock, safety_stock, updated_at"


def _stock(r: tuple) -> s.StockOut:  # type: ignore[type-arg]
    return s.StockOut(
        location=r[0],
        code=r[1],
        on_hand=r[2],
        ordered=r[3],
        reserved=r[4],
        available=r[2] - r[4],
        max_stock=r[5],
        safety_stock=r[6],
        updated_at_us=r[7],
    )


def _stock_row(c: Cursor, mid: str, location: str, code: str) -> tuple | None:  # type: ignore[type-arg]
    c.execute(
        f"SELECT {_STOCK_COLS} FROM erp_stock WHERE mid = ? AND location = ? AND code = ?",
        (mid, location, code),
    )
    return c.fetchone()


def _move(
    c: Cursor, mid: str, location: str, code: str, delta: int, reason: str, ref: str, ts: int
) -> None:
    """Change on hand by `delta` (creating the stock row) and record the move."""
    if _stock_row(c, mid, location, code) is None:
        c.execute(
            "INSERT INTO erp_stock (mid, location, code, updated_at) VALUES (?, ?, ?, ?)",
            (mid, location, code, ts),
        )
    c.execute(
        "UPDATE erp_stock SET on_hand = on_hand + ?, updated_at = ?"
        " WHERE mid = ? AND location = ? AND code = ?",
        (delta, ts, mid, location, code),
    )
    if delta:
        c.execute(
            "INSERT INTO erp_stock_moves (move_id, mid, location, code, delta, reason, ref,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (_id(), mid, location, code, delta, reason, ref, ts),
        )


def _check_product(c: Cursor, mid: str, code: str, field: str) -> tuple:  # type: ignore[type-arg]
    row = _product_row(c, mid, code)
    if row is None:
        raise invalid(f"no product {code}", field)
    return row


@api.op(
    "GET",
    "/v1/merchants/{mid}/stock",
    "Stock per location: on hand, ordered, reserved, available",
    tag="erp",
    roles=READ,
    query=s.StockQuery,
    response=list[s.StockOut],
)
async def list_stock(req: Req) -> list[s.StockOut]:
    mid = req.path["mid"]
    q: s.StockQuery = req.query

    def go(c: Cursor) -> list:  # type: ignore[type-arg]
        require_merchant(c, mid)
        sql, params = f"SELECT {_STOCK_COLS} FROM erp_stock WHERE mid = ?", [mid]
        if q.location is not None:
            sql += " AND location = ?"
            params.append(q.location)
        if q.code is not None:
            sql += " AND code = ?"
            params.append(q.code)
        c.execute(sql + " ORDER BY location, code", params)
        return c.fetchall()

    return [_stock(r) for r in await req.db.run(go)]


@api.op(
    "PUT",
    "/v1/merchants/{mid}/stock/{location}/{code}",
    "Set an item's ordered and "
    "reserved quantities and its maximum and safety stock (on hand changes only by "
    "stock-takes, receipts and sales)",
    tag="erp",
    roles=ADMIN,
    body=s.StockIn,
    response=s.StockOut,
)
async def put_stock(req: Req) -> s.StockOut:
    mid, location, code = req.path["mid"], req.path["location"], req.path["code"]
    b: s.StockIn = req.body
    if not (0 < len(location) <= 32 and location.replace("-", "").replace("_", "").isalnum()):
        raise invalid("a location is 1-32 letters, digits, - or _", "location")
    if b.max_stock is not None and b.safety_stock is not None and b.safety_stock > b.max_stock:
        raise invalid("safety stock is above the maximum", "safety_stock")

    def go(c: Cursor) -> tuple:  # type: ignore[type-arg]
        require_merchant(c, mid)
        if _product_row(c, mid, code) is None:
            raise not_found(f"product {code}")
        ts = now_us()
        _move(c, mid, location, code, 0, "", "", ts)
        c.execute(
            "UPDATE erp_stock SET ordered = ?, reserved = ?, max_stock = ?,"
            " safety_stock = ?, updated_at = ? WHERE mid = ? AND location = ? AND code = ?",
            (b.ordered, b.reserved, b.max_stock, b.safety_stock, ts, mid, location, code),
        )
        return _stock_row(c, mid, location, code)  # type: ignore[return-value]

    return _stock(await req.db.run(go))


@api.op(
    "POST",
    "/v1/merchants/{mid}/stock-takes",
    "Record a stock-take: on hand becomes what was counted",
    tag="erp",
    roles=ADMIN,
    body=s.StockTakeIn,
    response=s.StockTakeOut,
    status=201,
)
async def stock_take(req: Req) -> s.StockTakeOut:
    mid = req.path["mid"]
    b: s.StockTakeIn = req.body
    take_id = _id()

    def go(c: Cursor) -> list[s.StockTakeLine]:
        require_merchant(c, mid)
        ts = now_us()
        out = []
        seen: set[str] = set()
        for i, line in enumerate(b.lines):
            _check_product(c, mid, line.code, f"lines[{i}].code")
            if line.code in seen:
                raise invalid(f"product {line.code} is counted twice", f"lines[{i}].code")
            seen.add(line.code)
            row = _stock_row(c, mid, b.location, line.code)
            before = row[2] if row else 0
            _move(c, mid, b.location, line.code, line.counted - before, "stock_take", take_id, ts)
            out.append(
                s.StockTakeLine(
                    code=line.code,
                    before=before,
                    counted=line.counted,
                    difference=line.counted - before,
                )
            )
        return out

    lines = await req.db.run(go)
    return s.StockTakeOut(take_id=take_id, location=b.location, lines=lines)


@api.op(
    "POST",
    "/v1/merchants/{mid}/stock-receipts",
    "Receive goods: on hand up, ordered down",
    tag="erp",
    roles=ADMIN,
    body=s.ReceiptIn,
    response=list[s.StockOut],
    status=201,
)
async def stock_receipt(req: Req) -> list[s.StockOut]:
    mid = req.path["mid"]
    b: s.ReceiptIn = req.body
    ref = _id()

    def go(c: Cursor) -> list:  # type: ignore[type-arg]
        require_merchant(c, mid)
        ts = now_us()
        for i, line in enumerate(b.lines):
            _check_product(c, mid, line.code, f"lines[{i}].code")
            _move(c, mid, b.location, line.code, line.quantity, "receipt", ref, ts)
            c.execute(
                "UPDATE erp_stock SET ordered = CASE WHEN ordered > ? THEN ordered - ?"
                " ELSE 0 END WHERE mid = ? AND location = ? AND code = ?",
                (line.quantity, line.quantity, mid, b.location, line.code),
            )
        return [_stock_row(c, mid, b.location, ln.code) for ln in b.lines]

    return [_stock(r) for r in await req.db.run(go)]


@api.op(
    "GET",
    "/v1/merchants/{mid}/stock/out-of-bounds",
    "Items above their maximum or below their safety stock",
    tag="erp",
    roles=READ,
    response=list[s.OutOfBounds],
)
async def out_of_bounds(req: Req) -> list[s.OutOfBounds]:
    mid = req.path["mid"]

    def go(c: Cursor) -> list:  # type: ignore[type-arg]
        require_merchant(c, mid)
        c.execute(
            "SELECT location, code, on_hand, max_stock, safety_stock FROM erp_stock"
            " WHERE mid = ? AND ((max_stock IS NOT NULL AND on_hand > max_stock)"
            " OR (safety_stock IS NOT NULL AND on_hand < safety_stock))"
            " ORDER BY location, code",
            (mid,),
        )
        return c.fetchall()

    return [
        s.OutOfBounds(
            location=r[0],
            code=r[1],
            on_hand=r[2],
            max_stock=r[3],
            safety_stock=r[4],
            problem="over_maximum" if r[3] is not None and r[2] > r[3] else "under_safety",
        )
        for r in await req.db.run(go)
    ]


def _dec(value: Fraction | None) -> str | None:
    return None if value is None else f"{float(value):.2f}"


@api.op(
    "GET",
    "/v1/merchants/{mid}/stock/turnover",
    "Turnover over a period: units sold over "
    "average stock ((opening + closing) / 2), and the days one turn takes",
    tag="erp",
    roles=READ,
    query=s.TurnoverQuery,
    response=list[s.TurnoverOut],
)
async def turnover(req: Req) -> list[s.TurnoverOut]:
    mid = req.path["mid"]
    q: s.TurnoverQuery = req.query
    check_range(q.since, q.until)
    start = day_start_us(q.since)
    end = day_start_us(q.until + dt.timedelta(days=1))
    days = (q.until - q.since).days + 1

    def go(c: Cursor) -> tuple[list, list]:  # type: ignore[type-arg]
        require_merchant(c, mid)
        sql, params = "SELECT location, code, on_hand FROM erp_stock WHERE mid = ?", [mid]
        if q.location is not None:
            sql += " AND location = ?"
            params.append(q.location)
        c.execute(sql + " ORDER BY location, code", params)
        items = c.fetchall()
        c.execute(
            "SELECT location, code, delta, reason, created_at FROM erp_stock_moves"
            " WHERE mid = ? AND created_at >= ?",
            (mid, start),
        )
        return items, c.fetchall()

    items, moves = await req.db.run(go)
    out = []
    for location, code, on_hand in items:
        mine = [m for m in moves if m[0] == location and m[1] == code]
        after_start = sum(m[2] for m in mine)
        after_end = sum(m[2] for m in mine if m[4] >= end)
        sold = -sum(m[2] for m in mine if m[4] < end and m[3] in ("sale", "return"))
        opening, closing = on_hand - after_start, on_hand - after_end
        avg = Fraction(opening + closing, 2)
        rate = Fraction(sold) / avg if avg > 0 and sold > 0 else None
        out.append(
            s.TurnoverOut(
                location=location,
                code=code,
                sold=sold,
                opening=opening,
                closing=closing,
                average_stock=f"{float(avg):.1f}",
                turnover_rate=_dec(rate),
                turnover_days=_dec(days / rate if rate else None),
            )
        )
    return out


# --- members ------------------------------------------------------------------

_MEMBER_COLS = "member_id, name, phone, email, birthday, points, created_at"


def _member(r: tuple) -> s.MemberOut:  # type: ignore[type-arg]
    return s.MemberOut(
        member_id=r[0],
        name=r[1],
        phone=r[2],
        email=r[3],
        birthday=dt.date.fromisoformat(r[4]) if r[4] else None,
        points=r[5],
        created_at_us=r[6],
    )


def _member_row(c: Cursor, mid: str, member_id: str) -> tuple | None:  # type: ignore[type-arg]
    c.execute(
        f"SELECT {_MEMBER_COLS} FROM erp_members WHERE mid = ? AND member_id = ?", (mid, member_id)
    )
    return c.fetchone()


@api.op(
    "GET",
    "/v1/merchants/{mid}/members",
    "A merchant's members",
    tag="erp",
    roles=READ,
    query=s.PageQuery,
    response=s.MemberList,
)
async def list_members(req: Req) -> s.MemberList:
    mid = req.path["mid"]
    q: s.PageQuery = req.query
    after = decode_cursor(q.cursor, (str,))[0] if q.cursor else ""

    def go(c: Cursor) -> list:  # type: ignore[type-arg]
        require_merchant(c, mid)
        c.execute(
            f"SELECT {_MEMBER_COLS} FROM erp_members WHERE mid = ? AND member_id > ?"
            " ORDER BY member_id LIMIT ?",
            (mid, after, q.limit + 1),
        )
        return c.fetchall()

    rows = await req.db.run(go)
    items = [_member(r) for r in rows[: q.limit]]
    nxt = encode_cursor([items[-1].member_id]) if len(rows) > q.limit else None
    return s.MemberList(items=items, next_cursor=nxt)


@api.op(
    "POST",
    "/v1/merchants/{mid}/members",
    "Enrol a member",
    tag="erp",
    roles=ADMIN,
    body=s.MemberIn,
    response=s.MemberOut,
    status=201,
)
async def create_member(req: Req) -> s.MemberOut:
    mid = req.path["mid"]
    b: s.MemberIn = req.body

    def go(c: Cursor) -> tuple:  # type: ignore[type-arg]
        require_merchant(c, mid)
        if _member_row(c, mid, b.member_id):
            raise conflict(f"member {b.member_id} exists", "member_id")
        ts = now_us()
        c.execute(
            "INSERT INTO erp_members (mid, member_id, name, phone, email, birthday, points,"
            " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?)",
            (
                mid,
                b.member_id,
                b.name,
                b.phone,
                b.email,
                b.birthday.isoformat() if b.birthday else None,
                ts,
                ts,
            ),
        )
        return _member_row(c, mid, b.member_id)  # type: ignore[return-value]

    return _member(await req.db.run(go))


# Before /members/{member_id}: the first matching route wins.
@api.op(
    "GET",
    "/v1/merchants/{mid}/members/birthdays",
    "Members whose birthday is in a month, by day",
    tag="erp",
    roles=READ,
    query=s.BirthdayQuery,
    response=list[s.MemberOut],
)
async def birthdays(req: Req) -> list[s.MemberOut]:
    mid = req.path["mid"]
    q: s.BirthdayQuery = req.query

    def go(c: Cursor) -> list:  # type: ignore[type-arg]
        require_merchant(c, mid)
        # ISO dates: characters 6-7 are the month on both SQLite and PostgreSQL.
        c.execute(
            f"SELECT {_MEMBER_COLS} FROM erp_members WHERE mid = ?"
            " AND SUBSTR(birthday, 6, 2) = ? ORDER BY SUBSTR(birthday, 9, 2), member_id",
            (mid, f"{q.month:02d}"),
        )
        return c.fetchall()

    return [_member(r) for r in await req.db.run(go)]


@api.op(
    "GET",
    "/v1/merchants/{mid}/members/{member_id}",
    "One member with points",
    tag="erp",
    roles=READ,
    response=s.MemberOut,
)
async def get_member(req: Req) -> s.MemberOut:
    mid, member_id = req.path["mid"], req.path["member_id"]
    row = await req.db.run(lambda c: _member_row(c, mid, member_id))
    if row is None:
        raise not_found(f"member {member_id}")
    return _member(row)


@api.op(
    "PATCH",
    "/v1/merchants/{mid}/members/{member_id}",
    "Change a member's profile (points change only through sales)",
    tag="erp",
    roles=ADMIN,
    body=s.MemberPatch,
    response=s.MemberOut,
)
async def patch_member(req: Req) -> s.MemberOut:
    mid, member_id = req.path["mid"], req.path["member_id"]
    b: s.MemberPatch = req.body
    changes = s.given(b)
    if changes.get("birthday") is not None:
        changes["birthday"] = changes["birthday"].isoformat()  # type: ignore[attr-defined]

    def go(c: Cursor) -> tuple:  # type: ignore[type-arg]
        if _member_row(c, mid, member_id) is None:
            raise not_found(f"member {member_id}")
        if changes:
            sets = ", ".join(f"{k} = ?" for k in changes)
            c.execute(
                f"UPDATE erp_members SET {sets}, updated_at = ? WHERE mid = ? AND member_id = ?",
                (*changes.values(), now_us(), mid, member_id),
            )
        return _member_row(c, mid, member_id)  # type: ignore[return-value]

    return _member(await req.db.run(go))


# --- sales documents ------------------------------------------------------------

_DOC_COLS = (
    "number, doc_date, doc_type, status, location, customer, tid, credit, rrn, total,"
    " tax_total, points, created_at"
)


def _tax(amount: int, rate_bp: int) -> int:
    """The tax inside a tax-inclusive amount, rounded half up; integers only."""
    denom = BASIS + rate_bp
    return (amount * rate_bp * 2 + denom) // (2 * denom)


def _payment(c: Cursor, mid: str, rrn: str) -> s.CardPayment | None:
    c.execute(
        "SELECT rrn, tid, amount, masked_pan, auth_code, created_at FROM journal"
        " WHERE rrn = ? AND mid = ? AND rc = '00' AND reversal = 0"
        " AND kind IN ('sale', 'completion', 'completion_advice')"
        " ORDER BY created_at LIMIT 1",
        (rrn, mid),
    )
    r = c.fetchone()
    if r is None:
        return None
    return s.CardPayment(
        rrn=r[0], tid=r[1], amount=r[2], masked_pan=r[3], auth_code=r[4], created_at_us=r[5]
    )


def _doc(c: Cursor, mid: str, r: tuple, full: bool) -> s.SalesDocOut:  # type: ignore[type-arg]
    lines: list[s.DocLineOut] = []
    payment = None
    if full:
        c.execute(
            "SELECT line_no, code, quantity, gift_quantity, price, tax_rate_bp, amount, tax"
            " FROM erp_sales_lines WHERE mid = ? AND number = ? ORDER BY line_no",
            (mid, r[0]),
        )
        lines = [
            s.DocLineOut(
                line_no=x[0],
                code=x[1],
                quantity=x[2],
                gift_quantity=x[3],
                price=x[4],
                tax_rate_bp=x[5],
                amount=x[6],
                tax=x[7],
            )
            for x in c.fetchall()
        ]
        payment = _payment(c, mid, r[8]) if r[8] else None
    return s.SalesDocOut(
        number=r[0],
        date=dt.date.fromisoformat(r[1]),
        type=r[2],
        status=r[3],
        location=r[4],
        customer=r[5],
        tid=r[6],
        credit=bool(r[7]),
        rrn=r[8] or None,
        total=r[9],
        tax_total=r[10],
        points=r[11],
        created_at_us=r[12],
        lines=lines,
        payment=payment,
    )


def _doc_row(c: Cursor, mid: str, number: str) -> tuple | None:  # type: ignore[type-arg]
    c.execute(f"SELECT {_DOC_COLS} FROM erp_sales_docs WHERE mid = ? AND number = ?", (mid, number))
    return c.fetchone()


@api.op(
    "POST",
    "/v1/merchants/{mid}/sales-documents",
    "Record a sales document; posted ones "
    "move stock and earn the member points for a card payment (RRN)",
    tag="erp",
    roles=ADMIN,
    body=s.SalesDocIn,
    response=s.SalesDocOut,
    status=201,
)
async def create_doc(req: Req) -> s.SalesDocOut:
    mid = req.path["mid"]
    b: s.SalesDocIn = req.body

    def go(c: Cursor) -> s.SalesDocOut:
        require_merchant(c, mid)
        if _doc_row(c, mid, b.number):
            raise conflict(f"document {b.number} exists", "number")
        if b.customer is not None and _member_row(c, mid, b.customer) is None:
            raise invalid(f"no member {b.customer}", "customer")
        if b.tid is not None:
            c.execute("SELECT 1 FROM terminals WHERE tid = ? AND mid = ?", (b.tid, mid))
            if c.fetchone() is None:
                raise invalid(f"no terminal {b.tid} of this merchant", "tid")
        payment = None
        if b.rrn is not None:
            payment = _payment(c, mid, b.rrn)
            if payment is None:
                raise invalid("no approved card payment of this merchant has this RRN", "rrn")
            c.execute("SELECT number FROM erp_sales_docs WHERE mid = ? AND rrn = ?", (mid, b.rrn))
            other = c.fetchone()
            if other:
                raise conflict(f"the payment already paid document {other[0]}", "rrn")
        rows = []
        for i, line in enumerate(b.lines):
            p = _check_product(c, mid, line.code, f"lines[{i}].code")
            if line.quantity == 0 and line.gift_quantity == 0:
                raise invalid("a line needs a quantity or a gift quantity", f"lines[{i}].quantity")
            price = p[3] if line.price is None else line.price
            rate = p[4] if line.tax_rate_bp is None else line.tax_rate_bp
            amount = line.quantity * price
            rows.append(
                (
                    i + 1,
                    line.code,
                    line.quantity,
                    line.gift_quantity,
                    price,
                    rate,
                    amount,
                    _tax(amount, rate),
                )
            )
        total = sum(r[6] for r in rows)
        tax_total = sum(r[7] for r in rows)
        posted = b.status == "posted"
        points = 0
        if posted and b.type == "sale" and b.customer and payment and payment.amount:
            c.execute(
                "SELECT earns_points FROM payment_methods WHERE mid = ? AND method = 'bankcard'",
                (mid,),
            )
            flag = c.fetchone()
            if flag and flag[0]:
                points = payment.amount // POINT_UNIT
        ts = now_us()
        c.execute(
            f"INSERT INTO erp_sales_docs (mid, {_DOC_COLS}) VALUES"
            " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                mid,
                b.number,
                b.date.isoformat(),
                b.type,
                b.status,
                b.location,
                b.customer,
                b.tid,
                int(b.credit),
                b.rrn or "",
                total,
                tax_total,
                points,
                ts,
            ),
        )
        c.executemany(
            "INSERT INTO erp_sales_lines (mid, number, line_no, code, quantity,"
            " gift_quantity, price, tax_rate_bp, amount, tax)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(mid, b.number, *r) for r in rows],
        )
        if posted:
            sign = -1 if b.type == "sale" else 1
            for r in rows:
                _move(c, mid, b.location, r[1], sign * (r[2] + r[3]), b.type, b.number, ts)
        if points:
            c.execute(
                "UPDATE erp_members SET points = points + ?, updated_at = ?"
                " WHERE mid = ? AND member_id = ?",
                (points, ts, mid, b.customer),
            )
        return _doc(c, mid, _doc_row(c, mid, b.number), True)  # type: ignore[arg-type]

    return await req.db.run(go)


@api.op(
    "GET",
    "/v1/merchants/{mid}/sales-documents",
    "A merchant's sales documents, newest number first",
    tag="erp",
    roles=READ,
    query=s.SalesDocQuery,
    response=s.SalesDocList,
)
async def list_docs(req: Req) -> s.SalesDocList:
    mid = req.path["mid"]
    q: s.SalesDocQuery = req.query

    def go(c: Cursor) -> tuple[list, list[s.SalesDocOut]]:  # type: ignore[type-arg]
        require_merchant(c, mid)
        sql, params = f"SELECT {_DOC_COLS} FROM erp_sales_docs WHERE mid = ?", [mid]
        for cond, value in (
            ("doc_date >= ?", q.since and q.since.isoformat()),
            ("doc_date <= ?", q.until and q.until.isoformat()),
            ("status = ?", q.status),
            ("customer = ?", q.customer),
            ("rrn = ?", q.rrn),
        ):
            if value is not None:
                sql += f" AND {cond}"
                params.append(value)
        if q.cursor is not None:
            sql += " AND number < ?"
            params.append(decode_cursor(q.cursor, (str,))[0])
        c.execute(sql + " ORDER BY number DESC LIMIT ?", (*params, q.limit + 1))
        rows = c.fetchall()
        return rows, [_doc(c, mid, r, False) for r in rows[: q.limit]]

    rows, items = await req.db.run(go)
    nxt = encode_cursor([items[-1].number]) if len(rows) > q.limit else None
    return s.SalesDocList(items=items, next_cursor=nxt)


@api.op(
    "GET",
    "/v1/merchants/{mid}/sales-documents/{number}",
    "One sales document with its lines and the card payment that paid it",
    tag="erp",
    roles=READ,
    response=s.SalesDocOut,
)
async def get_doc(req: Req) -> s.SalesDocOut:
    mid, number = req.path["mid"], req.path["number"]

    def go(c: Cursor) -> s.SalesDocOut:
        row = _doc_row(c, mid, number)
        if row is None:
            raise not_found(f"document {number}")
        return _doc(c, mid, row, True)

    return await req.db.run(go)
