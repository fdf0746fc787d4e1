"""Invariants under random operation sequences (hypothesis stateful testing), both backends.

Random batches of transfers, holds, posts, voids, reversals and refunds,
drawn from a small id space so that duplicates, conflicting reuse of ids and
references to the wrong kind of transfer are common, go through the real
writer (concurrently, so they share commits). After every step:

- the ledger's own audit: cached balances equal the sums of the transfers
  (posted and pending), the sum of all balances is zero, no account is below
  its limit;
- every operation first answered OK is on record;
- idempotency: an operation submitted again gets its first answer, marked
  duplicate, and no balance moves.
"""

from __future__ import annotations

import tempfile
import threading
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from switchd.ledger import (
    AccountKind,
    CreateAccount,
    Ledger,
    LedgerConfig,
    Op,
    PostPending,
    Result,
    ResultCode,
    Reverse,
    Transfer,
    VoidPending,
    open_ledger,
)

from .conftest import drop_schema, pg_config, pg_dsn

CARDS = [11, 12, 13]
MERCHANTS = [21, 22]
FEE, SUSPENSE = 31, 41
ACCOUNTS = [*CARDS, *MERCHANTS, FEE, SUSPENSE]


class Harness:
    """A ledger running in its own trio loop on a thread, driven synchronously."""

    def __init__(self, config: LedgerConfig) -> None:
        self.config = config
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._thread, daemon=True)
        self.thread.start()
        self.ready.wait(30)
        if self.error is not None:
            raise self.error

    def _thread(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:
            self.error = exc
            self.ready.set()

    async def _main(self) -> None:
        async with open_ledger(self.config) as ledger:
            self.ledger: Ledger = ledger
            self.token = trio.lowlevel.current_trio_token()
            self.stop = trio.Event()
            self.ready.set()
            await self.stop.wait()

    def call(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        return trio.from_thread.run(fn, *args, trio_token=self.token)

    def close(self) -> None:
        trio.from_thread.run_sync(self.stop.set, trio_token=self.token)
        self.thread.join(30)


ids = st.integers(1, 40)
amounts = st.integers(1, 3_000)
accounts = st.sampled_from(ACCOUNTS)
plain = st.builds(lambda i, d, c, a: Transfer(i, d, c, a, "sale"), ids, accounts, accounts,
                  amounts)
hold = st.builds(lambda i, d, c, a, t: Transfer(i, d, c, a, "preauth", pending=True,
                                                 post_tolerance=t),
                 ids, st.sampled_from(CARDS), st.sampled_from(MERCHANTS), amounts,
                 st.integers(0, 300))
post = st.builds(PostPending, ids, ids, st.none() | amounts)
void = st.builds(VoidPending, ids, ids)
reverse = st.builds(Reverse, ids, ids)
refund = st.builds(lambda i, d, c, a, o: Transfer(i, d, c, a, "refund", refund_of=o),
                   ids, st.sampled_from(MERCHANTS), st.sampled_from(CARDS), amounts, ids)
operations = st.one_of(plain, plain, hold, post, void, reverse, refund)
groups = st.lists(st.tuples(st.booleans(), st.lists(operations, min_size=1, max_size=3)),
                  min_size=1, max_size=6)


class LedgerMachine(RuleBasedStateMachine):
    backend = "sqlite"

    def __init__(self) -> None:
        super().__init__()
        if self.backend == "sqlite":
            self.tmp = tempfile.TemporaryDirectory()
            config = LedgerConfig(data_dir=self.tmp.name)
            self.schema = None
        else:
            self.schema = f"ledger_stateful_{uuid.uuid4().hex[:12]}"
            config = pg_config(self.schema)
        self.h = Harness(config)
        create = [CreateAccount(c, AccountKind.CARDHOLDER, "156") for c in CARDS[:2]]
        create.append(CreateAccount(CARDS[2], AccountKind.CARDHOLDER, "156", credit_limit=500))
        create += [CreateAccount(m, AccountKind.MERCHANT, "156") for m in MERCHANTS]
        create += [CreateAccount(FEE, AccountKind.FEE_INCOME, "156"),
                   CreateAccount(SUSPENSE, AccountKind.SUSPENSE, "156")]
        assert all(r.ok for r in self.h.call(self.h.ledger.submit, create))
        funding = [Transfer(1_000 + c, SUSPENSE, c, 5_000, "deposit") for c in CARDS]
        assert all(r.ok for r in self.h.call(self.h.ledger.submit, funding))
        # First answers of operations submitted alone, to check idempotency with.
        self.answers: dict[int, tuple[Op, Result]] = {}
        self.ok_ids: set[int] = {1_000 + c for c in CARDS}

    def teardown(self) -> None:
        self.h.close()
        if self.schema is not None:
            drop_schema(pg_dsn(), self.schema)  # type: ignore[arg-type]
        else:
            self.tmp.cleanup()

    @rule(batch=groups)
    def submit(self, batch: list[tuple[bool, list[Op]]]) -> None:
        ledger = self.h.ledger
        out: list[tuple[bool, list[Op], list[Result]]] = []

        async def run() -> None:
            async def one(linked: bool, ops: list[Op]) -> None:
                if linked:
                    out.append((True, ops, await ledger.submit_linked(ops)))
                else:
                    out.append((False, ops, await ledger.submit(ops)))

            async with trio.open_nursery() as nursery:
                for linked, ops in batch:
                    nursery.start_soon(one, linked, ops)

        self.h.call(run)
        for linked, ops, results in out:
            assert len(results) == len(ops)
            if linked and not all(r.ok for r in results):
                assert sum(r.code is not ResultCode.LINKED_EVENT_FAILED for r in results) <= 1
            for op, result in zip(ops, results, strict=True):
                assert result.code is not ResultCode.INTERNAL_ERROR
                if result.ok:
                    self.ok_ids.add(op.id)  # type: ignore[union-attr]
                if (not linked and not result.duplicate
                        and result.code is not ResultCode.ID_EXISTS_DIFFERENT):
                    self.answers.setdefault(op.id, (op, result))  # type: ignore[union-attr]

    def _balances(self) -> list[tuple[int, int, int, int]]:
        async def read() -> list[tuple[int, int, int, int]]:
            out = []
            for a in ACCOUNTS:
                acct = await self.h.ledger.account(a)
                assert acct is not None
                out.append((acct.debits_posted, acct.credits_posted, acct.debits_pending,
                            acct.credits_pending))
            return out

        return self.h.call(read)  # type: ignore[no-any-return]

    @rule(pick=st.integers(0, 10**6))
    def resubmit(self, pick: int) -> None:
        # Which answers exist depends on how the concurrent submissions were
        # scheduled, so the choice is drawn independently of them (hypothesis
        # needs the same draws for the same test case).
        if not self.answers:
            return
        keys = sorted(self.answers)
        key = keys[pick % len(keys)]
        op, first = self.answers[key]
        before = self._balances()
        again = self.h.call(self.h.ledger.execute, op)
        assert again.code is first.code and again.duplicate, (op, first, again)
        assert self._balances() == before

    @invariant()
    def ledger_is_consistent(self) -> None:
        assert self.h.call(self.h.ledger.audit) == []

    @invariant()
    def acknowledged_transfers_exist(self) -> None:
        async def check() -> list[int]:
            return [i for i in sorted(self.ok_ids) if await self.h.ledger.transfer(i) is None]

        assert self.h.call(check) == []


class PostgresLedgerMachine(LedgerMachine):
    backend = "postgres"


_common = {"deadline": None, "suppress_health_check": list(HealthCheck)}
TestSqliteLedger = LedgerMachine.TestCase
TestSqliteLedger.settings = settings(max_examples=100, stateful_step_count=25, **_common)


@pytest.mark.skipif(pg_dsn() is None, reason="PostgreSQL is not reachable on 127.0.0.1:5432")
class TestPostgresLedger(PostgresLedgerMachine.TestCase):  # type: ignore[name-defined,misc]
    settings = settings(max_examples=30, stateful_step_count=20, **_common)
