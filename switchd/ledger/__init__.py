"""The ledger: double-entry accounts and immutable transfers with group commit.

Semantics follow TigerBeetle (double entry, idempotent ids, pending/post/void),
stored in SQLite (embedded) or PostgreSQL (shared by several switch nodes).

    async with open_ledger(config) as ledger:
        results = await ledger.submit_linked(flows.sale(...))

See engine.py (the writer), core.py (the rules), ids.py (id derivation),
flows.py (the operations each terminal transaction needs).
"""

from __future__ import annotations

from .config import LedgerConfig, PostgresConfig, SqliteConfig
from .engine import Ledger, open_ledger
from .ids import (
    account_id,
    card_account_id,
    fee_account_id,
    merchant_account_id,
    suspense_account_id,
    transfer_id,
)
from .model import (
    Account,
    AccountKind,
    CloseAccount,
    CloseBatch,
    CommitFailed,
    CreateAccount,
    LedgerClosed,
    LedgerError,
    Op,
    PendingState,
    PostPending,
    Result,
    ResultCode,
    Reverse,
    SettlementTotals,
    Transfer,
    TransferRecord,
    TransferType,
    VoidPending,
    WireMeta,
)

__all__ = [
    "Account",
    "AccountKind",
    "CloseAccount",
    "CloseBatch",
    "CommitFailed",
    "CreateAccount",
    "Ledger",
    "LedgerClosed",
    "LedgerConfig",
    "LedgerError",
    "Op",
    "PendingState",
    "PostPending",
    "PostgresConfig",
    "Result",
    "ResultCode",
    "Reverse",
    "SettlementTotals",
    "SqliteConfig",
    "Transfer",
    "TransferRecord",
    "TransferType",
    "VoidPending",
    "WireMeta",
    "account_id",
    "card_account_id",
    "fee_account_id",
    "merchant_account_id",
    "open_ledger",
    "suspense_account_id",
    "transfer_id",
]
