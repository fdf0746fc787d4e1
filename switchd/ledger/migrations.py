"""Versioned schema migrations, applied in order when a backend opens.

Each migration has a number, a description, and the statements for each
dialect. They are append-only: a released migration is never edited, a change
is a new one. `schema_migrations` records what was applied, so opening an
up-to-date database runs nothing; a database newer than this code is refused
(it may hold columns this code would not keep consistent).

Both dialects store the same things the same way: ids as 16-byte big-endian
strings (BLOB / bytea), money and timestamps (microseconds since the Unix
epoch, UTC) as 64-bit integers, enums as text.

Transfers live in a rowid table (SQLite), so rows are appended in commit
order and the terminal/merchant indexes grow at their ends; only the 16-byte
id index takes random inserts (the small tables are WITHOUT ROWID, keyed by
id). A database created while transfers was still WITHOUT ROWID works the same.

Transfers are immutable rows. What changes over a transfer's life (a hold's
state, who reversed it, how much of it was refunded) lives in
`transfer_state`, one row per transfer that has such a life; posted transfers
get theirs only when first reversed or refunded, so a plain sale costs one row.
"""

from __future__ import annotations

import msgspec


class Migration(msgspec.Struct, frozen=True):
    version: int
    description: str
    sqlite: tuple[str, ...]
    postgres: tuple[str, ...]


def _both(template: str) -> tuple[str, str]:
    """One DDL text for both dialects: {blob} is BLOB / bytea, {wr} is SQLite's WITHOUT ROWID."""
    return (
        template.format(blob="BLOB", int="INTEGER", wr=" WITHOUT ROWID"),
        template.format(blob="bytea", int="bigint", wr=""),
    )


_V1 = [
    _both(
        """CREATE TABLE accounts (
            id {blob} PRIMARY KEY,
            kind text NOT NULL,
            currency text NOT NULL,
            owner text NOT NULL,
            credit_limit {int},
            closed smallint NOT NULL DEFAULT 0,
            debits_posted {int} NOT NULL,
            credits_posted {int} NOT NULL,
            debits_pending {int} NOT NULL,
            credits_pending {int} NOT NULL,
            created_at {int} NOT NULL
        ){wr}"""
    ),
    _both(
        """CREATE TABLE transfers (
            id {blob} PRIMARY KEY,
            type text NOT NULL,
            debit_account_id {blob} NOT NULL,
            credit_account_id {blob} NOT NULL,
            amount {int} NOT NULL,
            code text NOT NULL,
            ref_id {blob},
            expires_at {int},
            post_tolerance {int} NOT NULL,
            fingerprint {blob} NOT NULL,
            created_at {int} NOT NULL,
            terminal_id text,
            merchant_id text,
            batch_no {int},
            stan {int},
            txn_kind text,
            leg smallint,
            rrn text,
            masked_pan text
        )"""
    ),
    _both(
        "CREATE INDEX transfers_by_terminal_batch ON transfers (terminal_id, batch_no)"
        " WHERE terminal_id IS NOT NULL"
    ),
    _both(
        "CREATE INDEX transfers_by_merchant_time ON transfers (merchant_id, created_at)"
        " WHERE merchant_id IS NOT NULL"
    ),
    _both(
        """CREATE TABLE transfer_state (
            id {blob} PRIMARY KEY,
            pending_state text,
            expires_at {int},
            resolved_by {blob},
            reversed_by {blob},
            refunded {int} NOT NULL DEFAULT 0
        ){wr}"""
    ),
    _both(
        "CREATE INDEX transfer_state_due ON transfer_state (expires_at)"
        " WHERE pending_state = 'pending' AND expires_at IS NOT NULL"
    ),
    # A rejected transfer id keeps its first answer: a terminal repeating a
    # declined request gets the same decline, not a fresh evaluation.
    _both(
        """CREATE TABLE rejections (
            id {blob} PRIMARY KEY,
            fingerprint {blob} NOT NULL,
            code text NOT NULL,
            created_at {int} NOT NULL
        ){wr}"""
    ),
    _both(
        """CREATE TABLE terminal_batches (
            terminal_id text PRIMARY KEY,
            current_batch {int} NOT NULL,
            updated_at {int} NOT NULL
        )"""
    ),
    _both(
        """CREATE TABLE batch_closures (
            terminal_id text NOT NULL,
            batch_no {int} NOT NULL,
            closed_at {int} NOT NULL,
            PRIMARY KEY (terminal_id, batch_no, closed_at)
        )"""
    ),
]

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        version=1,
        description="accounts, transfers, transfer state, rejections, terminal batches",
        sqlite=tuple(s for s, _ in _V1),
        postgres=tuple(p for _, p in _V1),
    ),
    # F48 settles domestic and foreign cards separately. Appended as the last
    # column, which is where the writer's positional INSERT expects it.
    Migration(
        version=2,
        description="transfers.foreign_card for the foreign half of settlement totals",
        sqlite=("ALTER TABLE transfers ADD COLUMN foreign_card smallint",),
        postgres=("ALTER TABLE transfers ADD COLUMN foreign_card smallint",),
    ),
)

LATEST = MIGRATIONS[-1].version

CREATE_VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    " version integer PRIMARY KEY, description text NOT NULL, applied_at bigint NOT NULL)"
)


class SchemaTooNew(RuntimeError):
    pass


def pending_migrations(applied: set[int], dialect: str) -> list[tuple[int, str, tuple[str, ...]]]:
    """What is left to apply, in order; raises if the database is ahead of this code."""
    if applied and max(applied) > LATEST:
        raise SchemaTooNew(
            f"ledger schema version {max(applied)} is newer than this code ({LATEST})"
        )
    out = []
    for m in MIGRATIONS:
        if m.version not in applied:
            out.append((m.version, m.description, m.sqlite if dialect == "sqlite" else m.postgres))
    return out
