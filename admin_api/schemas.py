"""Request and response bodies: typed msgspec Structs, the single source of
validation and of the OpenAPI components.

Request Structs forbid unknown fields (a typo is an error, not a silent
no-op). Money is an integer number of minor units, rates are basis points
(38 = 0.38 %), times are microseconds since the epoch (``*_us``), dates are
``YYYY-MM-DD``.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

# --- constrained scalars -------------------------------------------------------

Mid = Annotated[str, Meta(pattern=r"^[0-9]{15}$", description="merchant ID, 15 digits")]
Tid = Annotated[str, Meta(pattern=r"^[0-9A-Za-z]{8}$", description="terminal ID, 8 characters")]
Mcc = Annotated[str, Meta(pattern=r"^[0-9]{4}$", description="merchant category code")]
Name = Annotated[str, Meta(min_length=1, max_length=100)]
Code = Annotated[str, Meta(pattern=r"^[0-9A-Za-z._-]{1,32}$")]
Text = Annotated[str, Meta(max_length=200)]
Money = Annotated[int, Meta(ge=0, le=10**15, description="minor units")]
Basis = Annotated[int, Meta(ge=0, le=10_000, description="basis points")]
Qty = Annotated[int, Meta(ge=0, le=10**9, description="whole units")]
SignedQty = Annotated[int, Meta(ge=-(10**9), le=10**9)]
Rrn = Annotated[str, Meta(pattern=r"^[0-9A-Za-z]{12}$", description="retrieval reference number")]
Pan = Annotated[str, Meta(pattern=r"^[0-9]{13,19}$")]
Expiry = Annotated[str, Meta(pattern=r"^[0-9]{4}$", description="YYMM")]
Pin = Annotated[str, Meta(pattern=r"^[0-9]{4,12}$")]
KeyUnderKek = Annotated[
    str,
    Meta(
        pattern=r"^[UX]?[0-9A-Fa-f]{32}$",
        description="the TMK encrypted under the switch KEK (Thales U/X scheme or 32 hex)",
    ),
]
Kcv = Annotated[str, Meta(pattern=r"^[0-9A-Fa-f]{6}$")]
Points = Annotated[int, Meta(ge=0, le=10**12)]
Month = Annotated[int, Meta(ge=1, le=12)]
Limit = Annotated[int, Meta(ge=1, le=500)]

MerchantStatus = Literal["active", "suspended", "closed"]
TerminalStatus = Literal["active", "suspended", "closed"]
CardStatus = Literal["active", "blocked", "lost", "closed"]
TxnKind = Literal[
    "balance",
    "preauth",
    "preauth_cancel",
    "completion",
    "completion_advice",
    "completion_void",
    "sale",
    "void",
    "refund",
    "reversal",
]
Role = Literal["admin", "merchant", "sre"]


class In(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base of request bodies and query strings."""


def given(patch: msgspec.Struct) -> dict[str, object]:
    """The fields a PATCH body set (null included where the type allows it)."""
    return {f: v for f in patch.__struct_fields__ if (v := getattr(patch, f)) is not UNSET}


class Out(msgspec.Struct, kw_only=True):
    """Base of response bodies."""


class Page(Out, kw_only=True):
    next_cursor: str | None


# --- merchants ----------------------------------------------------------------


class MerchantIn(In, kw_only=True):
    mid: Mid
    name: Name
    mcc: Mcc = "5411"
    fee_bp: Basis = 0
    min_amount: Money | None = None
    max_amount: Money | None = None
    status: MerchantStatus = "active"
    permitted: list[TxnKind] = []


class MerchantPatch(In, kw_only=True):
    """Absent fields stay as they are; a null limit removes it (the default applies)."""

    name: Name | UnsetType = UNSET
    mcc: Mcc | UnsetType = UNSET
    fee_bp: Basis | UnsetType = UNSET
    min_amount: Money | UnsetType | None = UNSET
    max_amount: Money | UnsetType | None = UNSET
    status: MerchantStatus | UnsetType = UNSET
    permitted: list[TxnKind] | UnsetType = UNSET


class MerchantOut(Out, kw_only=True):
    mid: str
    name: str
    mcc: str
    fee_bp: int
    min_amount: int | None
    max_amount: int | None
    status: str
    permitted: list[str]
    updated_at_us: int


class MerchantList(Page, kw_only=True):
    items: list[MerchantOut]


class PageQuery(In, kw_only=True):
    limit: Limit = 100
    cursor: str | None = None


# --- terminals ----------------------------------------------------------------


class TerminalIn(In, kw_only=True):
    tid: Tid
    mid: Mid
    status: TerminalStatus = "active"
    tmk_under_kek: KeyUnderKek
    kcv: Kcv | None = None


class TerminalPatch(In, kw_only=True):
    status: TerminalStatus | None = None
    tmk_under_kek: KeyUnderKek | None = None
    kcv: Kcv | None = None


