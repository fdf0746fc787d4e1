"""Merchant ERP: products and prices, stock, members and points, sales documents."""

from __future__ import annotations

import datetime as dt

import httpx

from .conftest import MID, Env, demo_merchant_token
from .helpers import sale, signed_on

BASE = f"/v1/merchants/{MID}"


async def test_products_and_price_history(env: Env, admin: httpx.AsyncClient) -> None:
    r = await admin.post(
        f"{BASE}/products",
        json={
            "code": "MILK1L",
            "name": "Milk 1 l",
            "category": "dairy",
            "price": 6_50,
            "tax_rate_bp": 900,
        },
    )
    assert r.status_code == 201, r.text
    assert (
        await admin.post(f"{BASE}/products", json={"code": "MILK1L", "name": "x", "price": 1})
    ).status_code == 409
    r = await admin.patch(f"{BASE}/products/MILK1L", json={"price": 6_90})
    assert r.json()["price"] == 6_90
    await admin.patch(f"{BASE}/products/MILK1L", json={"name": "Milk, 1 litre"})  # no new price
    hist = (await admin.get(f"{BASE}/products/MILK1L/price-history")).json()
    assert [(h["price"], h["tax_rate_bp"]) for h in hist] == [(6_50, 900), (6_90, 900)]
    r = await admin.get(f"{BASE}/products", params={"category": "dairy"})
    assert [p["code"] for p in r.json()["items"]] == ["MILK1L"]
    assert (await admin.get(f"{BASE}/products/NOPE")).status_code == 404
    r = await admin.post(f"{BASE}/products", json={"code": "X", "name": "x", "price": -1})
    assert r.status_code == 422 and r.json()["field"] == "price"


async def test_stock_takes_bounds_and_turnover(env: Env, admin: httpx.AsyncClient) -> None:
    for code, price in (("A", 1_00), ("B", 2_00)):
        await admin.post(f"{BASE}/products", json={"code": code, "name": code, "price": price})
    r = await admin.put(
        f"{BASE}/stock/main/A",
        json={"ordered": 30, "reserved": 2, "max_stock": 50, "safety_stock": 10},
    )
    assert r.status_code == 200, r.text
    r = await admin.post(
        f"{BASE}/stock-takes",
        json={
            "location": "main",
            "lines": [{"code": "A", "counted": 40}, {"code": "B", "counted": 3}],
        },
    )
    assert r.status_code == 201
    assert [(x["code"], x["difference"]) for x in r.json()["lines"]] == [("A", 40), ("B", 3)]
    r = await admin.post(
        f"{BASE}/stock-receipts",
        json={"location": "main", "lines": [{"code": "A", "quantity": 20}]},
    )
    a = r.json()[0]
    assert (a["on_hand"], a["ordered"], a["reserved"], a["available"]) == (60, 10, 2, 58)
    await admin.put(f"{BASE}/stock/main/B", json={"safety_stock": 5})
    r = await admin.get(f"{BASE}/stock/out-of-bounds")
    assert {(x["code"], x["problem"]) for x in r.json()} == {
        ("A", "over_maximum"),
        ("B", "under_safety"),
    }
    # a posted sale moves stock (gifts too); the turnover sees it
    r = await admin.post(
        f"{BASE}/sales-documents",
        json={
            "number": "S-1",
            "date": dt.date.today().isoformat(),
            "lines": [{"code": "A", "quantity": 18, "gift_quantity": 2}],
        },
    )
    assert r.status_code == 201, r.text
    stock = (await admin.get(f"{BASE}/stock", params={"code": "A"})).json()
    assert stock[0]["on_hand"] == 40
    today = dt.datetime.now(dt.UTC).date().isoformat()
    r = await admin.get(f"{BASE}/stock/turnover", params={"since": today, "until": today})
    t = {x["code"]: x for x in r.json()}
    assert (t["A"]["opening"], t["A"]["closing"], t["A"]["sold"]) == (0, 40, 20)
    assert t["A"]["turnover_rate"] == "1.00" and t["A"]["turnover_days"] == "1.00"
    assert t["B"]["turnover_rate"] is None
    r = await admin.post(
        f"{BASE}/stock-takes", json={"location": "main", "lines": [{"code": "ZZ", "counted": 1}]}
    )
    assert r.status_code == 422 and r.json()["field"] == "lines[0].code"


async def test_sales_document_paid_by_card_earns_points(env: Env, admin: httpx.AsyncClient) -> None:
    await admin.post(
        f"{BASE}/products",
        json={"code": "TV", "name": "Television", "price": 1_999_00, "tax_rate_bp": 1300},
    )
    r = await admin.post(
        f"{BASE}/members", json={"member_id": "M1", "name": "Li Lei", "birthday": "1990-05-17"}
    )
    assert r.status_code == 201, r.text
    await admin.post(
        f"{BASE}/members", json={"member_id": "M2", "name": "Han Meimei", "birthday": "1991-05-02"}
    )
    await admin.post(f"{BASE}/members", json={"member_id": "M3", "name": "Jim"})
    r = await admin.get(f"{BASE}/members/birthdays", params={"month": 5})
    assert [m["member_id"] for m in r.json()] == ["M2", "M1"]
    await admin.put(f"{BASE}/payment-methods/bankcard", json={"earns_points": True})

    c = await signed_on(env.switch, "10000011", MID)
    _, resp = await sale(c, 25, 1_999_00)
    assert resp.rc == "00"
    assert env.switch.services is not None
    await env.switch.services.journal.flush()
    doc = {
        "number": "S-100",
        "date": "2026-11-23",
        "customer": "M1",
        "tid": "10000011",
        "rrn": resp.msg.rrn,
        "lines": [{"code": "TV", "quantity": 1}],
    }
    r = await admin.post(f"{BASE}/sales-documents", json=doc)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["total"] == 1_999_00
    assert body["tax_total"] == (1_999_00 * 1300 * 2 + 11300) // (2 * 11300)
    assert body["points"] == 1_999
    assert body["payment"]["amount"] == 1_999_00 and body["payment"]["tid"] == "10000011"
    assert (await admin.get(f"{BASE}/members/M1")).json()["points"] == 1_999
    # the same payment cannot pay a second document; unknown RRNs are refused
    r = await admin.post(f"{BASE}/sales-documents", json=doc | {"number": "S-101"})
    assert r.status_code == 409 and r.json()["field"] == "rrn"
    r = await admin.post(
        f"{BASE}/sales-documents", json=doc | {"number": "S-102", "rrn": "000000000000"}
    )
    assert r.status_code == 422 and r.json()["field"] == "rrn"
    r = await admin.post(
        f"{BASE}/sales-documents", json=doc | {"number": "S-103", "rrn": None, "customer": "NOBODY"}
    )
    assert r.status_code == 422 and r.json()["field"] == "customer"
    r = await admin.get(f"{BASE}/sales-documents", params={"rrn": resp.msg.rrn})
    assert [d["number"] for d in r.json()["items"]] == ["S-100"]
    async with env.client(demo_merchant_token(MID)) as merchant:
        r = await merchant.get(f"{BASE}/sales-documents/S-100")
        assert r.status_code == 200 and r.json()["lines"][0]["code"] == "TV"
        r = await merchant.post(f"{BASE}/members", json={"member_id": "M9", "name": "x"})
        assert r.status_code == 403
