"""`switchd admin` on its own against a running switch's databases: its writes
reach the switch through the data version, without a restart."""

from __future__ import annotations

from pathlib import Path

import httpx
import msgspec
import trio

from admin_api import standalone
from bench.sim import DEMO_TMK
from hsm.lmk import encrypt_under_zmk
from switchd.config import Admin, kek_bytes
from switchd.daemon import Switch
from tests.switchd.conftest import small_config

from .helpers import sale, signed_on


async def test_standalone_api_provisions_a_running_switch(tmp_path: Path) -> None:
    cfg = small_config(tmp_path / "var")
    sw = Switch(cfg)
    async with trio.open_nursery() as nursery:
        await nursery.start(sw.run)
        api_cfg = msgspec.structs.replace(cfg, admin=Admin(port=0))
        port = await nursery.start(standalone.run, api_cfg)
        headers = {"Authorization": "Bearer demo-admin-token"}
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=20
        ) as api:
            r = await api.get("/readyz")
            assert r.status_code == 200, r.text
            assert "listeners" not in r.json()["checks"]  # no terminal listener here
            r = await api.post("/v1/merchants", json={"mid": "898100012347777", "name": "Kiosk"})
            assert r.status_code == 201, r.text
            tmk = encrypt_under_zmk(kek_bytes(cfg), DEMO_TMK, "X")
            r = await api.post(
                "/v1/terminals",
                json={"tid": "40000001", "mid": "898100012347777", "tmk_under_kek": tmk},
            )
            assert r.status_code == 201, r.text
        # the switch reloads on its next poll of the data version
        with trio.fail_after(5):
            while sw.services is None or "40000001" not in sw.services.store.terminals:
                await trio.sleep(0.1)
        c = await signed_on(sw, "40000001", "898100012347777")
        assert (await sale(c, 33, 5_00))[1].rc == "00"
        sw.stop()
        nursery.cancel_scope.cancel()
