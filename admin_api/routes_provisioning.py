"""Provisioning: merchants, terminals (TMK injection), on-us cards, payment
methods, API tokens.

Each write is one transaction on the switch database that also bumps
``data_version``, so a running switch (this process or another) serves the
change within its reload interval; in-process the reference data is reloaded
before the answer. Ledger accounts are created first, through the ledger's
API: their ids derive from the business key, so a retried request finds
them and changes nothing (a failed second step leaves nothing a retry cannot
complete).
"""

from __future__ import annotations

import logging

from hsm.client import TMK
from hsm.codec import HsmCommandError
from hsm.pool import HsmUnavailable
from switchd.context import luhn_ok, mask_pan
from switchd.db import Cursor
from switchd.ledger import (
    AccountKind,
    CreateAccount,
    LedgerError,
    Transfer,
    card_account_id,
    merchant_account_id,
    suspense_account_id,
    transfer_id,
)
from switchd.store import now_us

from . import schemas as s
from .api import ADMIN, READ, Api, Req
from .auth import hash_token, new_token
from .common import bump_version, decode_cursor, encode_cursor, require_merchant
from .context import AdminContext
from .errors import ApiError, conflict, invalid, not_found

log = logging.getLogger("admin_api.provisioning")
api = Api()

_MERCHANT_COLS = "mid, name, mcc, fee_bp, min_amount, max_amount, status, permitted, updated_at"


def _merchant(r: tuple) -> s.MerchantOut:  # type: ignore[type-arg]
    return s.MerchantOut(
        mid=r[0],
        name=r[1],
        mcc=r[2],
        fee_bp=r[3],
        min_amount=r[4],
        max_amount=r[5],
        status=r[6],
        permitted=[k for k in r[7].split(",") if k],
        updated_at_us=r[8],
    )


def _check_limits(lo: int | None, hi: int | None) -> None:
    if lo is not None and hi is not None and lo > hi:
        raise invalid("min_amount is above max_amount", "min_amount")


def unavailable(what: str) -> ApiError:
    return ApiError(503, "unavailable", what)


async def _ledger(ctx: AdminContext, ops: list, what: str) -> None:  # type: ignore[type-arg]
    try:
        results = await ctx.ledger.submit_linked(ops)
    except LedgerError as exc:
        raise unavailable(f"the ledger did not commit: {exc}") from None
    bad = [r for r in results if not r.ok]
    if bad:
        raise conflict(f"the ledger refused {what}: {bad[0].code}")


# --- merchants ----------------------------------------------------------------


@api.op(
    "GET",
    "/v1/merchants",
    "List merchants",
    tag="merchants",
    roles=READ,
    query=s.PageQuery,
    response=s.MerchantList,
)
async def list_merchants(req: Req) -> s.MerchantList:
    q: s.PageQuery = req.query
    after = decode_cursor(q.cursor, (str,))[0] if q.cursor else ""
    only = req.scope_mid(None)
    sql = f"SELECT {_MERCHANT_COLS} FROM merchants WHERE mid > ?"
    params: list = [after]  # type: ignore[type-arg]
    if only is not None:
        sql += " AND mid = ?"
        params.append(only)
    rows = await req.db.fetchall(sql + " ORDER BY mid LIMIT ?", (*params, q.limit + 1))
    items = [_merchant(r) for r in rows[: q.limit]]
    nxt = encode_cursor([items[-1].mid]) if len(rows) > q.limit else None
    return s.MerchantList(items=items, next_cursor=nxt)


