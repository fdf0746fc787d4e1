"""The writer: group commit, concurrency with duplicates, draining, faults, several writers."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import msgspec
import psycopg
import pytest
import trio
import trio.testing

from switchd.ledger import (
    AccountKind,
    CommitFailed,
    CreateAccount,
    LedgerClosed,
    LedgerConfig,
    PostPending,
    Result,
    ResultCode,
    Reverse,
    Transfer,
    VoidPending,
    open_ledger,
    queries,
    sqlite_backend,
)
from switchd.ledger import postgres_backend as pgb
from switchd.ledger.core import Group
from switchd.ledger.postgres_backend import PostgresBackend
from switchd.ledger.sqlite_backend import SqliteBackend

from .conftest import make_config, pg_dsn
from .helpers import CNY, make_chart

RC = ResultCode


async def _create_cards(ledger, n_cards: int, funds: int, suspense: int) -> list[int]:  # type: ignore[no-untyped-def]
    cards = [50_000 + i for i in range(n_cards)]
    res = await ledger.submit([CreateAccount(c, AccountKind.CARDHOLDER, CNY) for c in cards])
    assert all(r.ok for r in res)
    res = await ledger.submit([Transfer(60_000 + i, suspense, c, funds, "deposit")
                               for i, c in enumerate(cards)])
    assert all(r.ok for r in res)
    return cards


async def test_concurrent_submissions_with_duplicates(config: LedgerConfig) -> None:
    """3,000 concurrent tasks, each id submitted three times; every id posts exactly once."""
    rng = random.Random(4)
    async with open_ledger(config) as ledger:
        chart = await make_chart(ledger, funds=0)
        cards = await _create_cards(ledger, 40, 10_000, chart.suspense)
        plan = {}
        for i in range(1_000):
            plan[1_000_000 + i] = Transfer(1_000_000 + i, rng.choice(cards), chart.merchant,
                                           rng.randint(1, 900), "sale")
        submissions = [op for op in plan.values() for _ in range(3)]
        rng.shuffle(submissions)
        results: dict[int, list[Result]] = {tid: [] for tid in plan}
        commits_before = ledger.commits

        async def one(op: Transfer) -> None:
            results[op.id].append(await ledger.execute(op))

        async with trio.open_nursery() as nursery:
            for op in submissions:
                nursery.start_soon(one, op)
        assert ledger.commits - commits_before < len(submissions) / 10  # group commit happened

        expected = {c: 10_000 for c in cards}
        merchant = 0
        for tid, rs in results.items():
            assert len(rs) == 3
            assert len({r.code for r in rs}) == 1, rs  # every copy got the same answer
            assert sum(not r.duplicate for r in rs) == 1, rs  # and exactly one was first
            if rs[0].ok:
                expected[plan[tid].debit_account_id] -= plan[tid].amount
                merchant += plan[tid].amount
            else:
                assert rs[0].code is RC.INSUFFICIENT_FUNDS
        for card, balance in expected.items():
            acct = await ledger.account(card)
            assert acct is not None and acct.balance == balance >= 0
        assert (await ledger.account(chart.merchant)).balance == merchant  # type: ignore[union-attr]
        assert await ledger.audit() == []


async def test_close_drains_queue_then_refuses(config: LedgerConfig) -> None:
    results: list[Result] = []
    async with trio.open_nursery() as outer:
        async with open_ledger(config) as ledger:
            chart = await make_chart(ledger, funds=1_000_000)

            async def one(i: int) -> None:
                results.append(await ledger.execute(
                    Transfer(2_000_000 + i, chart.card, chart.merchant, 1, "sale")))

            for i in range(500):
                outer.start_soon(one, i)
            await trio.testing.wait_all_tasks_blocked()
        # The ledger closed with 500 operations queued: all were committed.
        assert len(results) == 500 and all(r.ok for r in results)
        with pytest.raises(LedgerClosed):
            await ledger.execute(Transfer(3, chart.card, chart.merchant, 1, "sale"))
    async with open_ledger(config) as ledger:
        assert (await ledger.account(chart.card)).balance == 1_000_000 - 500  # type: ignore[union-attr]


async def test_each_caller_gets_its_own_result_list(config: LedgerConfig) -> None:
    # The backend answers plain OKs with one shared tuple; callers of submit
    # still get lists of their own.
    async with open_ledger(config) as ledger:
        chart = await make_chart(ledger)
        first = await ledger.submit([Transfer(7_001, chart.card, chart.merchant, 1, "sale")])
        assert type(first) is list and first == [Result(RC.OK)]
        first.append(Result(RC.INTERNAL_ERROR))
        second = await ledger.submit([Transfer(7_002, chart.card, chart.merchant, 1, "sale")])
        assert type(second) is list and second == [Result(RC.OK)]
        assert (await ledger.execute(Transfer(7_003, chart.card, chart.merchant, 1, "sale"))).ok


async def test_bad_operation_does_not_kill_writer(config: LedgerConfig) -> None:
    async with open_ledger(config) as ledger:
        chart = await make_chart(ledger)
        junk = await ledger.submit(["not an op", 42])  # type: ignore[list-item]
        assert [r.code for r in junk] == [RC.INTERNAL_ERROR, RC.INTERNAL_ERROR]
        mixed = await ledger.submit_linked([Transfer(5, chart.card, chart.merchant, 1, "sale"),
                                            None])  # type: ignore[list-item]
        assert [r.code for r in mixed] == [RC.LINKED_EVENT_FAILED, RC.INTERNAL_ERROR]
        assert (await ledger.execute(Transfer(5, chart.card, chart.merchant, 1, "sale"))).ok
        assert await ledger.audit() == []


async def test_sqlite_disk_full_fails_batch_and_recovers(tmp_path: Path) -> None:
    config = LedgerConfig(data_dir=str(tmp_path))
    backend = SqliteBackend(config.sqlite_path())
    async with open_ledger(config, backend=backend) as ledger:
        chart = await make_chart(ledger)
        conn = backend._writer
        assert conn is not None
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        # A real SQLITE_FULL: the database may not grow by a single page.
        conn.execute(f"PRAGMA max_page_count={pages}")
        ops = [Transfer(4_000_000 + i, chart.card, chart.merchant, 1, "sale",) for i in range(3000)]
        with pytest.raises(CommitFailed, match="full"):
            await ledger.submit(ops)
        conn.execute("PRAGMA max_page_count=1073741823")
        ok = await ledger.execute(Transfer(5_000_000, chart.card, chart.merchant, 7, "sale"))
        assert ok.ok and not ok.duplicate
        assert await ledger.transfer(4_000_000) is None  # nothing of the failed batch remains
        assert (await ledger.account(chart.card)).balance == 100_000 - 7  # type: ignore[union-attr]
        assert ledger.failed_commits == 1
        again = await ledger.submit(ops)  # resubmitting after the failure is safe
        assert all(r.ok and not r.duplicate for r in again)
        assert await ledger.audit() == []


async def test_postgres_connection_lost_fails_batch_and_recovers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gen = make_config("postgres", tmp_path)
    config = next(gen)
    try:
        async with open_ledger(config) as ledger:
            chart = await make_chart(ledger)
            kill = {"armed": True}
            original = pgb._PgStore.load_accounts

            def load_accounts(self: pgb._PgStore, ids: list[bytes]):  # type: ignore[no-untyped-def]
                if kill["armed"]:
                    kill["armed"] = False
                    # The server ends this session mid-transaction, as a crash or
                    # a network cut would.
                    pid = self.cur.connection.info.backend_pid
                    with psycopg.connect(pg_dsn(), autocommit=True) as other:  # type: ignore[arg-type]
                        other.execute("SELECT pg_terminate_backend(%s)", (pid,))
                return original(self, ids)

            monkeypatch.setattr(pgb._PgStore, "load_accounts", load_accounts)
            ops = [Transfer(6_000_000 + i, chart.card, chart.merchant, 1, "sale")
                   for i in range(50)]
            with pytest.raises(CommitFailed, match="postgres"):
                await ledger.submit(ops)
            assert await ledger.transfer(6_000_000) is None
            again = await ledger.submit(ops)
            assert all(r.ok and not r.duplicate for r in again)
            assert (await ledger.account(chart.card)).balance == 100_000 - 50  # type: ignore[union-attr]
            assert await ledger.audit() == []
    finally:
        gen.close()


async def test_postgres_two_writers_share_one_ledger(tmp_path: Path) -> None:
    """Two switch nodes (two writers, two pools) on one schema: hot accounts, shared ids."""
    gen = make_config("postgres", tmp_path)
    config = next(gen)
    try:
        rng = random.Random(9)
        async with open_ledger(config) as a, open_ledger(config) as b:
            chart = await make_chart(a, funds=0)
            cards = await _create_cards(a, 20, 5_000, chart.suspense)
            plan = [Transfer(7_000_000 + i, rng.choice(cards), chart.merchant,
                             rng.randint(1, 400), "sale") for i in range(1_500)]
            results: dict[int, list[Result]] = {op.id: [] for op in plan}

            async def one(ledger, op: Transfer) -> None:  # type: ignore[no-untyped-def]
                results[op.id].append(await ledger.execute(op))

            async with trio.open_nursery() as nursery:
                for op in plan:
                    nursery.start_soon(one, a, op)
                    nursery.start_soon(one, b, op)  # the same request reaching both nodes
            expected = {c: 5_000 for c in cards}
            for op in plan:
                rs = results[op.id]
                assert len({r.code for r in rs}) == 1 and sum(not r.duplicate for r in rs) == 1
                if rs[0].ok:
                    expected[op.debit_account_id] -= op.amount
            for card, balance in expected.items():
                assert (await b.account(card)).balance == balance >= 0  # type: ignore[union-attr]
            assert await a.audit() == []
    finally:
        gen.close()


def test_sqlite_writer_sees_what_another_connection_committed(tmp_path: Path) -> None:
    # The writer keeps account rows between batches; a second writer on the
    # same file (not a deployment, but it must not lose money) commits in
    # between: the first one's next batch works on the balances on disk.
    path = tmp_path / "l.sqlite3"
    first, second = SqliteBackend(path), SqliteBackend(path)
    first.open()
    second.open()
    try:
        card, merchant, suspense = 1001, 1002, 1003
        setup = [CreateAccount(card, AccountKind.CARDHOLDER, CNY),
                 CreateAccount(merchant, AccountKind.MERCHANT, CNY),
                 CreateAccount(suspense, AccountKind.SUSPENSE, CNY),
                 Transfer(1, suspense, card, 100, "deposit")]
        assert all(r[0].ok for r in first.apply([Group((op,)) for op in setup], 1))
        assert first.apply([Group((Transfer(2, card, merchant, 30, "sale"),))], 2)[0][0].ok
        assert second.apply([Group((Transfer(3, card, merchant, 50, "sale"),))], 3)[0][0].ok
        # 20 left: a sale of 30 must be refused, one of 20 must pass.
        refused = first.apply([Group((Transfer(4, card, merchant, 30, "sale"),))], 4)[0][0]
        assert refused.code is RC.INSUFFICIENT_FUNDS
        assert first.apply([Group((Transfer(5, card, merchant, 20, "sale"),))], 5)[0][0].ok
        acct = first.read(lambda conn, d: queries.get_account(conn, d, card))
        assert acct is not None and acct.balance == 0
        assert first.read(lambda conn, d: queries.audit(conn, d)) == []
    finally:
        first.close()
        second.close()


def test_sqlite_settings_are_durable(tmp_path: Path) -> None:
    backend = SqliteBackend(tmp_path / "l.sqlite3")
    backend.open()
    conn = backend._writer
    assert conn is not None
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    backend.close()


def test_postgres_settings_are_durable(tmp_path: Path) -> None:
    gen = make_config("postgres", tmp_path)
    config = next(gen)
    try:
        backend = PostgresBackend(config.postgres.dsn, schema=config.postgres.schema)
        backend.open()
        assert backend.read(lambda conn, d: conn.execute("SHOW synchronous_commit").fetchone()[0]
                            ) == "on"
        backend.close()
    finally:
        gen.close()


def test_sqlite_error_type_is_real() -> None:
    # Guards the disk-full test: SQLITE_FULL reaches us as sqlite3.OperationalError.
    assert issubclass(sqlite3.OperationalError, sqlite3.Error)


async def test_cancelled_ledger_answers_everyone(config: LedgerConfig) -> None:
    """Cancelling the ledger under load: each caller hears OK (committed) or LedgerClosed."""
    outcomes: dict[int, object] = {}
    small = msgspec.structs.replace(config, max_batch=100)  # several commits queued
    async with trio.open_nursery() as outer:
        with trio.CancelScope() as scope:
            async with open_ledger(small) as ledger:
                chart = await make_chart(ledger, funds=10**9)

                async def one(i: int) -> None:
                    try:
                        outcomes[i] = await ledger.execute(
                            Transfer(8_000_000 + i, chart.card, chart.merchant, 1, "sale"))
                    except LedgerClosed as exc:
                        outcomes[i] = exc

                for i in range(2_000):
                    outer.start_soon(one, i)
                await trio.testing.wait_all_tasks_blocked()
                scope.cancel()
    assert len(outcomes) == 2_000
    committed = sum(isinstance(o, Result) for o in outcomes.values())
    assert 0 < committed < 2_000
    async with open_ledger(config) as ledger:
        for i, outcome in outcomes.items():
            on_record = await ledger.transfer(8_000_000 + i) is not None
            if isinstance(outcome, Result):
                assert outcome.ok and on_record
            else:
                assert not on_record
        assert await ledger.audit() == []


def test_config_is_validated() -> None:
    config = msgspec.toml.decode(b'backend = "postgres"\n[postgres]\ndsn = "host=db"\n',
                                 type=LedgerConfig)
    assert config.backend == "postgres" and config.postgres.dsn == "host=db"
    with pytest.raises(msgspec.ValidationError, match="max_batch"):
        msgspec.toml.decode(b"max_batch = 0", type=LedgerConfig)
    with pytest.raises(msgspec.ValidationError, match=r"\$\.postgres"):
        msgspec.toml.decode(b"[postgres]\nbogus = 1", type=LedgerConfig)


async def test_postgres_two_writers_mixed_operations(tmp_path: Path) -> None:
    """Holds, posts, voids, reversals and refunds on shared rows from two writers.

    Each post/void/reverse/refund targets a transfer that both nodes may be
    resolving at once; the ledger must stay consistent, without deadlocks or
    lost updates, and each referenced transfer is resolved at most once.
    """
    gen = make_config("postgres", tmp_path)
    config = next(gen)
    try:
        rng = random.Random(11)
        async with open_ledger(config) as a, open_ledger(config) as b:
            chart = await make_chart(a, funds=0)
            cards = await _create_cards(a, 10, 50_000, chart.suspense)
            base = [Transfer(9_000_000 + i, rng.choice(cards), chart.merchant,
                             rng.randint(1, 500), "sale", pending=(i % 2 == 0))
                    for i in range(300)]
            assert all(r.ok for r in await a.submit(base))
            ops = []
            for i, original in enumerate(base):
                for node in range(2):  # two competing resolutions of each transfer
                    new_id = 9_100_000 + 10 * i + node
                    if original.pending:
                        ops.append(rng.choice([PostPending(new_id, original.id),
                                               VoidPending(new_id, original.id)]))
                    else:
                        ops.append(rng.choice([
                            Reverse(new_id, original.id),
                            Transfer(new_id, chart.merchant, original.debit_account_id,
                                     original.amount, "refund", refund_of=original.id)]))
            rng.shuffle(ops)
            results: list[tuple[object, Result]] = []

            async def one(ledger, op) -> None:  # type: ignore[no-untyped-def]
                results.append((op, await ledger.execute(op)))

            async with trio.open_nursery() as nursery:
                for k, op in enumerate(ops):
                    nursery.start_soon(one, a if k % 2 else b, op)
            resolved: dict[int, int] = {}
            for op, result in results:
                target = getattr(op, "pending_id", None) or getattr(op, "original_id", None) \
                    or op.refund_of  # type: ignore[attr-defined]
                if result.ok:
                    resolved[target] = resolved.get(target, 0) + 1
            assert all(count == 1 for count in resolved.values())
            assert len(resolved) == len(base)  # each one resolved by exactly one node
            assert await b.audit() == []
    finally:
        gen.close()


async def test_postgres_reversal_racing_its_original_across_writers(tmp_path: Path) -> None:
    """A 0400 reaching node b while node a commits its sale: the sale never stays posted
    un-reversed. Either the reversal sees the sale and reverses it, or it tombstones
    the id first and the sale is refused (ALREADY_REVERSED), whichever commits second."""
    gen = make_config("postgres", tmp_path)
    config = next(gen)
    try:
        rng = random.Random(13)
        async with open_ledger(config) as a, open_ledger(config) as b:
            chart = await make_chart(a, funds=0)
            cards = await _create_cards(a, 20, 10**6, chart.suspense)
            results: dict[int, Result] = {}

            async def one(ledger, op, delay: float) -> None:  # type: ignore[no-untyped-def]
                await trio.sleep(delay)
                results[op.id] = await ledger.execute(op)

            pairs = []
            for wave in range(12):  # each wave: both nodes' batches start together,
                # spread over a few milliseconds so that each order happens
                sales = [Transfer(7_500_000 + 100 * wave + i, rng.choice(cards), chart.merchant,
                                  rng.randint(1, 400), "sale") for i in range(60)]
                undo = [Reverse(7_700_000 + 100 * wave + i, s.id) for i, s in enumerate(sales)]
                async with trio.open_nursery() as nursery:
                    for s, r in zip(sales, undo, strict=True):
                        nursery.start_soon(one, a, s, rng.uniform(0, 0.01))
                        nursery.start_soon(one, b, r, rng.uniform(0, 0.01))
                pairs += zip(sales, undo, strict=True)
            outcomes = set()
            for s, r in pairs:
                sale, reversal = results[s.id], results[r.id]
                outcomes.add((sale.code, reversal.code))
                if sale.ok:  # committed first: the reversal saw it and reversed it
                    assert reversal.ok, (sale, reversal)
                    record = await b.transfer(s.id)
                    assert record is not None and record.reversed_by == r.id
                else:  # tombstoned first: the late sale is refused
                    assert sale.code is RC.ALREADY_REVERSED and sale.duplicate, (sale, reversal)
                    assert reversal.code is RC.ORIGINAL_NOT_FOUND
                    assert await b.transfer(s.id) is None
            for card in cards:  # every sale undone one way or the other
                assert (await a.account(card)).balance == 10**6  # type: ignore[union-attr]
            assert await a.audit() == []
    finally:
        gen.close()


async def test_concurrent_reads_share_thread_hops_and_keep_their_own_errors(
    config: LedgerConfig,
) -> None:
    async with open_ledger(config) as ledger:
        c = await make_chart(ledger)
        got: dict[int, object] = {}
        failures: list[BaseException] = []

        def broken(conn: object, dialect: object) -> None:
            raise ValueError("a broken query")

        async def read(i: int) -> None:
            if i % 100 == 0:
                try:
                    await ledger._read(broken)
                except ValueError as exc:
                    failures.append(exc)
                return
            account = await ledger.account(c.card if i % 2 else c.merchant)
            got[i] = account.id if account is not None else None

        async with trio.open_nursery() as nursery:
            for i in range(2_000):
                nursery.start_soon(read, i)
        assert len(failures) == 20
        assert got == {i: (c.card if i % 2 else c.merchant) for i in range(2_000) if i % 100}


async def test_a_read_cancelled_while_queued_leaves_the_queue(config: LedgerConfig) -> None:
    async with open_ledger(config) as ledger:
        c = await make_chart(ledger)
        with trio.CancelScope() as scope:
            scope.cancel()
            await ledger.account(c.card)  # queued, then cancelled before any reader ran
        assert scope.cancelled_caught and not ledger._reads.queue
        account = await ledger.account(c.card)
        assert account is not None and account.id == c.card


def _wal_restarts(wal: Path) -> int:
    """The WAL header's checkpoint sequence number: one more each time the WAL starts over."""
    return int.from_bytes(wal.read_bytes()[12:16], "big")


