"""One writer shared by several processes' ledgers (`switchd run --workers N`):
the same answers as a writer of one's own, one transaction for batches that
arrive together, and a killed writer losing nothing."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import msgspec
import pytest
import trio

from switchd import childproc
from switchd.ledger import LedgerConfig, Transfer, open_ledger
from switchd.ledger.core import Group
from switchd.ledger.writer_process import _Writer, start_message
from switchd.shared_writer import SharedWriter, ledger_writer

from ..supervised import supervised
from .conftest import make_config
from .helpers import make_chart
from .test_writer_process import _script


@pytest.fixture(params=["sqlite", "postgres"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def shared(config: LedgerConfig, where: Path) -> AbstractAsyncContextManager[SharedWriter]:
    """A shared writer, started again whenever it exits (the supervisor's ``poll``)."""
    return supervised(ledger_writer(config, str(where)))


def through(config: LedgerConfig, writer: SharedWriter) -> LedgerConfig:
    return msgspec.structs.replace(config, writer_socket=writer.path)


async def test_shared_writer_answers_as_a_writer_of_ones_own(kind: str, tmp_path: Path) -> None:
    runs = []
    for name in ("own", "shared"):
        where = tmp_path / name
        where.mkdir()
        gen: Iterator[LedgerConfig] = make_config(kind, where, writer="process",
                                                  expiry_interval_s=3600)  # fmt: skip
        try:
            config = next(gen)
            if name == "own":
                runs.append(await _script(config))
            else:
                async with shared(config, where) as writer:
                    runs.append(await _script(through(config, writer)))
        finally:
            gen.close()
    (own_results, own_accounts), (shared_results, shared_accounts) = runs
    assert shared_results == own_results
    def balances(accounts: list) -> list[tuple[int, int, int, int]]:  # type: ignore[type-arg]
        return [(a.debits_posted, a.credits_posted, a.debits_pending, a.credits_pending)
                for a in accounts]  # fmt: skip

    assert balances(shared_accounts) == balances(own_accounts)


def test_batches_that_arrive_together_share_one_transaction(tmp_path: Path) -> None:
    """What several workers sent since the last commit is one transaction (one
    fsync), cut at max_batch groups on batch boundaries; each gets its own reply."""
    from switchd.ledger.writer_process import _Batch, _decode_reply, _encode

    config = LedgerConfig(data_dir=str(tmp_path), writer="process", max_batch=4)
    writer = _Writer(start_message(config))
    commits: list[int] = []
    apply = writer.backend.apply

    def counted(groups, now_us):  # type: ignore[no-untyped-def]
        commits.append(len(groups))
        return apply(groups, now_us)

    writer.backend.apply = counted  # type: ignore[method-assign]
    try:
        from switchd.ledger import AccountKind, CreateAccount

        setup = [Group((CreateAccount(1, AccountKind.SUSPENSE, "156"),)),
                 Group((CreateAccount(2, AccountKind.MERCHANT, "156"),))]  # fmt: skip
        writer.handle(_encode(_Batch(1, setup)))
        commits.clear()

        def batch(first: int, n: int) -> bytes:
            ops = [Group((Transfer(first + k, 1, 2, 10, "sale"),)) for k in range(n)]
            return _encode(_Batch(2, ops))

        replies = writer.handle_many([batch(100, 1), batch(200, 2), b"not json", batch(300, 3)])
        assert commits == [3, 3]  # 1 + 2 together; 3 alone (1 + 2 + 3 > max_batch 4)
        decoded = [_decode_reply(r) for r in (replies[0], replies[1], replies[3])]
        assert [len(d.results or []) for d in decoded] == [1, 2, 3]
        assert all(r is None for d in decoded for r in d.results or [])  # plain OKs
        assert _decode_reply(replies[2]).error is not None
        # A duplicate in a merged transaction answers as a duplicate, alone.
        again = writer.handle_many([batch(200, 1), batch(400, 1)])
        first = _decode_reply(again[0]).results
        assert first is not None and first[0] is not None and first[0][0].duplicate
        assert _decode_reply(again[1]).results == [None]
    finally:
        writer.close()


async def test_two_ledgers_through_one_writer_survive_its_kill(tmp_path: Path) -> None:
    """Two ledgers (two workers) write through one shared writer; it is SIGKILLed
    mid-stream and started again: every caller gets its real result and the
    ledger holds each transfer exactly once."""
    config = LedgerConfig(data_dir=str(tmp_path), writer="process", expiry_interval_s=3600)
    async with shared(config, tmp_path) as writer:
        cfg = through(config, writer)
        async with open_ledger(cfg) as a, open_ledger(cfg) as b:
            c = await make_chart(a, funds=10**9)
            acked: list[int] = []
            killed = False

            async def pay(ledger: object, i: int) -> None:
                nonlocal killed
                for k in range(20):
                    op_id = 1_000_000 + i * 100 + k
                    r = await ledger.execute(  # type: ignore[attr-defined]
                        Transfer(op_id, c.card, c.merchant, 3, "sale"))
                    assert r.ok, r
                    acked.append(op_id)
                    if len(acked) == 1_000 and not killed:
                        killed = True
                        assert writer.proc is not None
                        os.kill(writer.proc.pid, signal.SIGKILL)

            async with trio.open_nursery() as nursery:
                for i in range(200):
                    nursery.start_soon(pay, a if i % 2 else b, i)
            assert killed and a.process is not None and b.process is not None
            assert a.process.restarts + b.process.restarts >= 1
            assert len(acked) == len(set(acked)) == 4_000
            merchant = await b.account(c.merchant)
            assert merchant is not None and merchant.balance == 3 * 4_000
            assert await a.audit() == []


async def test_a_ledger_of_another_configuration_is_refused(tmp_path: Path) -> None:
    config = LedgerConfig(data_dir=str(tmp_path), writer="process", expiry_interval_s=3600)
    other = tmp_path / "other"
    other.mkdir()
    async with shared(config, tmp_path) as writer:
        stray = msgspec.structs.replace(config, data_dir=str(other), writer_socket=writer.path)
        with pytest.raises(childproc.ChildLost, match="another ledger configuration"):
            async with open_ledger(stray):
                pass


async def test_shared_writer_leaves_when_its_owner_closes_it(tmp_path: Path) -> None:
    config = LedgerConfig(data_dir=str(tmp_path), writer="process", expiry_interval_s=3600)
    writer = ledger_writer(config, str(tmp_path))
    writer.start()
    proc = writer.proc
    assert proc is not None
    async with open_ledger(through(config, writer)) as ledger:
        await make_chart(ledger)
    writer.close()
    assert proc.returncode == 0
    assert not Path(writer.path).exists()