@api.op(
    "POST",
    "/v1/merchants",
    "Create a merchant (with its settlement account and a default bank-card payment method)",
    tag="merchants",
    roles=ADMIN,
    body=s.MerchantIn,
    response=s.MerchantOut,
    status=201,
)
async def create_merchant(req: Req) -> s.MerchantOut:
    b: s.MerchantIn = req.body
    _check_limits(b.min_amount, b.max_amount)
    ctx = req.ctx
    if await ctx.db.fetchone("SELECT 1 FROM merchants WHERE mid = ?", (b.mid,)):
        raise conflict(f"merchant {b.mid} exists", "mid")
    await _ledger(
        ctx,
        [CreateAccount(merchant_account_id(b.mid), AccountKind.MERCHANT, ctx.currency, b.mid)],
        "the settlement account",
    )
    ts = now_us()

    def go(c: Cursor) -> tuple:  # type: ignore[type-arg]
        c.execute("SELECT 1 FROM merchants WHERE mid = ?", (b.mid,))
        if c.fetchone():
            raise conflict(f"merchant {b.mid} exists", "mid")
        c.execute(
            "INSERT INTO merchants (mid, name, mcc, fee_bp, min_amount, max_amount, status,"
            " permitted, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                b.mid,
                b.name,
                b.mcc,
                b.fee_bp,
                b.min_amount,
                b.max_amount,
                b.status,
                ",".join(sorted(set(b.permitted))),
                ts,
            ),
        )
        c.execute(
            "INSERT INTO payment_methods (mid, method, updated_at) VALUES (?, 'bankcard', ?)"
            " ON CONFLICT (mid, method) DO NOTHING",
            (b.mid, ts),
        )
        bump_version(c)
        c.execute(f"SELECT {_MERCHANT_COLS} FROM merchants WHERE mid = ?", (b.mid,))
        return c.fetchone()  # type: ignore[return-value]

    row = await ctx.db.run(go)
    await ctx.reference_data_changed()
    return _merchant(row)


@api.op(
    "GET",
    "/v1/merchants/{mid}",
    "One merchant",
    tag="merchants",
    roles=READ,
    response=s.MerchantOut,
)
async def get_merchant(req: Req) -> s.MerchantOut:
    mid = req.path["mid"]
    row = await req.db.fetchone(f"SELECT {_MERCHANT_COLS} FROM merchants WHERE mid = ?", (mid,))
    if row is None:
        raise not_found(f"merchant {mid}")
    return _merchant(row)


@api.op(
    "PATCH",
    "/v1/merchants/{mid}",
    "Change a merchant's name, MCC, fee, limits, status or permitted kinds",
    tag="merchants",
    roles=ADMIN,
    body=s.MerchantPatch,
    response=s.MerchantOut,
)
async def patch_merchant(req: Req) -> s.MerchantOut:
    mid = req.path["mid"]
    b: s.MerchantPatch = req.body
    changes = s.given(b)
    if "permitted" in changes:
        changes["permitted"] = ",".join(sorted(set(changes["permitted"])))

    def go(c: Cursor) -> tuple:  # type: ignore[type-arg]
        c.execute("SELECT min_amount, max_amount FROM merchants WHERE mid = ?", (mid,))
        cur = c.fetchone()
        if cur is None:
            raise not_found(f"merchant {mid}")
        _check_limits(changes.get("min_amount", cur[0]), changes.get("max_amount", cur[1]))
        if changes:
            sets = ", ".join(f"{k} = ?" for k in changes)
            c.execute(
                f"UPDATE merchants SET {sets}, updated_at = ? WHERE mid = ?",
                (*changes.values(), now_us(), mid),
            )
            bump_version(c)
        c.execute(f"SELECT {_MERCHANT_COLS} FROM merchants WHERE mid = ?", (mid,))
        return c.fetchone()  # type: ignore[return-value]

    row = await req.db.run(go)
    if changes:
        await req.ctx.reference_data_changed()
    return _merchant(row)


# --- terminals ----------------------------------------------------------------

_TERMINAL_SELECT = (
    "SELECT t.tid, t.mid, t.status, t.updated_at, s.signed_on_at FROM terminals t"
    " LEFT JOIN sessions s ON s.tid = t.tid"
)


def _terminal(r: tuple, kcv: str | None = None) -> s.TerminalOut:  # type: ignore[type-arg]
    return s.TerminalOut(
        tid=r[0], mid=r[1], status=r[2], updated_at_us=r[3], signed_on_at_us=r[4], tmk_kcv=kcv
    )


async def _import_tmk(ctx: AdminContext, key: str, kcv: str | None) -> tuple[str, str]:
    """A6: the TMK from under the KEK (the HSM's ZMK) to under the LMK, and its KCV."""
    if ctx.hsm is None or not ctx.kek_zmk_lmk:
        raise unavailable("no HSM is configured for key injection")
    key = key.upper()
    if len(key) == 32:
        key = "X" + key  # plain ECB under the KEK, as key ceremonies print it
    try:
        imported = await ctx.hsm.import_key(TMK, ctx.kek_zmk_lmk, key)
    except HsmCommandError as exc:
        raise invalid(f"the HSM refused the key (error {exc.code})", "tmk_under_kek") from None
    except HsmUnavailable:
        raise unavailable("no HSM available") from None
    got = imported.kcv[:6].upper()
    if kcv is not None and kcv.upper() != got:
        raise invalid("the key check value does not match the key", "kcv")
    return imported.under_lmk, got


