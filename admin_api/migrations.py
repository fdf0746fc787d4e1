"""Tables the admin API adds to the switch database: API tokens and the merchant ERP.

Same types on SQLite and PostgreSQL (TEXT, BIGINT, INTEGER) as switchd.store.
Money is BIGINT minor units; rates are basis points; quantities are whole
units; times are microseconds since the epoch, dates ISO ``YYYY-MM-DD`` text.
"""

from __future__ import annotations

from switchd.db import Cursor, Database
from switchd.store import now_us

from .auth import hash_token

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS api_tokens (
        name TEXT PRIMARY KEY,
        token_hash TEXT NOT NULL UNIQUE,
        role TEXT NOT NULL,
        mid TEXT,
        created_at BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS erp_products (
        mid TEXT NOT NULL,
        code TEXT NOT NULL,
        name TEXT NOT NULL,
        category TEXT NOT NULL DEFAULT '',
        price BIGINT NOT NULL,
        tax_rate_bp INTEGER NOT NULL,
        active INTEGER NOT NULL DEFAULT 1,
        updated_at BIGINT NOT NULL,
        PRIMARY KEY (mid, code))""",
    """CREATE TABLE IF NOT EXISTS erp_price_history (
        mid TEXT NOT NULL,
        code TEXT NOT NULL,
        price BIGINT NOT NULL,
        tax_rate_bp INTEGER NOT NULL,
        valid_from BIGINT NOT NULL,
        PRIMARY KEY (mid, code, valid_from))""",
    """CREATE TABLE IF NOT EXISTS erp_stock (
        mid TEXT NOT NULL,
        location TEXT NOT NULL,
        code TEXT NOT NULL,
        on_hand BIGINT NOT NULL DEFAULT 0,
        ordered BIGINT NOT NULL DEFAULT 0,
        reserved BIGINT NOT NULL DEFAULT 0,
        max_stock BIGINT,
        safety_stock BIGINT,
        updated_at BIGINT NOT NULL,
        PRIMARY KEY (mid, location, code))""",
    """CREATE TABLE IF NOT EXISTS erp_stock_moves (
        move_id TEXT PRIMARY KEY,
        mid TEXT NOT NULL,
        location TEXT NOT NULL,
        code TEXT NOT NULL,
        delta BIGINT NOT NULL,
        reason TEXT NOT NULL,
        ref TEXT NOT NULL DEFAULT '',
        created_at BIGINT NOT NULL)""",
    """CREATE INDEX IF NOT EXISTS erp_stock_moves_item
        ON erp_stock_moves (mid, location, code, created_at)""",
    """CREATE TABLE IF NOT EXISTS erp_members (
        mid TEXT NOT NULL,
        member_id TEXT NOT NULL,
        name TEXT NOT NULL,
        phone TEXT NOT NULL DEFAULT '',
        email TEXT NOT NULL DEFAULT '',
        birthday TEXT,
        points BIGINT NOT NULL DEFAULT 0,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        PRIMARY KEY (mid, member_id))""",
    """CREATE TABLE IF NOT EXISTS erp_sales_docs (
        mid TEXT NOT NULL,
        number TEXT NOT NULL,
        doc_date TEXT NOT NULL,
        doc_type TEXT NOT NULL,
        status TEXT NOT NULL,
        customer TEXT,
        tid TEXT,
        credit INTEGER NOT NULL DEFAULT 0,
        rrn TEXT NOT NULL DEFAULT '',
        location TEXT NOT NULL,
        total BIGINT NOT NULL,
        tax_total BIGINT NOT NULL,
        points BIGINT NOT NULL DEFAULT 0,
        created_at BIGINT NOT NULL,
        PRIMARY KEY (mid, number))""",
    """CREATE INDEX IF NOT EXISTS erp_sales_docs_rrn ON erp_sales_docs (rrn)""",
    """CREATE TABLE IF NOT EXISTS erp_sales_lines (
        mid TEXT NOT NULL,
        number TEXT NOT NULL,
        line_no INTEGER NOT NULL,
        code TEXT NOT NULL,
        quantity BIGINT NOT NULL,
        gift_quantity BIGINT NOT NULL,
        price BIGINT NOT NULL,
        tax_rate_bp INTEGER NOT NULL,
        amount BIGINT NOT NULL,
        tax BIGINT NOT NULL,
        PRIMARY KEY (mid, number, line_no))""",
]

#: Published demo tokens (like the demo keys: for a first run and the tests only).
DEMO_ADMIN_TOKEN = "demo-admin-token"
DEMO_SRE_TOKEN = "demo-sre-token"
DEMO_MERCHANTS = ("898100012340001", "898100012340002")


def demo_merchant_token(mid: str) -> str:
    return f"demo-merchant-{mid}"


async def migrate(db: Database) -> None:
    """Create the admin API's tables (idempotent); run after switchd.store.migrate."""

    def go(c: Cursor) -> None:
        for stmt in SCHEMA:
            c.execute(stmt)

    await db.run(go)


async def ensure_demo_tokens(db: Database) -> None:
    """The demo tokens, stored hashed; existing names are left as they are."""
    ts = now_us()
    rows = [
        ("demo-admin", hash_token(DEMO_ADMIN_TOKEN), "admin", None, ts),
        ("demo-sre", hash_token(DEMO_SRE_TOKEN), "sre", None, ts),
    ]
    rows += [
        (f"demo-merchant-{mid}", hash_token(demo_merchant_token(mid)), "merchant", mid, ts)
        for mid in DEMO_MERCHANTS
    ]

    def go(c: Cursor) -> None:
        c.executemany(
            "INSERT INTO api_tokens (name, token_hash, role, mid, created_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING",
            rows,
        )

    await db.run(go)
