"""The role matrix: admin everything, merchant read-only on its own MID, sre ops only."""

from __future__ import annotations

from .conftest import DEMO_SRE_TOKEN, MID, MID2, Env, demo_merchant_token

MERCHANT = demo_merchant_token(MID)

# (method, path, token, expected status)
MATRIX = [
    ("GET", "/v1/merchants", None, 401),
    ("GET", "/v1/merchants", "wrong-token", 401),
    ("GET", "/v1/merchants", "demo-admin-token", 200),
    ("GET", "/v1/merchants", MERCHANT, 200),
    ("GET", "/v1/merchants", DEMO_SRE_TOKEN, 403),
    ("GET", f"/v1/merchants/{MID}", MERCHANT, 200),
    ("GET", f"/v1/merchants/{MID2}", MERCHANT, 403),
    ("GET", f"/v1/merchants/{MID2}/products", MERCHANT, 403),
    ("GET", f"/v1/transactions?mid={MID2}", MERCHANT, 403),
    ("GET", f"/v1/transactions?mid={MID}", MERCHANT, 200),
    ("GET", "/v1/terminals/20000001", MERCHANT, 404),  # another merchant's: not disclosed
    ("GET", "/v1/terminals/10000001", MERCHANT, 200),
    ("PATCH", f"/v1/merchants/{MID}", MERCHANT, 403),
    ("POST", f"/v1/merchants/{MID}/products", MERCHANT, 403),
    ("GET", "/v1/cards/6228480000000000019", MERCHANT, 403),
    ("GET", "/v1/tokens", MERCHANT, 403),
    ("GET", "/metrics", None, 401),
    ("GET", "/metrics", MERCHANT, 403),
    ("GET", "/metrics", DEMO_SRE_TOKEN, 200),
    ("GET", "/metrics", "demo-admin-token", 200),
    ("GET", "/readyz", DEMO_SRE_TOKEN, 200),
    ("GET", "/readyz", MERCHANT, 403),
    ("GET", "/healthz", None, 200),
    ("GET", "/openapi.json", None, 200),
    ("GET", "/docs", None, 200),
    ("GET", "/v1/reports/fee-income?since=2026-01-01&until=2026-01-02", DEMO_SRE_TOKEN, 403),
]


async def test_role_matrix(env: Env) -> None:
    failures = []
    async with env.client(None) as c:
        for method, path, token, want in MATRIX:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            body = {} if method in ("POST", "PATCH") else None
            r = await c.request(method, path, headers=headers, json=body)
            if r.status_code != want:
                failures.append((method, path, token, r.status_code, r.text[:200]))
            if want == 401:
                assert r.headers["www-authenticate"] == "Bearer"
                assert r.json()["error"] == "unauthorized"
    assert not failures, failures


async def test_merchant_sees_only_its_own(env: Env) -> None:
    async with env.client(MERCHANT) as c:
        r = await c.get("/v1/merchants")
        assert [m["mid"] for m in r.json()["items"]] == [MID]
        r = await c.get("/v1/terminals", params={"limit": 500})
        assert {t["mid"] for t in r.json()["items"]} == {MID}
        r = await c.get("/v1/reports/settlement", params={"date": "2026-11-23"})
        assert [row["mid"] for row in r.json()["rows"]] == [MID]


async def test_issued_token_works_until_revoked(env: Env) -> None:
    async with env.client() as admin:
        r = await admin.post("/v1/tokens", json={"name": "grafana", "role": "sre"})
        assert r.status_code == 201
        token = r.json()["token"]
        r = await admin.post("/v1/tokens", json={"name": "grafana", "role": "sre"})
        assert r.status_code == 409
        r = await admin.post("/v1/tokens", json={"name": "m", "role": "merchant"})
        assert r.status_code == 422 and r.json()["field"] == "mid"
        listed = (await admin.get("/v1/tokens")).json()
        assert "grafana" in {t["name"] for t in listed}
        assert token not in str(listed)
        # stored hashed: the token itself is nowhere in the table
        rows = await env.ctx.db.fetchall("SELECT token_hash FROM api_tokens")
        assert token not in str(rows) and "demo-admin-token" not in str(rows)
        async with env.client(token) as sre:
            assert (await sre.get("/metrics")).status_code == 200
            assert (await admin.delete("/v1/tokens/grafana")).status_code == 204
            assert (await sre.get("/metrics")).status_code == 401
