"""Terminals, merchants, cards, issuers and sessions: the switch's reference data.

The database (``switchd.db``) is the truth; the switch serves from an
in-memory copy so the hot path never waits on a read. The copy is reloaded
when the ``data_version`` counter changes (the admin API bumps it with every
provisioning write, from this process or another), checked every
``RELOAD_INTERVAL_S``: changes take effect without a restart.

PANs are never stored: a card is found by the keyed hash of its PAN (the
ledger's card account id), and only the masked PAN is kept for display.
"""

from __future__ import annotations

import logging
import time

import msgspec
import trio

from switchd.db import Cursor, Database

log = logging.getLogger("switchd.store")

#: How often the data version is polled for changes made by the admin API.
RELOAD_INTERVAL_S = 1.0

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS data_version (id INTEGER PRIMARY KEY, version BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS merchants (
        mid TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        mcc TEXT NOT NULL DEFAULT '5411',
        fee_bp INTEGER NOT NULL DEFAULT 0,
        min_amount BIGINT,
        max_amount BIGINT,
        status TEXT NOT NULL DEFAULT 'active',
        permitted TEXT NOT NULL DEFAULT '',
        updated_at BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS payment_methods (
        mid TEXT NOT NULL,
        method TEXT NOT NULL,
        allow_sale INTEGER NOT NULL DEFAULT 1,
        allow_refund INTEGER NOT NULL DEFAULT 1,
        allow_stock_take INTEGER NOT NULL DEFAULT 1,
        allow_training INTEGER NOT NULL DEFAULT 0,
        allow_change INTEGER NOT NULL DEFAULT 0,
        allow_over_tender INTEGER NOT NULL DEFAULT 0,
        record_payment_number INTEGER NOT NULL DEFAULT 1,
        front_office INTEGER NOT NULL DEFAULT 1,
        back_office INTEGER NOT NULL DEFAULT 1,
        earns_points INTEGER NOT NULL DEFAULT 0,
        cash_back INTEGER NOT NULL DEFAULT 0,
        updated_at BIGINT NOT NULL,
        PRIMARY KEY (mid, method))""",
    """CREATE TABLE IF NOT EXISTS terminals (
        tid TEXT PRIMARY KEY,
        mid TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'active',
        tmk_lmk TEXT NOT NULL,
        updated_at BIGINT NOT NULL)""",
    """CREATE INDEX IF NOT EXISTS terminals_mid ON terminals (mid)""",
    """CREATE TABLE IF NOT EXISTS cards (
        card_id TEXT PRIMARY KEY,
        masked_pan TEXT NOT NULL,
        bin TEXT NOT NULL,
        expiry TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'active',
        pvv TEXT NOT NULL,
        pvki INTEGER NOT NULL,
        pin_failures INTEGER NOT NULL DEFAULT 0,
        updated_at BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS issuer_keys (bin TEXT PRIMARY KEY, pvk_lmk TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS switch_keys (name TEXT PRIMARY KEY, value TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS sessions (
        tid TEXT PRIMARY KEY,
        pik_lmk TEXT NOT NULL,
        mak_kek TEXT NOT NULL,
        tdk_lmk TEXT NOT NULL DEFAULT '',
        netcode TEXT NOT NULL,
        signed_on_at BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS journal (
        tid TEXT NOT NULL,
        batch INTEGER NOT NULL,
        stan INTEGER NOT NULL,
        reversal INTEGER NOT NULL,
        kind TEXT NOT NULL,
        mid TEXT NOT NULL,
        digest TEXT NOT NULL,
        rc TEXT NOT NULL,
        amount BIGINT,
        masked_pan TEXT NOT NULL DEFAULT '',
        rrn TEXT NOT NULL DEFAULT '',
        auth_code TEXT NOT NULL DEFAULT '',
        orig_batch INTEGER,
        orig_stan INTEGER,
        response TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        PRIMARY KEY (tid, batch, stan, reversal))""",
    """CREATE INDEX IF NOT EXISTS journal_mid_time ON journal (mid, created_at)""",
    """CREATE INDEX IF NOT EXISTS journal_rrn ON journal (rrn)""",
    """CREATE TABLE IF NOT EXISTS settlements (
        tid TEXT NOT NULL,
        batch INTEGER NOT NULL,
        mid TEXT NOT NULL,
        balanced INTEGER NOT NULL,
        terminal_totals TEXT NOT NULL,
        host_totals TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        PRIMARY KEY (tid, batch))""",
    """CREATE TABLE IF NOT EXISTS batch_uploads (
        tid TEXT NOT NULL,
        batch INTEGER NOT NULL,
        stan INTEGER NOT NULL,
        netcode TEXT NOT NULL,
        records TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        PRIMARY KEY (tid, batch, stan))""",
]


def now_us() -> int:
    return time.time_ns() // 1000


class Merchant(msgspec.Struct, frozen=True):
    mid: str
    name: str
    mcc: str
    fee_bp: int  # basis points: 38 = 0.38 %
    min_amount: int | None
    max_amount: int | None
    status: str
    permitted: frozenset[str]  # transaction kinds; empty = all

    @property
    def active(self) -> bool:
        return self.status == "active"


class PaymentMethod(msgspec.Struct, frozen=True):
    mid: str
    method: str
    allow_sale: bool
    allow_refund: bool


class Terminal(msgspec.Struct, frozen=True):
    tid: str
    mid: str
    status: str
    tmk_lmk: str

    @property
    def active(self) -> bool:
        return self.status == "active"


class Card(msgspec.Struct, frozen=True):
    card_id: str  # decimal of the ledger's card account id (a keyed hash of the PAN)
    masked_pan: str
    bin: str
    expiry: str
    status: str
    pvv: str
    pvki: int
    pin_failures: int


class Session(msgspec.Struct):
    tid: str
    pik_lmk: str
    mak_kek: str  # the MAK under the switch's KEK (hex), as stored
    tdk_lmk: str
    netcode: str
    signed_on_at: int


async def migrate(db: Database) -> None:
    def go(c: Cursor) -> None:
        for stmt in SCHEMA:
            c.execute(stmt)
        c.execute("SELECT version FROM data_version WHERE id = 1")
        if c.fetchone() is None:
            c.execute("INSERT INTO data_version (id, version) VALUES (1, 1)")

    await db.run(go)


async def bump_version(db: Database) -> None:
    await db.execute("UPDATE data_version SET version = version + 1 WHERE id = 1")


class Store:
    """The in-memory copy of the reference data, and the writes the switch makes."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.version = -1
        self.merchants: dict[str, Merchant] = {}
        self.terminals: dict[str, Terminal] = {}
        self.cards: dict[str, Card] = {}
        self.methods: dict[tuple[str, str], PaymentMethod] = {}
        self.issuer_keys: dict[str, str] = {}
        self.sessions: dict[str, Session] = {}

    async def load(self) -> None:
        def go(c: Cursor) -> tuple[int, list, list, list, list, list]:
            c.execute("SELECT version FROM data_version WHERE id = 1")
            row = c.fetchone()
            version = row[0] if row else 0
            c.execute(
                "SELECT mid, name, mcc, fee_bp, min_amount, max_amount, status, permitted"
                " FROM merchants"
            )
            merchants = c.fetchall()
            c.execute("SELECT tid, mid, status, tmk_lmk FROM terminals")
            terminals = c.fetchall()
            c.execute(
                "SELECT card_id, masked_pan, bin, expiry, status, pvv, pvki, pin_failures"
                " FROM cards"
            )
            cards = c.fetchall()
            c.execute("SELECT mid, method, allow_sale, allow_refund FROM payment_methods")
            methods = c.fetchall()
            c.execute("SELECT bin, pvk_lmk FROM issuer_keys")
            return version, merchants, terminals, cards, methods, c.fetchall()

        version, merchants, terminals, cards, methods, keys = await self.db.run(go)
        self.merchants = {
            r[0]: Merchant(
                r[0], r[1], r[2], r[3], r[4], r[5], r[6], frozenset(filter(None, r[7].split(",")))
            )
            for r in merchants
        }
        self.terminals = {r[0]: Terminal(*r) for r in terminals}
        self.cards = {r[0]: Card(*r) for r in cards}
        self.methods = {
            (r[0], r[1]): PaymentMethod(r[0], r[1], bool(r[2]), bool(r[3])) for r in methods
        }
        self.issuer_keys = dict(keys)
        # Sessions are re-read on demand: a provisioning change (a new TMK) may
        # have ended one, and its row is the truth.
        self.sessions = {}
        self.version = version
        log.info(
            "reference data loaded: %d merchants, %d terminals, %d cards (version %d)",
            len(self.merchants),
            len(self.terminals),
            len(self.cards),
            version,
        )

    async def watch(self) -> None:
        """Reload whenever the data version moves; runs for the life of the switch."""
        while True:
            await trio.sleep(RELOAD_INTERVAL_S)
            try:
                row = await self.db.fetchone("SELECT version FROM data_version WHERE id = 1")
                if row and row[0] != self.version:
                    await self.load()
            except Exception:
                log.exception("reference data reload failed; serving the previous copy")

    # -- sessions ---------------------------------------------------------

    async def session(self, tid: str, *, fresh: bool = False) -> Session | None:
        """The terminal's session; ``fresh`` re-reads the database (another
        worker process may have signed the terminal on since we cached it)."""
        s = None if fresh else self.sessions.get(tid)
        if s is None:
            row = await self.db.fetchone(
                "SELECT tid, pik_lmk, mak_kek, tdk_lmk, netcode, signed_on_at FROM sessions"
                " WHERE tid = ?",
                (tid,),
            )
            if row is not None:
                s = self.sessions[tid] = Session(*row)
        return s

    async def save_session(self, s: Session) -> None:
        await self.db.execute(
            "INSERT INTO sessions (tid, pik_lmk, mak_kek, tdk_lmk, netcode, signed_on_at)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (tid) DO UPDATE SET pik_lmk = excluded.pik_lmk,"
            " mak_kek = excluded.mak_kek, tdk_lmk = excluded.tdk_lmk, netcode = excluded.netcode,"
            " signed_on_at = excluded.signed_on_at",
            (s.tid, s.pik_lmk, s.mak_kek, s.tdk_lmk, s.netcode, s.signed_on_at),
        )
        self.sessions[s.tid] = s

    async def drop_session(self, tid: str) -> None:
        await self.db.execute("DELETE FROM sessions WHERE tid = ?", (tid,))
        self.sessions.pop(tid, None)

    # -- cards ------------------------------------------------------------

    async def set_pin_failures(self, card: Card, failures: int) -> Card:
        await self.db.execute(
            "UPDATE cards SET pin_failures = ?, updated_at = ? WHERE card_id = ?",
            (failures, now_us(), card.card_id),
        )
        updated = msgspec.structs.replace(card, pin_failures=failures)
        self.cards[card.card_id] = updated
        return updated

    # -- keys -------------------------------------------------------------

    async def switch_key(self, name: str) -> str | None:
        row = await self.db.fetchone("SELECT value FROM switch_keys WHERE name = ?", (name,))
        return row[0] if row else None

    async def set_switch_key(self, name: str, value: str) -> None:
        await self.db.execute(
            "INSERT INTO switch_keys (name, value) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (name, value),
        )
