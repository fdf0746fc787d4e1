from __future__ import annotations

from fastpath import requests as rq
from switchd.daemon import Switch
from switchd.demo import demo_pan

from .conftest import connect

CARD = rq.Card(demo_pan(5), "3012")


async def test_sign_on_sale_balance(switch: Switch) -> None:
    c = await connect(switch)
    resp = await c.sign_on()
    assert resp.rc == "00"
    t = c.term
    r = await c.call(t.frame(*rq.sale(t.ident, CARD, t.next_stan(), 1234, "123456", t.pik)))
    assert r.rc == "00", r.msg.to_dict()
    assert r.mac_ok
    r = await c.call(t.frame(*rq.balance(t.ident, CARD, t.next_stan(), "123456", t.pik)))
    assert r.rc == "00"
    assert r.msg.get(54) == f"1002156C{100_000_00 - 1234:012d}"
