"""The OpenAPI document matches what is served, and schemathesis finds no server error."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import httpx
import jsonschema_rs
import pytest
import trio

from admin_api.app import operations

from .conftest import MID, Env

ST = Path(sys.executable).with_name("st")
#: Examples per operation: enough to hit every validation path, within the suite's budget.
MAX_EXAMPLES = int(os.environ.get("ADMIN_API_FUZZ_EXAMPLES", "50"))


async def test_document_lists_exactly_the_served_routes(env: Env, admin: httpx.AsyncClient) -> None:
    doc = (await admin.get("/openapi.json")).json()
    documented = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
    served = {(op.method, op.path) for op in operations()}
    assert documented == served
    # every served route answers something other than 404/405 at its documented path
    for method, path in sorted(documented):
        concrete = path.replace("{mid}", MID).replace("{tid}", "10000001")
        r = await admin.request(method, concrete.replace("{", "").replace("}", ""))
        assert r.status_code not in (405, 500), (method, path, r.status_code)
    page = await admin.get("/docs")
    assert page.status_code == 200 and "/openapi.json" in page.text


async def test_responses_match_their_schemas(env: Env, admin: httpx.AsyncClient) -> None:
    doc = (await admin.get("/openapi.json")).json()
    resolver_doc = {"components": doc["components"]}

    def check(path: str, method: str, status: int, body: object) -> None:
        spec = doc["paths"][path][method]["responses"][str(status)]
        schema = spec["content"]["application/json"]["schema"]
        validator = jsonschema_rs.Draft202012Validator({**schema, **resolver_doc})
        errors = [str(e) for e in validator.iter_errors(body)]
        assert not errors, (path, status, errors[:3])

    base = f"/v1/merchants/{MID}"
    await admin.post(f"{base}/products", json={"code": "P1", "name": "p", "price": 1_00})
    await admin.post(f"{base}/members", json={"member_id": "M1", "name": "m"})
    cases = [
        ("/v1/merchants", "/v1/merchants"),
        ("/v1/merchants/{mid}", f"/v1/merchants/{MID}"),
        ("/v1/terminals", "/v1/terminals?limit=3"),
        ("/v1/terminals/{tid}", "/v1/terminals/10000001"),
        ("/v1/transactions", "/v1/transactions"),
        ("/v1/merchants/{mid}/products", f"{base}/products"),
        ("/v1/merchants/{mid}/members", f"{base}/members"),
        ("/v1/merchants/{mid}/payment-methods", f"{base}/payment-methods"),
        ("/v1/merchants/{mid}/stock", f"{base}/stock"),
        ("/v1/reports/settlement", "/v1/reports/settlement?date=2026-11-23"),
        ("/v1/reports/batches", "/v1/reports/batches"),
        ("/healthz", "/healthz"),
        ("/readyz", "/readyz"),
        ("/v1/tokens", "/v1/tokens"),
    ]
    for path, url in cases:
        r = await admin.get(url)
        check(path, "get", r.status_code, r.json())
    r = await admin.get("/v1/merchants/000000000000000")
    check("/v1/merchants/{mid}", "get", 404, r.json())


@pytest.mark.parametrize(
    ("token", "examples", "extra"),
    [
        ("demo-admin-token", MAX_EXAMPLES, []),
        # A merchant's token on what it may read: scoping paths must not fail either.
        (f"demo-merchant-{MID}", 10, ["--include-method", "GET"]),
    ],
    ids=["admin", "merchant"],
)
async def test_schemathesis_finds_no_server_error(
    env: Env, tmp_path: Path, token: str, examples: int, extra: list[str]
) -> None:
    cmd = [
        str(ST), "run", f"{env.base}/openapi.json",
        "--checks", "not_a_server_error,status_code_conformance,response_schema_conformance,"
        "content_type_conformance",
        "--max-examples", str(examples),
        "--header", f"Authorization: Bearer {token}",
        # One worker: parallel workers are threads, and CPython 3.11's ast.parse (which
        # hypothesis uses to describe filters) is not thread-safe.
        "--workers", "1",
        "--seed", "1",
        "--phases", "examples,coverage,fuzzing",
        "--suppress-health-check", "all",
        "--report-dir", str(tmp_path),
        "--request-timeout", "20",
        # the token endpoints would revoke the token the run itself uses
        "--exclude-path-regex", "^/v1/tokens",
        *extra,
    ]  # fmt: skip
    with trio.fail_after(120):
        # cwd: schemathesis keeps a cache directory in the working directory.
        done = await trio.run_process(
            cmd, capture_stdout=True, capture_stderr=True, check=False, cwd=tmp_path
        )
    out = done.stdout.decode() + done.stderr.decode()
    assert done.returncode == 0, out[-6000:]