@api.op(
    "GET",
    "/v1/terminals",
    "List terminals",
    tag="terminals",
    roles=READ,
    query=s.TerminalQuery,
    response=s.TerminalList,
)
async def list_terminals(req: Req) -> s.TerminalList:
    q: s.TerminalQuery = req.query
    after = decode_cursor(q.cursor, (str,))[0] if q.cursor else ""
    mid = req.scope_mid(q.mid)
    sql, params = _TERMINAL_SELECT + " WHERE t.tid > ?", [after]
    if mid is not None:
        sql += " AND t.mid = ?"
        params.append(mid)
    rows = await req.db.fetchall(sql + " ORDER BY t.tid LIMIT ?", (*params, q.limit + 1))
    items = [_terminal(r) for r in rows[: q.limit]]
    nxt = encode_cursor([items[-1].tid]) if len(rows) > q.limit else None
    return s.TerminalList(items=items, next_cursor=nxt)


@api.op(
    "POST",
    "/v1/terminals",
    "Create a terminal, injecting its TMK (encrypted under the switch KEK; never returned)",
    tag="terminals",
    roles=ADMIN,
    body=s.TerminalIn,
    response=s.TerminalOut,
    status=201,
)
async def create_terminal(req: Req) -> s.TerminalOut:
    b: s.TerminalIn = req.body
    ctx = req.ctx

    def check(c: Cursor) -> None:
        c.execute("SELECT 1 FROM terminals WHERE tid = ?", (b.tid,))
        if c.fetchone():
            raise conflict(f"terminal {b.tid} exists", "tid")
        c.execute("SELECT 1 FROM merchants WHERE mid = ?", (b.mid,))
        if c.fetchone() is None:
            raise invalid(f"no merchant {b.mid}", "mid")

    await ctx.db.run(check)
    tmk_lmk, kcv = await _import_tmk(ctx, b.tmk_under_kek, b.kcv)

    def go(c: Cursor) -> tuple:  # type: ignore[type-arg]
        check(c)
        c.execute(
            "INSERT INTO terminals (tid, mid, status, tmk_lmk, updated_at) VALUES (?, ?, ?, ?, ?)",
            (b.tid, b.mid, b.status, tmk_lmk, now_us()),
        )
        bump_version(c)
        c.execute(_TERMINAL_SELECT + " WHERE t.tid = ?", (b.tid,))
        return c.fetchone()  # type: ignore[return-value]

    row = await ctx.db.run(go)
    await ctx.reference_data_changed()
    log.info("terminal %s created for merchant %s (TMK KCV %s)", b.tid, b.mid, kcv)
    return _terminal(row, kcv)


@api.op(
    "GET",
    "/v1/terminals/{tid}",
    "One terminal",
    tag="terminals",
    roles=READ,
    response=s.TerminalOut,
)
async def get_terminal(req: Req) -> s.TerminalOut:
    tid = req.path["tid"]
    row = await req.db.fetchone(_TERMINAL_SELECT + " WHERE t.tid = ?", (tid,))
    if row is None or (
        req.principal and req.principal.role == "merchant" and row[1] != req.principal.mid
    ):
        # Another merchant's terminal is "not found", not "forbidden": no enumeration.
        raise not_found(f"terminal {tid}")
    return _terminal(row)


