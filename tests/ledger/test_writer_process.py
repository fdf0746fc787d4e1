"""The writer in a process of its own: the same answers as the thread writer, and
faults (a killed child, a failing commit) handled across the process boundary."""

from __future__ import annotations

import os
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from switchd.ledger import (
    CloseBatch,
    CommitFailed,
    LedgerConfig,
    PostPending,
    Reverse,
    Transfer,
    VoidPending,
    WireMeta,
    open_ledger,
)
from switchd.ledger.core import ExpireDue, Group

from .conftest import make_config
from .helpers import make_chart


@pytest.fixture(params=["sqlite", "postgres"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _configs(kind: str, tmp_path: Path, writer: str) -> Iterator[LedgerConfig]:
    where = tmp_path / writer
    where.mkdir()
    return make_config(kind, where, writer=writer, expiry_interval_s=3600)


async def _script(config: LedgerConfig) -> tuple[list[Any], list[Any]]:
    """Every kind of operation, failures and duplicates included; results and balances."""
    out: list[Any] = []
    async with open_ledger(config) as ledger:
        assert (ledger.process is not None) == (config.writer == "process")
        c = await make_chart(ledger)
        meta = WireMeta("T0000001", "M0001", 1, 11, "sale", rrn="000000000011",
                        masked_pan="622202******1234")  # fmt: skip
        big = 2**127 + 5  # ids are 128-bit: they must cross the process intact
        out.append(await ledger.submit_linked([
            Transfer(big, c.card, c.merchant, 1_000, "sale", meta=meta),
            Transfer(big + 1, c.merchant, c.fee, 6, "fee"),
        ]))  # fmt: skip
        out.append(await ledger.execute(Transfer(big, c.card, c.merchant, 1_000, "sale",
                                                 meta=meta)))  # same again: a duplicate
        out.append(await ledger.execute(Transfer(big, c.card, c.merchant, 999, "sale")))
        out.append(await ledger.execute(Transfer(20, c.card, c.merchant, 10**9, "sale")))
        out.append(await ledger.submit_linked([  # fails as a whole
            Transfer(21, c.card, c.merchant, 5, "sale"),
            Transfer(22, c.card2, c.merchant, 10**9, "sale"),
        ]))  # fmt: skip
        out.append(await ledger.execute(Transfer(30, c.card, c.merchant, 500, "preauth",
                                                 pending=True, post_tolerance=50)))  # fmt: skip
        out.append(await ledger.execute(PostPending(31, 30, 520)))
        out.append(await ledger.execute(Transfer(40, c.card, c.merchant, 300, "preauth",
                                                 pending=True)))  # fmt: skip
        out.append(await ledger.execute(VoidPending(41, 40)))
        out.append(await ledger.execute(Reverse(50, big)))
        out.append(await ledger.execute(Reverse(51, big)))
        out.append(await ledger.execute(Transfer(60, c.card2, c.card, 2_000, "p2p")))
        out.append(await ledger.execute(Transfer(61, c.merchant, c.card2, 100, "refund",
                                                 refund_of=60)))  # fmt: skip
        out.append(await ledger.execute(CloseBatch("T0000001", 1)))
        out.append(await ledger.execute(CloseBatch("T0000001", 1)))
        out.append(await ledger._enqueue([Group((ExpireDue(),))]))
        accounts = [await ledger.account(a) for a in (c.card, c.card2, c.merchant, c.fee)]
        assert await ledger.audit() == []
    return out, accounts


async def test_process_writer_answers_as_the_thread_writer(kind: str, tmp_path: Path) -> None:
    runs = []
    for writer in ("thread", "process"):
        gen = _configs(kind, tmp_path, writer)
        try:
            runs.append(await _script(next(gen)))
        finally:
            gen.close()
    (thread_results, thread_accounts), (process_results, process_accounts) = runs
    assert process_results == thread_results
    # Balances equal; creation times differ by the runs' clocks.
    strip = [(a.debits_posted, a.credits_posted, a.debits_pending, a.credits_pending)
             for a in thread_accounts]  # fmt: skip
    assert [(a.debits_posted, a.credits_posted, a.debits_pending, a.credits_pending)
            for a in process_accounts] == strip  # fmt: skip


async def test_killed_writer_process_loses_nothing(tmp_path: Path) -> None:
    """SIGKILL to the child mid-stream: its batch goes to a new child; every caller gets
    its real result, and the ledger holds each transfer exactly once."""
    config = LedgerConfig(data_dir=str(tmp_path), writer="process", expiry_interval_s=3600)
    async with open_ledger(config) as ledger:
        assert ledger.process is not None
        c = await make_chart(ledger, funds=10**9)
        acked: list[int] = []
        killed = False

        async def pay(i: int) -> None:
            nonlocal killed
            for k in range(20):
                op_id = 1_000_000 + i * 100 + k
                r = await ledger.execute(Transfer(op_id, c.card, c.merchant, 3, "sale"))
                assert r.ok, r
                acked.append(op_id)
                if len(acked) == 500 and not killed:
                    killed = True
                    pid = ledger.process.child.pid  # type: ignore[union-attr]
                    assert pid is not None
                    os.kill(pid, signal.SIGKILL)  # other batches are in flight

        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(pay, i)
        assert killed and ledger.process.restarts >= 1
        assert len(acked) == len(set(acked)) == 4_000
        merchant = await ledger.account(c.merchant)
        assert merchant is not None and merchant.balance == 3 * 4_000
        assert await ledger.audit() == []


async def test_commit_failure_in_the_child_fails_its_batch(tmp_path: Path) -> None:
    """A commit the child cannot make (the file locked by another process past the
    busy timeout) is CommitFailed for that batch's callers; the next batch commits."""
    config = LedgerConfig(data_dir=str(tmp_path), writer="process", expiry_interval_s=3600)
    async with open_ledger(config) as ledger:
        c = await make_chart(ledger)
        blocker = sqlite3.connect(config.sqlite_path(), isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(CommitFailed, match="locked"):
                await ledger.execute(Transfer(70, c.card, c.merchant, 10, "sale"))
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert await ledger.transfer(70) is None
        r = await ledger.execute(Transfer(70, c.card, c.merchant, 10, "sale"))
        assert r.ok and not r.duplicate
        assert ledger.process is not None and ledger.process.restarts == 0


async def test_writer_process_ends_with_the_ledger(tmp_path: Path) -> None:
    config = LedgerConfig(data_dir=str(tmp_path), writer="process", expiry_interval_s=3600)
    async with open_ledger(config) as ledger:
        assert ledger.process is not None
        proc = ledger.process.child._proc
        assert proc is not None and proc.returncode is None
        await make_chart(ledger)
    assert proc.returncode == 0


async def test_pipelined_batches_survive_a_kill_with_two_in_flight(tmp_path: Path) -> None:
    """Two batches on their way to the child at once (the pipeline is real), and a
    SIGKILL at that moment: both are sent again in order, each transfer posts once."""
    config = LedgerConfig(data_dir=str(tmp_path), writer="process", expiry_interval_s=3600)
    async with open_ledger(config) as ledger:
        process = ledger.process
        assert process is not None and ledger.writers == 2
        c = await make_chart(ledger, funds=10**9)
        most_in_flight = 0
        kills = 0
        send = process.child.send

        async def watched_send(body: bytes) -> None:
            nonlocal most_in_flight, kills
            await send(body)
            most_in_flight = max(most_in_flight, len(process._flights))
            if len(process._flights) == 2 and kills == 0:
                kills = 1
                pid = process.child.pid
                assert pid is not None
                os.kill(pid, signal.SIGKILL)

        process.child.send = watched_send  # type: ignore[method-assign]
        acked: list[int] = []

        async def pay(i: int) -> None:
            for k in range(10):
                op_id = 2_000_000 + i * 100 + k
                r = await ledger.execute(Transfer(op_id, c.card, c.merchant, 7, "sale"))
                assert r.ok, r
                acked.append(op_id)

        async with trio.open_nursery() as nursery:
            for i in range(300):
                nursery.start_soon(pay, i)
        assert most_in_flight == 2 and kills == 1 and process.restarts >= 1
        assert len(acked) == len(set(acked)) == 3_000
        merchant = await ledger.account(c.merchant)
        assert merchant is not None and merchant.balance == 7 * 3_000
        assert await ledger.audit() == []
