"""Provisioning writes take effect in the running switch without a restart."""

from __future__ import annotations

import httpx

from bench.sim import DEMO_TMK
from fastpath import requests as rq
from hsm.lmk import encrypt_under_zmk
from switchd.config import kek_bytes
from switchd.demo import demo_pan

from .conftest import MID, Env
from .helpers import PIN, sale, signed_on

NEW_MID = "898100012349999"
NEW_TID = "30000001"


def luhn_pan(body: str) -> str:
    from switchd.context import luhn_ok

    return next(body + str(d) for d in range(10) if luhn_ok(body + str(d)))


async def test_new_merchant_terminal_and_card_transact(env: Env, admin: httpx.AsyncClient) -> None:
    r = await admin.post(
        "/v1/merchants",
        json={
            "mid": NEW_MID,
            "name": "New Shop",
            "mcc": "5999",
            "fee_bp": 100,
            "max_amount": 1_000_00,
        },
    )
    assert r.status_code == 201, r.text
    assert r.json()["fee_bp"] == 100
    tmk_under_kek = encrypt_under_zmk(kek_bytes(env.switch.cfg), DEMO_TMK, "X")
    r = await admin.post(
        "/v1/terminals",
        json={"tid": NEW_TID, "mid": NEW_MID, "tmk_under_kek": tmk_under_kek, "kcv": "000000"},
    )
    assert r.status_code == 422 and r.json()["field"] == "kcv"
    r = await admin.post(
        "/v1/terminals", json={"tid": NEW_TID, "mid": NEW_MID, "tmk_under_kek": tmk_under_kek}
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert "tmk" not in str({k: v for k, v in body.items() if k != "tmk_kcv"})
    assert len(body["tmk_kcv"]) == 6
    assert tmk_under_kek[1:] not in r.text
    pan = luhn_pan("622848777777777")
    r = await admin.post(
        "/v1/cards", json={"pan": pan, "expiry": "3012", "pin": PIN, "opening_balance": 500_00}
    )
    assert r.status_code == 201, r.text
    assert r.json()["balance"] == 500_00 and pan not in r.text
    assert r.json()["masked_pan"] == pan[:6] + "*" * (len(pan) - 10) + pan[-4:]

    c = await signed_on(env.switch, NEW_TID, NEW_MID)
    _, resp = await sale(c, pan, 120_00)
    assert resp.rc == "00"
    _, resp = await sale(c, pan, 2_000_00)  # over the new merchant's maximum
    assert resp.rc == "61"
    r = await admin.get(f"/v1/cards/{pan}")
    assert r.json()["balance"] == 380_00 and r.json()["available"] == 380_00

    r = await admin.patch(f"/v1/merchants/{NEW_MID}", json={"max_amount": None})
    assert r.status_code == 200 and r.json()["max_amount"] is None and r.json()["fee_bp"] == 100
    # status changes reach the switch at once
    r = await admin.patch(f"/v1/cards/{pan}", json={"status": "blocked"})
    assert r.status_code == 200 and r.json()["status"] == "blocked"
    _, resp = await sale(c, pan, 1_00)
    assert resp.rc == "05"
    r = await admin.patch(f"/v1/merchants/{NEW_MID}", json={"status": "suspended"})
    assert r.status_code == 200
    _, resp = await sale(c, demo_pan(20), 1_00)
    assert resp.rc == "03"


async def test_payment_method_flags_are_enforced(env: Env, admin: httpx.AsyncClient) -> None:
    c = await signed_on(env.switch, "10000003", MID)
    stan, r = await sale(c, 21, 40_00)
    assert r.rc == "00"
    orig = c.term.remember("s", r, stan)
    r = await admin.put(
        f"/v1/merchants/{MID}/payment-methods/bankcard",
        json={"allow_refund": False, "earns_points": True},
    )
    assert r.status_code == 200, r.text
    assert r.json()["allow_refund"] is False and r.json()["allow_sale"] is True
    t = c.term
    card = rq.Card(demo_pan(21), "3012")
    resp = await c.call(t.frame(*rq.refund(t.ident, card, t.next_stan(), 10_00, orig)))
    assert resp.rc == "40"
    r = await admin.get(f"/v1/merchants/{MID}/payment-methods")
    assert [m["method"] for m in r.json()] == ["bankcard"]


async def test_new_tmk_forces_a_new_sign_on(env: Env, admin: httpx.AsyncClient) -> None:
    c = await signed_on(env.switch, "10000004", MID)
    assert (await sale(c, 22, 1_00))[1].rc == "00"
    other = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
    r = await admin.patch(
        "/v1/terminals/10000004",
        json={"tmk_under_kek": encrypt_under_zmk(kek_bytes(env.switch.cfg), other, "U")},
    )
    assert r.status_code == 200, r.text
    assert r.json()["signed_on_at_us"] is None
    assert (await sale(c, 22, 1_00))[1].rc == "A0"  # old session gone


async def test_bad_input_names_the_field(env: Env, admin: httpx.AsyncClient) -> None:
    cases = [
        ("POST", "/v1/merchants", b"{not json", 400, "body"),
        ("POST", "/v1/merchants", b"[]", 422, "body"),
        ("POST", "/v1/merchants", b'{"mid": "898100012340009"}', 422, "name"),
        (
            "POST",
            "/v1/merchants",
            b'{"mid": "898100012340009", "name": "x", "bogus": 1}',
            422,
            "bogus",
        ),
        (
            "POST",
            "/v1/merchants",
            b'{"mid": "898100012340009", "name": "x", "fee_bp": "9"}',
            422,
            "fee_bp",
        ),
        (
            "POST",
            "/v1/merchants",
            b'{"mid": "898100012340009", "name": "x", "fee_bp": 10001}',
            422,
            "fee_bp",
        ),
        ("POST", "/v1/merchants", b'{"mid": "12", "name": "x"}', 422, "mid"),
        (
            "POST",
            "/v1/merchants",
            b'{"mid": "898100012340009", "name": "x", "permitted": ["x"]}',
            422,
            "permitted[0]",
        ),
        ("POST", "/v1/merchants", b'{"mid": "898100012340001", "name": "dup"}', 409, "mid"),
        (
            "POST",
            "/v1/merchants",
            b'{"mid": "898100012340009", "name": "x", "min_amount": 5, "max_amount": 4}',
            422,
            "min_amount",
        ),
        ("PATCH", "/v1/merchants/898100012349876", b'{"name": "x"}', 404, None),
        ("PATCH", "/v1/merchants/898100012340001", b'{"name": null}', 422, "name"),
        (
            "PATCH",
            "/v1/merchants/898100012340001",
            b'{"min_amount": 9, "max_amount": 8}',
            422,
            "min_amount",
        ),
        ("GET", "/v1/transactions?limit=0", None, 422, "limit"),
        ("GET", "/v1/transactions?cursor=zzz", None, 422, "cursor"),
        ("GET", "/v1/transactions?kind=sell", None, 422, "kind"),
        ("GET", "/v1/transactions?color=red", None, 422, "color"),
        ("GET", "/v1/transactions/nope", None, 422, "txn_id"),
        ("GET", "/v1/transactions/10000001.000001.000001.0", None, 404, None),
        ("GET", "/v1/cards/12", None, 422, "pan"),
        ("GET", "/v1/cards/6228489999999999", None, 404, None),
        (
            "POST",
            "/v1/cards",
            b'{"pan": "4111111111111111", "expiry": "3012", "pin": "1234"}',
            422,
            "pan",
        ),
        (
            "POST",
            "/v1/terminals",
            b'{"tid": "30000009", "mid": "898100012349876",'
            b' "tmk_under_kek": "X0123456789ABCDEF0123456789ABCDEF"}',
            422,
            "mid",
        ),
        ("GET", "/v1/reports/settlement", None, 422, "date"),
        ("GET", "/v1/reports/settlement?date=2026-02-30", None, 422, "date"),
        ("GET", "/v1/reports/settlement?date=2026-01-01&format=xml", None, 422, "format"),
        ("GET", "/v1/nowhere", None, 404, None),
        ("DELETE", "/v1/merchants", None, 405, None),
    ]
    for method, path, content, status, field in cases:
        r = await admin.request(method, path, content=content)
        assert r.status_code == status, (method, path, r.status_code, r.text)
        body = r.json()
        assert body["error"] and body["message"]
        if field is not None:
            assert body["field"] == field, (path, content, body)
    big = b'{"mid": "898100012340009", "name": "' + b"x" * (2 << 20) + b'"}'
    r = await admin.post("/v1/merchants", content=big)
    assert r.status_code == 413 and r.json()["field"] == "body"
    # nothing half-written: the refused merchants are not there
    assert (await admin.get("/v1/merchants/898100012340009")).status_code == 404