class TerminalOut(Out, kw_only=True):
    tid: str
    mid: str
    status: str
    tmk_kcv: str | None = None  # only right after an injection, from the HSM
    signed_on_at_us: int | None
    updated_at_us: int


class TerminalList(Page, kw_only=True):
    items: list[TerminalOut]


class TerminalQuery(PageQuery, kw_only=True):
    mid: Mid | None = None


# --- cards --------------------------------------------------------------------


class CardIn(In, kw_only=True):
    pan: Pan
    expiry: Expiry
    pin: Pin
    status: CardStatus = "active"
    credit_limit: Money = 0
    opening_balance: Money = 0


class CardPatch(In, kw_only=True):
    status: CardStatus | None = None
    reset_pin_failures: bool = False


class CardOut(Out, kw_only=True):
    masked_pan: str
    bin: str
    expiry: str
    status: str
    pin_failures: int
    balance: int
    available: int
    credit_limit: int
    currency: str
    updated_at_us: int


# --- payment methods ------------------------------------------------------------


class PaymentMethodIn(In, kw_only=True):
    allow_sale: bool = True
    allow_refund: bool = True
    allow_stock_take: bool = True
    allow_training: bool = False
    allow_change: bool = False
    allow_over_tender: bool = False
    record_payment_number: bool = True
    front_office: bool = True
    back_office: bool = True
    earns_points: bool = False
    cash_back: bool = False


class PaymentMethodOut(Out, kw_only=True):
    mid: str
    method: str
    allow_sale: bool
    allow_refund: bool
    allow_stock_take: bool
    allow_training: bool
    allow_change: bool
    allow_over_tender: bool
    record_payment_number: bool
    front_office: bool
    back_office: bool
    earns_points: bool
    cash_back: bool
    updated_at_us: int


FLAGS = tuple(f for f in PaymentMethodIn.__struct_fields__)


# --- tokens -------------------------------------------------------------------


class TokenIn(In, kw_only=True):
    name: Annotated[str, Meta(pattern=r"^[0-9A-Za-z._-]{1,64}$")]
    role: Role
    mid: Mid | None = None


class TokenOut(Out, kw_only=True):
    name: str
    role: str
    mid: str | None
    created_at_us: int


class TokenCreated(TokenOut, kw_only=True):
    token: str  # shown once; only its hash is stored


# --- transactions ---------------------------------------------------------------


class TxnQuery(PageQuery, kw_only=True):
    mid: Mid | None = None
    tid: Tid | None = None
    batch: Annotated[int, Meta(ge=0, le=999_999)] | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    kind: TxnKind | None = None
    rc: Annotated[str, Meta(pattern=r"^[0-9A-Z]{2}$")] | None = None
    pan_suffix: Annotated[str, Meta(pattern=r"^[0-9]{4}$")] | None = None
    rrn: Rrn | None = None


class TxnOut(Out, kw_only=True):
    id: str
    tid: str
    mid: str
    batch: int
    stan: int
    reversal: bool
    kind: str
    rc: str
    approved: bool
    amount: int | None
    masked_pan: str
    rrn: str
    auth_code: str
    created_at_us: int


class TxnList(Page, kw_only=True):
    items: list[TxnOut]


class LegOut(Out, kw_only=True):
    leg: int
    type: str
    code: str
    amount: int
    debit: str
    credit: str
    pending_state: str | None
    reversed: bool
    refunded: int


class TxnDetail(TxnOut, kw_only=True):
    orig_batch: int | None
    orig_stan: int | None
    legs: list[LegOut]
    fee: int


# --- reports ------------------------------------------------------------------


class DayQuery(In, kw_only=True):
    date: dt.date
    mid: Mid | None = None


class SalesQuery(DayQuery, kw_only=True):
    by: Literal["merchant", "terminal"] = "merchant"


class RangeQuery(In, kw_only=True):
    since: dt.date
    until: dt.date
    mid: Mid | None = None


class BatchQuery(PageQuery, kw_only=True):
    mid: Mid | None = None
    tid: Tid | None = None


class ReportOut(Out, kw_only=True):
    columns: list[str]
    rows: list[dict[str, str | int | bool | None]]


class SettlementReport(ReportOut, kw_only=True):
    totals: dict[str, int]


# --- ERP ------------------------------------------------------------------------


class ProductIn(In, kw_only=True):
    code: Code
    name: Name
    category: Text = ""
    price: Money
    tax_rate_bp: Basis = 0
    active: bool = True


class ProductPatch(In, kw_only=True):
    name: Name | UnsetType = UNSET
    category: Text | UnsetType = UNSET
    price: Money | UnsetType = UNSET
    tax_rate_bp: Basis | UnsetType = UNSET
    active: bool | UnsetType = UNSET


class ProductOut(Out, kw_only=True):
    code: str
    name: str
    category: str
    price: int
    tax_rate_bp: int
    active: bool
    updated_at_us: int


class ProductList(Page, kw_only=True):
    items: list[ProductOut]


