"""The API's SQL on PostgreSQL: the same scenarios as on SQLite, against a
switch whose database and ledger are on PostgreSQL (skipped without a server).
One switch per scenario: each sends its own terminal traffic from STAN 1."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx
import pytest

from . import test_erp, test_reports
from .conftest import Env

Scenario = Callable[[Env, httpx.AsyncClient], Awaitable[None]]


@pytest.mark.parametrize(
    "scenario",
    [
        test_reports.test_reports_add_up_to_the_ledger,
        test_reports.test_transaction_search_and_detail,
        test_reports.test_batch_history,
        test_erp.test_products_and_price_history,
        test_erp.test_stock_takes_bounds_and_turnover,
        test_erp.test_sales_document_paid_by_card_earns_points,
    ],
    ids=lambda f: f.__name__.removeprefix("test_"),
)
async def test_on_postgres(pg_env: Env, scenario: Scenario) -> None:
    async with pg_env.client() as admin:
        await scenario(pg_env, admin)
