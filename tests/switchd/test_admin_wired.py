"""The switch serves its admin API: health, and metrics that move with traffic."""

from __future__ import annotations

import httpx

from fastpath import requests as rq
from switchd.daemon import Switch
from switchd.demo import demo_pan

from .conftest import connect


async def test_admin_api_is_served_by_the_switch(switch: Switch) -> None:
    base = f"http://127.0.0.1:{switch.admin_port}"
    sre = {"Authorization": "Bearer demo-sre-token"}
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        assert (await http.get("/healthz")).status_code == 200
        assert (await http.get("/readyz", headers=sre)).status_code == 200
        assert (await http.get("/metrics")).status_code == 401
        c = await connect(switch)
        await c.sign_on()
        t = c.term
        card = rq.Card(demo_pan(5), "3012")
        r = await c.call(t.frame(*rq.sale(t.ident, card, t.next_stan(), 1_00, "123456", t.pik)))
        assert r.rc == "00"
        text = (await http.get("/metrics", headers=sre)).text
        assert 'switchd_transactions_total{kind="sale",response_code="00"}' in text
        assert "switchd_ledger_commit_duration_seconds_bucket" in text
        assert "hsm_client_requests_total" in text
        admin = {"Authorization": "Bearer demo-admin-token"}
        card_view = (await http.get(f"/v1/cards/{card.pan}", headers=admin)).json()
        assert card_view["balance"] == 100_000_00 - 1_00