@api.op(
    "PATCH",
    "/v1/terminals/{tid}",
    "Change a terminal's status or inject a new TMK (the terminal must then sign on again)",
    tag="terminals",
    roles=ADMIN,
    body=s.TerminalPatch,
    response=s.TerminalOut,
)
async def patch_terminal(req: Req) -> s.TerminalOut:
    tid = req.path["tid"]
    b: s.TerminalPatch = req.body
    ctx = req.ctx
    if b.kcv is not None and b.tmk_under_kek is None:
        raise invalid("a kcv goes with a tmk_under_kek", "kcv")
    if not await ctx.db.fetchone("SELECT 1 FROM terminals WHERE tid = ?", (tid,)):
        raise not_found(f"terminal {tid}")
    tmk = await _import_tmk(ctx, b.tmk_under_kek, b.kcv) if b.tmk_under_kek else None

    def go(c: Cursor) -> tuple:  # type: ignore[type-arg]
        c.execute("SELECT 1 FROM terminals WHERE tid = ?", (tid,))
        if c.fetchone() is None:
            raise not_found(f"terminal {tid}")
        if b.status is not None:
            c.execute(
                "UPDATE terminals SET status = ?, updated_at = ? WHERE tid = ?",
                (b.status, now_us(), tid),
            )
        if tmk is not None:
            c.execute(
                "UPDATE terminals SET tmk_lmk = ?, updated_at = ? WHERE tid = ?",
                (tmk[0], now_us(), tid),
            )
            # Working keys came from the old TMK: the terminal signs on again.
            c.execute("DELETE FROM sessions WHERE tid = ?", (tid,))
        if b.status is not None or tmk is not None:
            bump_version(c)
        c.execute(_TERMINAL_SELECT + " WHERE t.tid = ?", (tid,))
        return c.fetchone()  # type: ignore[return-value]

    row = await ctx.db.run(go)
    if tmk is not None and ctx.store is not None:
        ctx.store.sessions.pop(tid, None)
    await ctx.reference_data_changed()
    return _terminal(row, tmk[1] if tmk else None)


# --- cards --------------------------------------------------------------------

_CARD_COLS = "card_id, masked_pan, bin, expiry, status, pin_failures, updated_at"


def _card_id(req: Req, pan: str, field: str = "pan") -> int:
    if not (pan.isdigit() and 13 <= len(pan) <= 19):
        raise invalid("a PAN is 13-19 digits", field)
    return card_account_id(pan, req.ctx.pan_key)


async def _card_out(ctx: AdminContext, row: tuple) -> s.CardOut:  # type: ignore[type-arg]
    acct = await ctx.ledger.account(int(row[0]))
    if acct is None:
        raise not_found("the card's account")
    return s.CardOut(
        masked_pan=row[1],
        bin=row[2],
        expiry=row[3],
        status=row[4],
        pin_failures=row[5],
        balance=acct.balance,
        available=acct.available,
        credit_limit=acct.credit_limit or 0,
        currency=acct.currency,
        updated_at_us=row[6],
    )


@api.op(
    "POST",
    "/v1/cards",
    "Issue an on-us card: its PIN goes to the HSM (PVV), its account "
    "to the ledger with an optional opening balance from the suspense account",
    tag="cards",
    roles=ADMIN,
    body=s.CardIn,
    response=s.CardOut,
    status=201,
)
async def create_card(req: Req) -> s.CardOut:
    b: s.CardIn = req.body
    ctx = req.ctx
    if not luhn_ok(b.pan):
        raise invalid("the PAN fails the Luhn check", "pan")
    issuer = next((i for i in ctx.cfg.issuers if b.pan.startswith(i.bin) and i.on_us), None)
    if issuer is None:
        raise invalid("the PAN is not in an on-us BIN", "pan")
    cid = _card_id(req, b.pan)
    if await ctx.db.fetchone("SELECT 1 FROM cards WHERE card_id = ?", (str(cid),)):
        raise conflict("the card exists", "pan")
    row = await ctx.db.fetchone("SELECT pvk_lmk FROM issuer_keys WHERE bin = ?", (issuer.bin,))
    pvk = row[0] if row else issuer.pvk
    if not pvk:
        raise conflict(f"no PIN verification key for BIN {issuer.bin}", "pan")
    if ctx.hsm is None:
        raise unavailable("no HSM is configured for PIN provisioning")
    account12 = b.pan[-13:-1]
    try:
        pin_lmk = await ctx.hsm.encrypt_pin(b.pin, account12)
        pvv = await ctx.hsm.generate_pvv(pvk, pin_lmk, account12, str(issuer.pvki))
    except HsmCommandError as exc:
        raise invalid(f"the HSM refused the PIN (error {exc.code})", "pin") from None
    except HsmUnavailable:
        raise unavailable("no HSM available") from None
    masked = mask_pan(b.pan)
    cur = ctx.currency
    ops: list = [  # type: ignore[type-arg]
        CreateAccount(cid, AccountKind.CARDHOLDER, cur, masked, b.credit_limit or None)
    ]
    if b.opening_balance:
        ops.insert(
            0, CreateAccount(suspense_account_id(cur), AccountKind.SUSPENSE, cur, "demo funding")
        )
        ops.append(
            Transfer(
                transfer_id("ADMIN", 0, 0, f"opening-{cid}"),
                suspense_account_id(cur),
                cid,
                b.opening_balance,
                "funding",
            )
        )
    await _ledger(ctx, ops, "the card account")

    def go(c: Cursor) -> tuple:  # type: ignore[type-arg]
        c.execute("SELECT 1 FROM cards WHERE card_id = ?", (str(cid),))
        if c.fetchone():
            raise conflict("the card exists", "pan")
        c.execute(
            "INSERT INTO cards (card_id, masked_pan, bin, expiry, status, pvv, pvki,"
            " pin_failures, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?)",
            (str(cid), masked, issuer.bin, b.expiry, b.status, pvv, issuer.pvki, now_us()),
        )
        bump_version(c)
        c.execute(f"SELECT {_CARD_COLS} FROM cards WHERE card_id = ?", (str(cid),))
        return c.fetchone()  # type: ignore[return-value]

    row = await ctx.db.run(go)
    await ctx.reference_data_changed()
    return await _card_out(ctx, row)


