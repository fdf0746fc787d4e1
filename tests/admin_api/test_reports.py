"""Transactions and reports against real traffic: totals equal the ledger's, to the cent."""

from __future__ import annotations

import csv
import datetime as dt
import io

import httpx

from fastpath import requests as rq
from switchd.demo import demo_pan
from switchd.ledger import fee_account_id, merchant_account_id

from .conftest import MID, MID2, Env, demo_merchant_token
from .helpers import traffic


async def flush(env: Env) -> None:
    """The journal is written behind the answers; wait for it before searching."""
    assert env.switch.services is not None
    await env.switch.services.journal.flush()


async def balances(env: Env) -> tuple[int, int]:
    ledger = env.ctx.ledger
    m = await ledger.account(merchant_account_id(MID))
    f = await ledger.account(fee_account_id("156"))
    assert m is not None and f is not None
    return m.balance, f.balance


async def test_reports_add_up_to_the_ledger(env: Env, admin: httpx.AsyncClient) -> None:
    today = dt.datetime.now(dt.UTC).date().isoformat()
    m0, f0 = await balances(env)
    expected = await traffic(env.switch, MID, ("10000001", "10000002"))
    m1, f1 = await balances(env)

    r = await admin.get("/v1/reports/settlement", params={"date": today, "mid": MID})
    assert r.status_code == 200, r.text
    (row,) = r.json()["rows"]
    assert row["net"] == m1 - m0  # what the merchant is owed, to the cent
    assert row["fees"] == f1 - f0
    assert row["gross"] == expected["sale"] + expected["completion"] + 7_00  # reversed one too
    assert row["reversals"] == 7_00 and row["voids"] == expected["void"]
    assert row["refunds"] == expected["refund"]
    assert (
        row["net"] == row["gross"] - row["voids"] - row["reversals"] - row["refunds"] - row["fees"]
    )

    r = await admin.get("/v1/reports/fee-income", params={"since": today, "until": today})
    fees = {x["mid"]: x for x in r.json()["rows"]}
    assert fees[MID]["net"] == f1 - f0 and MID2 not in fees
    assert r.json()["totals"]["net"] == f1 - f0

    r = await admin.get("/v1/reports/daily-sales", params={"date": today, "mid": MID})
    by_kind = {x["kind"]: x for x in r.json()["rows"]}
    assert by_kind["sale"]["amount"] == expected["sale"] + 7_00
    assert by_kind["sale"]["count"] == 5 and by_kind["sale"]["payment_method"] == "bankcard"
    assert by_kind["completion"]["amount"] == 250_00
    r = await admin.get(
        "/v1/reports/daily-sales", params={"date": today, "mid": MID, "by": "terminal"}
    )
    per_tid = {}
    for x in r.json()["rows"]:
        if x["kind"] == "sale":
            per_tid[x["tid"]] = x["amount"]
    assert per_tid == {"10000001": 123_45 + 10_01, "10000002": 99_99 + 5_00 + 7_00}

    # CSV carries the same numbers
    r = await admin.get("/v1/reports/settlement", params={"date": today, "format": "csv"})
    assert r.headers["content-type"].startswith("text/csv")
    rows = {x["mid"]: x for x in csv.DictReader(io.StringIO(r.text))}
    assert int(rows[MID]["net"]) == m1 - m0 and int(rows[MID2]["net"]) == 0

    # the merchant token sees the same figures for itself
    async with env.client(demo_merchant_token(MID)) as merchant:
        r = await merchant.get("/v1/reports/settlement", params={"date": today})
        assert r.json()["rows"] == [row]


async def test_transaction_search_and_detail(env: Env, admin: httpx.AsyncClient) -> None:
    await traffic(env.switch, MID, ("10000001", "10000002"))
    await flush(env)
    r = await admin.get("/v1/transactions", params={"mid": MID, "limit": 500})
    everything = r.json()["items"]
    assert len(everything) >= 10 and r.json()["next_cursor"] is None
    times = [t["created_at_us"] for t in everything]
    assert times == sorted(times, reverse=True)

    # cursor pagination walks every row once
    seen, cursor = [], None
    while True:
        params = {"mid": MID, "limit": 3} | ({"cursor": cursor} if cursor else {})
        page = (await admin.get("/v1/transactions", params=params)).json()
        seen += [t["id"] for t in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [t["id"] for t in everything]

    async def ids(**params: object) -> set[str]:
        r = await admin.get("/v1/transactions", params={"limit": 500, **params})
        assert r.status_code == 200, r.text
        return {t["id"] for t in r.json()["items"]}

    sales = await ids(kind="sale")
    assert len(sales) == 6  # 4 approved, the declined one, the reversed one
    assert len(await ids(kind="sale", rc="51")) == 1
    assert len(await ids(tid="10000002", kind="sale", rc="00")) == 3
    pan = demo_pan(12)
    one = await ids(pan_suffix=pan[-4:], kind="sale")
    assert len(one) == 1
    detail = (await admin.get(f"/v1/transactions/{one.pop()}")).json()
    assert detail["masked_pan"] == pan[:6] + "*" * 9 + pan[-4:]
    assert [(leg["leg"], leg["debit"], leg["credit"]) for leg in detail["legs"]] == [
        (0, "card", "merchant"),
        (1, "merchant", "fee_income"),
    ]
    assert detail["fee"] == (99_99 * 38 + 5000) // 10_000
    assert await ids(rrn=detail["rrn"]) == {detail["id"]}
    now = dt.datetime.now(dt.UTC)
    assert await ids(since=(now - dt.timedelta(hours=1)).isoformat()) >= sales
    assert not await ids(until=(now - dt.timedelta(hours=1)).isoformat())
    assert await ids(batch=1, mid=MID2) == set()
    # no full PAN anywhere in what the API returns
    for t in everything:
        text = (await admin.get(f"/v1/transactions/{t['id']}")).text
        assert not any(demo_pan(s) in text for s in range(1, 41))


async def test_batch_history(env: Env, admin: httpx.AsyncClient) -> None:
    from .helpers import sale, signed_on

    c = await signed_on(env.switch, "10000009", MID)
    t = c.term
    await sale(c, 30, 12_00)
    ok = rq.settlement_totals(12_00, 1, 0, 0)
    assert (await c.call(t.frame(*rq.settlement(t.ident, t.next_stan(), ok)))).rc == "00"
    await c.sign_on()
    await sale(c, 30, 1_00)
    bad = rq.settlement_totals(5_00, 1, 0, 0)
    assert (await c.call(t.frame(*rq.settlement(t.ident, t.next_stan(), bad)))).rc == "00"
    r = await admin.get("/v1/reports/batches", params={"tid": "10000009"})
    rows = r.json()["rows"]
    assert [(x["batch"], x["outcome"]) for x in rows] == [(2, "unbalanced"), (1, "balanced")]
    assert rows[0]["terminal_debit_amount"] == 5_00 and rows[0]["host_debit_amount"] == 1_00
    page = (await admin.get("/v1/reports/batches", params={"tid": "10000009", "limit": 1})).json()
    assert len(page["rows"]) == 1 and page["next_cursor"]
    nxt = await admin.get(
        "/v1/reports/batches", params={"tid": "10000009", "cursor": page["next_cursor"]}
    )
    assert [x["batch"] for x in nxt.json()["rows"]] == [1]
    r = await admin.get("/v1/reports/batches", params={"tid": "10000009", "format": "csv"})
    assert next(iter(csv.DictReader(io.StringIO(r.text))))["outcome"] == "unbalanced"
