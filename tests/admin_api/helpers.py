"""Real terminal traffic for the API tests (the same simulator as tests/switchd)."""

from __future__ import annotations

from fastpath import requests as rq
from switchd.daemon import Switch
from switchd.demo import demo_pan
from tests.switchd.conftest import Conn, connect

PIN = "123456"


def card(seq: int) -> rq.Card:
    return rq.Card(demo_pan(seq), "3012")


async def signed_on(sw: Switch, tid: str, mid: str) -> Conn:
    c = await connect(sw, tid, mid)
    r = await c.sign_on()
    assert r.rc == "00", r.rc
    return c


async def sale(c: Conn, pan_or_seq: int | str, amount: int, pin: str | None = PIN):  # type: ignore[no-untyped-def]
    t = c.term
    pan = demo_pan(pan_or_seq) if isinstance(pan_or_seq, int) else pan_or_seq
    stan = t.next_stan()
    r = await c.call(t.frame(*rq.sale(t.ident, rq.Card(pan, "3012"), stan, amount, pin, t.pik)))
    return stan, r


async def traffic(sw: Switch, mid: str, tids: tuple[str, str]) -> dict[str, int]:
    """Sales, a void, a refund, a pre-auth with its completion, a decline, a reversal.

    Returns what the merchant should see approved, by kind (amounts).
    """
    out = {"sale": 0, "void": 0, "refund": 0, "completion": 0, "sales_count": 0}
    a = await signed_on(sw, tids[0], mid)
    b = await signed_on(sw, tids[1], mid)
    for c, seq, amount in ((a, 10, 123_45), (a, 11, 10_01), (b, 12, 99_99), (b, 13, 5_00)):
        stan, r = await sale(c, seq, amount)
        assert r.rc == "00"
        out["sale"] += amount
        out["sales_count"] += 1
        c.term.remember(f"s{seq}", r, stan)
    t = a.term
    r = await a.call(t.frame(*rq.void(t.ident, card(11), t.next_stan(), 10_01, t.history["s11"])))
    assert r.rc == "00"
    out["void"] += 10_01
    r = await a.call(t.frame(*rq.refund(t.ident, card(10), t.next_stan(), 20_00, t.history["s10"])))
    assert r.rc == "00"
    out["refund"] += 20_00
    t = b.term
    stan = t.next_stan()
    r = await b.call(t.frame(*rq.preauth(t.ident, card(14), stan, 300_00, PIN, t.pik)))
    assert r.rc == "00"
    hold = t.remember("p", r, stan)
    r = await b.call(t.frame(*rq.completion(t.ident, card(14), t.next_stan(), 250_00, hold)))
    assert r.rc == "00"
    out["completion"] += 250_00
    out["sales_count"] += 1
    _, r = await sale(b, 2, 50_00)  # card 2 holds 10.00: declined 51
    assert r.rc == "51"
    stan = t.next_stan()
    mti, fields = rq.sale(t.ident, card(15), stan, 7_00)
    assert (await b.call(t.frame(mti, fields))).rc == "00"
    assert (await b.call(t.frame(*rq.reversal(fields, "98")))).rc == "00"
    return out
