from __future__ import annotations

import httpx

from .conftest import Env


async def test_health_and_openapi(env: Env, admin: httpx.AsyncClient) -> None:
    r = await admin.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    r = await admin.get("/readyz")
    assert r.status_code == 200, r.text
    r = await admin.get("/openapi.json")
    assert r.json()["openapi"] == "3.1.0"
    r = await admin.get("/v1/merchants")
    assert r.status_code == 200, r.text
    assert [m["mid"] for m in r.json()["items"]] == ["898100012340001", "898100012340002"]
