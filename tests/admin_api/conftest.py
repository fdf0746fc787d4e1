"""A real switch (embedded HSM, SQLite ledger, small demo data) with the admin
API next to it in the same trio nursery, and HTTP clients over a real socket."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio

from admin_api.context import AdminContext
from admin_api.migrations import (
    DEMO_ADMIN_TOKEN,
    DEMO_SRE_TOKEN,
    demo_merchant_token,
    ensure_demo_tokens,
    migrate,
)
from admin_api.server import serve_admin
from switchd.config import Ledger
from switchd.daemon import Switch
from tests.switchd.conftest import small_config

MID = "898100012340001"
MID2 = "898100012340002"


@dataclass
class Env:
    switch: Switch
    ctx: AdminContext
    base: str

    def client(self, token: str | None = DEMO_ADMIN_TOKEN) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(base_url=self.base, headers=headers, timeout=20)


async def start_env(nursery: trio.Nursery, data_dir: Path, **overrides: object) -> Env:
    sw = Switch(small_config(data_dir, **overrides))
    await nursery.start(sw.run)
    assert sw.services is not None
    await migrate(sw.services.store.db)
    await ensure_demo_tokens(sw.services.store.db)
    ctx = AdminContext.from_services(sw.services, sw)
    port = await nursery.start(serve_admin, ctx, "127.0.0.1", 0)
    return Env(sw, ctx, f"http://127.0.0.1:{port}")


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with trio.open_nursery() as nursery:
        e = await start_env(nursery, tmp_path / "var")
        yield e
        e.switch.stop()
        nursery.cancel_scope.cancel()


@pytest.fixture
async def pg_env(tmp_path: Path) -> AsyncIterator[Env]:
    """The same, with the switch database and the ledger on PostgreSQL."""
    from tests.ledger.conftest import drop_schema, pg_dsn

    dsn = pg_dsn()
    if dsn is None:
        pytest.skip("no PostgreSQL server reachable (set SWITCHD_TEST_PG_DSN)")
    schema = f"admin_api_{secrets.token_hex(4)}"
    ledger = Ledger(backend="postgres", postgres_dsn=dsn, postgres_schema=schema)
    try:
        async with trio.open_nursery() as nursery:
            e = await start_env(nursery, tmp_path / "var", ledger=ledger)
            yield e
            e.switch.stop()
            nursery.cancel_scope.cancel()
    finally:
        drop_schema(dsn, schema)
        drop_schema(dsn, schema + "_switch")


@pytest.fixture
async def admin(env: Env) -> AsyncIterator[httpx.AsyncClient]:
    async with env.client() as c:
        yield c


__all__ = ["DEMO_ADMIN_TOKEN", "DEMO_SRE_TOKEN", "MID", "MID2", "Env", "demo_merchant_token"]
