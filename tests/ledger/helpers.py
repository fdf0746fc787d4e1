"""Shared set-up: a small chart of accounts in CNY (numeric code 156)."""

from __future__ import annotations

from dataclasses import dataclass

from switchd.ledger import (
    AccountKind,
    CreateAccount,
    Ledger,
    Transfer,
    fee_account_id,
    merchant_account_id,
    suspense_account_id,
)

CNY = "156"


@dataclass(frozen=True)
class Chart:
    card: int
    card2: int
    merchant: int
    fee: int
    suspense: int


async def make_chart(ledger: Ledger, funds: int = 100_000) -> Chart:
    chart = Chart(card=1001, card2=1002, merchant=merchant_account_id("M0001"),
                  fee=fee_account_id(CNY), suspense=suspense_account_id(CNY))
    results = await ledger.submit([
        CreateAccount(chart.card, AccountKind.CARDHOLDER, CNY, owner="card-1"),
        CreateAccount(chart.card2, AccountKind.CARDHOLDER, CNY, owner="card-2", credit_limit=5_000),
        CreateAccount(chart.merchant, AccountKind.MERCHANT, CNY, owner="M0001"),
        CreateAccount(chart.fee, AccountKind.FEE_INCOME, CNY),
        CreateAccount(chart.suspense, AccountKind.SUSPENSE, CNY),
    ])
    assert all(r.ok for r in results), results
    if funds:
        r = await ledger.execute(Transfer(9_000_001, chart.suspense, chart.card, funds, "deposit"))
        assert r.ok, r
    return chart