@api.op(
    "GET",
    "/v1/cards/{pan}",
    "An on-us card: status, balance and available (minor units)",
    tag="cards",
    roles=ADMIN,
    response=s.CardOut,
)
async def get_card(req: Req) -> s.CardOut:
    cid = _card_id(req, req.path["pan"])
    row = await req.db.fetchone(f"SELECT {_CARD_COLS} FROM cards WHERE card_id = ?", (str(cid),))
    if row is None:
        raise not_found("card")
    return await _card_out(req.ctx, row)


@api.op(
    "PATCH",
    "/v1/cards/{pan}",
    "Change a card's status or clear its PIN tries (the balance is the ledger's, read-only)",
    tag="cards",
    roles=ADMIN,
    body=s.CardPatch,
    response=s.CardOut,
)
async def patch_card(req: Req) -> s.CardOut:
    cid = str(_card_id(req, req.path["pan"]))
    b: s.CardPatch = req.body

    def go(c: Cursor) -> tuple:  # type: ignore[type-arg]
        c.execute("SELECT 1 FROM cards WHERE card_id = ?", (cid,))
        if c.fetchone() is None:
            raise not_found("card")
        if b.status is not None:
            c.execute(
                "UPDATE cards SET status = ?, updated_at = ? WHERE card_id = ?",
                (b.status, now_us(), cid),
            )
        if b.reset_pin_failures:
            c.execute(
                "UPDATE cards SET pin_failures = 0, updated_at = ? WHERE card_id = ?",
                (now_us(), cid),
            )
        if b.status is not None or b.reset_pin_failures:
            bump_version(c)
        c.execute(f"SELECT {_CARD_COLS} FROM cards WHERE card_id = ?", (cid,))
        return c.fetchone()  # type: ignore[return-value]

    row = await req.db.run(go)
    await req.ctx.reference_data_changed()
    return await _card_out(req.ctx, row)


# --- payment methods ------------------------------------------------------------

_PM_COLS = "mid, method, " + ", ".join(s.FLAGS) + ", updated_at"


def _pm(r: tuple) -> s.PaymentMethodOut:  # type: ignore[type-arg]
    flags = {f: bool(v) for f, v in zip(s.FLAGS, r[2:-1], strict=True)}
    return s.PaymentMethodOut(mid=r[0], method=r[1], updated_at_us=r[-1], **flags)


@api.op(
    "GET",
    "/v1/merchants/{mid}/payment-methods",
    "A merchant's payment methods and flags",
    tag="erp",
    roles=READ,
    response=list[s.PaymentMethodOut],
)
async def list_payment_methods(req: Req) -> list[s.PaymentMethodOut]:
    mid = req.path["mid"]

    def go(c: Cursor) -> list:  # type: ignore[type-arg]
        require_merchant(c, mid)
        c.execute(f"SELECT {_PM_COLS} FROM payment_methods WHERE mid = ? ORDER BY method", (mid,))
        return c.fetchall()

    return [_pm(r) for r in await req.db.run(go)]