async def test_sqlite_wal_starts_over_while_commits_keep_coming(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpointer thread copies the WAL while the writer goes on committing, and
    the WAL starts over again and again: it does not grow with the commits, and the
    writer's own automatic checkpoint is only a backstop far away."""
    monkeypatch.setattr(sqlite_backend, "CHECKPOINT_EVERY_S", 0.1)
    config = LedgerConfig(data_dir=str(tmp_path))
    backend = SqliteBackend(config.sqlite_path())
    wal = Path(f"{config.sqlite_path()}-wal")
    async with open_ledger(config, backend=backend) as ledger:
        chart = await make_chart(ledger, funds=10**9)
        assert backend._writer is not None
        assert backend._writer.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 50_000
        first = _wal_restarts(wal)
        n = 0
        end = trio.current_time() + 2.0
        while trio.current_time() < end:  # (a submission is not cancellable once queued)
            ops = [Transfer(10**12 + n + k, chart.card, chart.merchant, 1, "sale")
                   for k in range(300)]  # fmt: skip
            results = await ledger.submit(ops)
            assert all(r.ok for r in results), {r.code for r in results}
            n += 300
        assert _wal_restarts(wal) - first >= 5
        assert (await ledger.account(chart.card)).balance == 10**9 - n  # type: ignore[union-attr]
        assert await ledger.audit() == []
    # Everything committed is in the database file once the ledger is closed.
    with sqlite3.connect(config.sqlite_path()) as conn:
        assert conn.execute("SELECT count(*) FROM transfers WHERE code = 'sale'").fetchone()[0] == n
