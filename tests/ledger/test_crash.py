"""Crash safety: SIGKILL in the middle of a stream loses no acknowledged transfer.

A real process (tests/ledger/crash_writer.py) streams transfers from 64
concurrent tasks and prints each id once its commit has returned; the test
kills it with SIGKILL after a few hundred acknowledgements, reopens the
ledger, and checks every printed id, their amounts, and the ledger's audit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from switchd.ledger import LedgerConfig, open_ledger

from .conftest import drop_schema, pg_config, pg_dsn
from .crash_writer import CARD, MERCHANT

ROOT = Path(__file__).resolve().parents[2]
ACKS_BEFORE_KILL = 2_000


def run_and_kill(args: list[str]) -> list[int]:
    proc = subprocess.Popen([sys.executable, "-u", "-m", "tests.ledger.crash_writer", *args],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    acked: list[int] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            acked.append(int(line))
            if len(acked) >= ACKS_BEFORE_KILL:
                os.kill(proc.pid, signal.SIGKILL)  # mid-stream: other commits are in flight
                break
        # Whatever was printed before the kill was acknowledged too.
        rest, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    acked.extend(int(x) for x in rest.split() if x.strip().isdigit())
    assert proc.returncode == -signal.SIGKILL, err
    assert len(acked) >= ACKS_BEFORE_KILL, err
    return acked


async def check_survivors(config: LedgerConfig, acked: list[int]) -> None:
    async with open_ledger(config) as ledger:
        missing = []
        for tid in acked:
            rec = await ledger.transfer(tid)
            if rec is None:
                missing.append(tid)
            else:
                assert rec.amount == 1 + tid % 97
        assert missing == []
        assert await ledger.audit() == []
        card = await ledger.account(CARD)
        merchant = await ledger.account(MERCHANT)
        assert card is not None and merchant is not None
        assert merchant.balance == card.debits_posted >= sum(1 + t % 97 for t in acked)


async def test_sigkill_sqlite(tmp_path: Path) -> None:
    acked = run_and_kill(["sqlite", str(tmp_path)])
    await check_survivors(LedgerConfig(data_dir=str(tmp_path)), acked)


async def test_sigkill_postgres() -> None:
    dsn = pg_dsn()
    if dsn is None:
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432 (start it, or .ci/run)")
    schema = f"ledger_crash_{uuid.uuid4().hex[:12]}"
    try:
        acked = run_and_kill(["postgres", dsn, schema])
        await check_survivors(pg_config(schema), acked)
    finally:
        drop_schema(dsn, schema)