@api.op(
    "GET",
    "/v1/merchants/{mid}/payment-methods/{method}",
    "One payment method",
    tag="erp",
    roles=READ,
    response=s.PaymentMethodOut,
)
async def get_payment_method(req: Req) -> s.PaymentMethodOut:
    mid, method = req.path["mid"], req.path["method"]
    row = await req.db.fetchone(
        f"SELECT {_PM_COLS} FROM payment_methods WHERE mid = ? AND method = ?", (mid, method)
    )
    if row is None:
        raise not_found(f"payment method {method} of merchant {mid}")
    return _pm(row)


@api.op(
    "PUT",
    "/v1/merchants/{mid}/payment-methods/{method}",
    "Set a payment method's flags "
    "(the switch enforces allow_sale/allow_refund of `bankcard` at once)",
    tag="erp",
    roles=ADMIN,
    body=s.PaymentMethodIn,
    response=s.PaymentMethodOut,
)
async def put_payment_method(req: Req) -> s.PaymentMethodOut:
    mid, method = req.path["mid"], req.path["method"]
    b: s.PaymentMethodIn = req.body
    if not (1 <= len(method) <= 32 and method.replace("_", "").replace("-", "").isalnum()):
        raise invalid("a method name is 1-32 letters, digits, - or _", "method")
    values = [int(getattr(b, f)) for f in s.FLAGS]

    def go(c: Cursor) -> tuple:  # type: ignore[type-arg]
        require_merchant(c, mid)
        cols = ", ".join(s.FLAGS)
        marks = ", ".join("?" for _ in s.FLAGS)
        updates = ", ".join(f"{f} = excluded.{f}" for f in s.FLAGS)
        c.execute(
            f"INSERT INTO payment_methods (mid, method, {cols}, updated_at)"
            f" VALUES (?, ?, {marks}, ?) ON CONFLICT (mid, method) DO UPDATE SET {updates},"
            " updated_at = excluded.updated_at",
            (mid, method, *values, now_us()),
        )
        bump_version(c)
        c.execute(
            f"SELECT {_PM_COLS} FROM payment_methods WHERE mid = ? AND method = ?", (mid, method)
        )
        return c.fetchone()  # type: ignore[return-value]

    row = await req.db.run(go)
    await req.ctx.reference_data_changed()
    return _pm(row)


# --- tokens -------------------------------------------------------------------


@api.op(
    "GET",
    "/v1/tokens",
    "API tokens (names and roles; never the tokens)",
    tag="tokens",
    roles=ADMIN,
    response=list[s.TokenOut],
)
async def list_tokens(req: Req) -> list[s.TokenOut]:
    rows = await req.db.fetchall("SELECT name, role, mid, created_at FROM api_tokens ORDER BY name")
    return [s.TokenOut(name=r[0], role=r[1], mid=r[2], created_at_us=r[3]) for r in rows]


@api.op(
    "POST",
    "/v1/tokens",
    "Issue a token (shown once; stored hashed)",
    tag="tokens",
    roles=ADMIN,
    body=s.TokenIn,
    response=s.TokenCreated,
    status=201,
)
async def create_token(req: Req) -> s.TokenCreated:
    b: s.TokenIn = req.body
    if (b.role == "merchant") != (b.mid is not None):
        raise invalid("a merchant token needs a mid; other roles take none", "mid")
    token = new_token()
    ts = now_us()

    def go(c: Cursor) -> None:
        c.execute("SELECT 1 FROM api_tokens WHERE name = ?", (b.name,))
        if c.fetchone():
            raise conflict(f"token {b.name} exists", "name")
        if b.mid is not None:
            require_merchant(c, b.mid)
        c.execute(
            "INSERT INTO api_tokens (name, token_hash, role, mid, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (b.name, hash_token(token), b.role, b.mid, ts),
        )

    await req.db.run(go)
    return s.TokenCreated(name=b.name, role=b.role, mid=b.mid, created_at_us=ts, token=token)


@api.op(
    "DELETE",
    "/v1/tokens/{name}",
    "Revoke a token (effective within 5 s)",
    tag="tokens",
    roles=ADMIN,
)
async def delete_token(req: Req) -> None:
    name = req.path["name"]

    def go(c: Cursor) -> bool:
        c.execute("SELECT 1 FROM api_tokens WHERE name = ?", (name,))
        if c.fetchone() is None:
            return False
        c.execute("DELETE FROM api_tokens WHERE name = ?", (name,))
        return True

    if not await req.db.run(go):
        raise not_found(f"token {name}")
    req.ctx.token_cache.clear()