class ProductQuery(PageQuery, kw_only=True):
    category: Text | None = None


class PricePoint(Out, kw_only=True):
    price: int
    tax_rate_bp: int
    valid_from_us: int


class StockIn(In, kw_only=True):
    ordered: Qty = 0
    reserved: Qty = 0
    max_stock: Qty | None = None
    safety_stock: Qty | None = None


class StockOut(Out, kw_only=True):
    location: str
    code: str
    on_hand: int
    ordered: int
    reserved: int
    available: int  # on hand less reserved
    max_stock: int | None
    safety_stock: int | None
    updated_at_us: int


class StockQuery(In, kw_only=True):
    location: Code | None = None
    code: Code | None = None


class CountLine(In, kw_only=True):
    code: Code
    counted: Qty


class StockTakeIn(In, kw_only=True):
    location: Code
    lines: Annotated[list[CountLine], Meta(min_length=1, max_length=10_000)]


class StockTakeLine(Out, kw_only=True):
    code: str
    before: int
    counted: int
    difference: int


class StockTakeOut(Out, kw_only=True):
    take_id: str
    location: str
    lines: list[StockTakeLine]


class ReceiptLine(In, kw_only=True):
    code: Code
    quantity: Annotated[int, Meta(ge=1, le=10**9)]


class ReceiptIn(In, kw_only=True):
    location: Code
    lines: Annotated[list[ReceiptLine], Meta(min_length=1, max_length=10_000)]


class OutOfBounds(Out, kw_only=True):
    location: str
    code: str
    on_hand: int
    max_stock: int | None
    safety_stock: int | None
    problem: Literal["over_maximum", "under_safety"]


class TurnoverQuery(In, kw_only=True):
    since: dt.date
    until: dt.date
    location: Code | None = None


class TurnoverOut(Out, kw_only=True):
    location: str
    code: str
    sold: int
    opening: int
    closing: int
    average_stock: str  # decimal text: a half unit is possible, money it is not
    turnover_rate: str | None
    turnover_days: str | None


class MemberIn(In, kw_only=True):
    member_id: Code
    name: Name
    phone: Annotated[str, Meta(pattern=r"^[0-9+ -]{0,20}$")] = ""
    email: Annotated[str, Meta(max_length=100)] = ""
    birthday: dt.date | None = None


class MemberPatch(In, kw_only=True):
    """Absent fields stay as they are; a null birthday removes it."""

    name: Name | UnsetType = UNSET
    phone: Annotated[str, Meta(pattern=r"^[0-9+ -]{0,20}$")] | UnsetType = UNSET
    email: Annotated[str, Meta(max_length=100)] | UnsetType = UNSET
    birthday: dt.date | UnsetType | None = UNSET


class MemberOut(Out, kw_only=True):
    member_id: str
    name: str
    phone: str
    email: str
    birthday: dt.date | None
    points: int
    created_at_us: int


class MemberList(Page, kw_only=True):
    items: list[MemberOut]


class BirthdayQuery(In, kw_only=True):
    month: Month


class DocLineIn(In, kw_only=True):
    code: Code
    quantity: Annotated[int, Meta(ge=0, le=10**6)]
    gift_quantity: Annotated[int, Meta(ge=0, le=10**6)] = 0
    price: Money | None = None  # default: the product's current price
    tax_rate_bp: Basis | None = None


class SalesDocIn(In, kw_only=True):
    number: Code
    date: dt.date
    type: Literal["sale", "return"] = "sale"
    status: Literal["draft", "posted"] = "posted"
    location: Code = "main"
    customer: Code | None = None
    tid: Tid | None = None
    credit: bool = False
    rrn: Rrn | None = None
    lines: Annotated[list[DocLineIn], Meta(min_length=1, max_length=1000)]


class DocLineOut(Out, kw_only=True):
    line_no: int
    code: str
    quantity: int
    gift_quantity: int
    price: int
    tax_rate_bp: int
    amount: int
    tax: int


class CardPayment(Out, kw_only=True):
    rrn: str
    tid: str
    amount: int | None
    masked_pan: str
    auth_code: str
    created_at_us: int


class SalesDocOut(Out, kw_only=True):
    number: str
    date: dt.date
    type: str
    status: str
    location: str
    customer: str | None
    tid: str | None
    credit: bool
    rrn: str | None
    total: int
    tax_total: int
    points: int
    created_at_us: int
    lines: list[DocLineOut] = []
    payment: CardPayment | None = None


class SalesDocList(Page, kw_only=True):
    items: list[SalesDocOut]


class SalesDocQuery(PageQuery, kw_only=True):
    since: dt.date | None = None
    until: dt.date | None = None
    status: Literal["draft", "posted"] | None = None
    customer: Code | None = None
    rrn: Rrn | None = None


# --- operations -----------------------------------------------------------------


class Health(Out, kw_only=True):
    status: str


class Readiness(Out, kw_only=True):
    status: str
    checks: dict[str, str]
