"""The shared backend: PostgreSQL through psycopg 3 and a connection pool.

Several switch processes (or machines) may write to one ledger. Correctness
rests on **row locks in READ COMMITTED**, not on there being one writer:

- each batch locks what it will change before reading it for a decision:
  `transfer_state` rows of the holds/originals it refers to, then the
  accounts it touches, then the terminals whose batch it closes, each with
  `SELECT ... ORDER BY key FOR UPDATE`. A locked row is read at its latest
  committed version, so a balance check never works on a stale balance;
- the order is the same in every process (states < accounts < terminals,
  ascending keys), so two batches cannot wait on each other in a cycle;
- a new row (transfer, account, state, terminal) is a plain INSERT: if
  another process inserted the same key since we looked, the INSERT fails
  with a unique violation, and the batch is retried from the start, when the
  lookup finds that row and answers "duplicate" or "exists with different
  content".

One race has no row to lock: a 0400 reversal whose original is not on
record tombstones the original's id (a `rejections` row) while another
process may be inserting that original into `transfers`. A transaction-scoped
advisory lock per ledger (the "new-id guard", see `core.Store`) closes it:
every batch that creates transfers takes it shared, first, before any row
lock; a batch with such a reversal takes it exclusively (found out while
loading; the batch is rolled back and run again, which is rare), so it
decides only after every batch that may insert that id has committed, and
every later one looks the id up only after the tombstone has committed.

Why not SERIALIZABLE: nearly every sale touches the same few hot rows (the
fee income account, a busy merchant). Under serializable isolation two
concurrent batches touching them conflict and one aborts after doing all its
work; with group commit batches are large, so each abort wastes a whole batch
and retries pile up exactly under load. Row locks make the second batch wait
for the first one's commit instead (a few milliseconds) and then proceed on
fresh values: no wasted work in the common case. Retries remain only for the
rare races above, for deadlocks (which the lock order should rule out) and
for serialization failures, up to `_RETRIES` times.

Durability: every connection runs with `synchronous_commit=on`, so COMMIT
returns only after the WAL record is flushed (to the standby too, when one is
configured synchronous).

Reads (`read`) take any pooled connection. psycopg's async API needs asyncio,
so all of this is the blocking API, called from worker threads.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import psycopg
import psycopg.errors
from psycopg import sql
from psycopg_pool import ConnectionPool

from .core import Changes, Group, NeedsExclusiveGuard, apply_batch, posted_as_transfer_row
from .migrations import CREATE_VERSION_TABLE, pending_migrations
from .model import CommitFailed, Result
from .queries import Dialect

T = TypeVar("T")
log = logging.getLogger("switchd.ledger")

#: Races with another process that a fresh attempt resolves.
_RETRYABLE = (
    psycopg.errors.SerializationFailure,
    psycopg.errors.DeadlockDetected,
    psycopg.errors.UniqueViolation,
    psycopg.errors.LockNotAvailable,
)
_RETRIES = 8
#: Key of the advisory lock that serializes migrations across processes.
_MIGRATION_LOCK = 0x5357_4C45_4447  # "SWLEDG"


def _guard_key(schema: str | None) -> int:
    """The advisory lock key of one ledger's new-id guard (core.Store.guard_new_ids).

    Advisory locks are per database; the schema is part of the key, so ledgers
    in two schemas of one database do not wait for each other."""
    digest = hashlib.blake2b(f"switchd-ledger-new-ids|{schema or ''}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


class _PgStore:
    concurrent = True

    def __init__(self, conn: psycopg.Connection[Any], guard_key: int) -> None:
        self.cur = conn.cursor()
        self.guard_key = guard_key

    def guard_new_ids(self, exclusive: bool) -> None:
        # Transaction-scoped: released by the COMMIT or ROLLBACK, never leaked.
        if exclusive:
            self.cur.execute("SELECT pg_advisory_xact_lock(%s)", (self.guard_key,))
        else:
            self.cur.execute("SELECT pg_advisory_xact_lock_shared(%s)", (self.guard_key,))

    def _rows(self, query: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        self.cur.execute(query, params)
        return self.cur.fetchall()

    def load_due_pending(self, now_us: int, limit: int) -> list[bytes]:
        # SKIP LOCKED: a hold another process is resolving right now is not
        # due for us; waiting on it in expiry order could deadlock.
        rows = self._rows(
            "SELECT id FROM transfer_state WHERE pending_state = 'pending'"
            " AND expires_at IS NOT NULL AND expires_at <= %s ORDER BY expires_at LIMIT %s"
            " FOR UPDATE SKIP LOCKED",
            (now_us, limit),
        )
        return [r[0] for r in rows]

    def load_states(self, ids: list[bytes]) -> list[tuple[Any, ...]]:
        return self._rows(
            "SELECT id, pending_state, expires_at, resolved_by, reversed_by, refunded"
            " FROM transfer_state WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
            (ids,),
        )

    def load_transfers(self, ids: list[bytes]) -> list[tuple[Any, ...]]:
        return self._rows(
            "SELECT id, type, debit_account_id, credit_account_id, amount, ref_id, expires_at,"
            " post_tolerance, fingerprint FROM transfers WHERE id = ANY(%s)",
            (ids,),
        )

    def load_rejections(self, ids: list[bytes]) -> list[tuple[Any, ...]]:
        return self._rows("SELECT id, fingerprint, code FROM rejections WHERE id = ANY(%s)", (ids,))

    def load_accounts(self, ids: list[bytes]) -> list[tuple[Any, ...]]:
        return self._rows(
            "SELECT id, kind, currency, owner, credit_limit, closed, debits_posted,"
            " credits_posted, debits_pending, credits_pending, created_at"
            " FROM accounts WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
            (ids,),
        )

    def load_terminal_batches(self, tids: list[str]) -> list[tuple[Any, ...]]:
        return self._rows(
            "SELECT terminal_id, current_batch FROM terminal_batches"
            " WHERE terminal_id = ANY(%s) ORDER BY terminal_id FOR UPDATE",
            (tids,),
        )

    def _unnest(
        self, head: str, types: Sequence[str], rows: list[tuple[Any, ...]], tail: str = ""
    ) -> None:
        """One statement for many rows: each column goes in as one array."""
        columns = [list(col) for col in zip(*rows, strict=True)]
        arrays = ", ".join(f"%s::{t}[]" for t in types)
        self.cur.execute(f"{head} SELECT * FROM unnest({arrays}) {tail}", columns)

    def write(self, ch: Changes) -> None:
        cur = self.cur
        if ch.new_accounts:
            cur.executemany(
                "INSERT INTO accounts VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)", ch.new_accounts
            )
        if ch.account_updates:
            columns = [list(col) for col in zip(*ch.account_updates, strict=True)]
            cur.execute(
                "UPDATE accounts a SET debits_posted = u.dp, credits_posted = u.cp,"
                " debits_pending = u.dpend, credits_pending = u.cpend, closed = u.closed"
                " FROM unnest(%s::int8[], %s::int8[], %s::int8[], %s::int8[], %s::int2[],"
                " %s::bytea[]) AS u(dp, cp, dpend, cpend, closed, id) WHERE a.id = u.id",
                columns,
            )
        if ch.new_transfers or ch.new_posted:
            # One statement, sorted, so two processes inserting overlapping ids
            # wait in one order.
            rows = sorted(
                ch.new_transfers + [posted_as_transfer_row(r) for r in ch.new_posted],
                key=lambda r: r[0],  # type: ignore[arg-type,return-value]
            )
            self._unnest(
                "INSERT INTO transfers",
                (
                    "bytea",
                    "text",
                    "bytea",
                    "bytea",
                    "int8",
                    "text",
                    "bytea",
                    "int8",
                    "int8",
                    "bytea",
                    "int8",
                    "text",
                    "text",
                    "int8",
                    "int8",
                    "text",
                    "int2",
                    "text",
                    "text",
                    "int2",
                ),
                rows,
            )
        if ch.new_states:
            self._unnest(
                "INSERT INTO transfer_state",
                ("bytea", "text", "int8", "bytea", "bytea", "int8"),
                sorted(ch.new_states, key=lambda r: r[0]),
            )  # type: ignore[arg-type,return-value]
        if ch.state_updates:
            cur.executemany(
                "UPDATE transfer_state SET pending_state = %s, resolved_by = %s,"
                " reversed_by = %s, refunded = %s WHERE id = %s",
                ch.state_updates,
            )
        if ch.rejections:
            self._unnest(
                "INSERT INTO rejections",
                ("bytea", "bytea", "text", "int8"),
                sorted(ch.rejections, key=lambda r: r[0]),
            )  # type: ignore[arg-type,return-value]
        if ch.batch_inserts:
            cur.executemany("INSERT INTO terminal_batches VALUES (%s,%s,%s)", ch.batch_inserts)
        if ch.batch_updates:
            cur.executemany(
                "UPDATE terminal_batches SET current_batch = %s, updated_at = %s"
                " WHERE terminal_id = %s",
                ch.batch_updates,
            )
        if ch.closures:
            cur.executemany(
                "INSERT INTO batch_closures VALUES (%s,%s,%s) ON CONFLICT DO NOTHING", ch.closures
            )


class PostgresBackend:
    """Blocking; every method runs in a worker thread, never on the event loop."""

    name = "postgres"

    def __init__(
        self,
        dsn: str,
        schema: str | None = None,
        pool_min: int = 1,
        pool_max: int = 8,
        connect_timeout_s: float = 10.0,
    ) -> None:
        self.dsn = dsn
        self.schema = schema
        self.dialect = Dialect("postgres")
        options = "-c synchronous_commit=on"
        if schema:
            # search_path instead of qualified names: the same SQL serves any
            # schema, which is how tests isolate themselves.
            options += f" -c search_path={schema}"
        # application_name lets an operator (and the fault tests) find our sessions.
        self.application_name = f"switchd-ledger:{schema or 'public'}"[:63]
        self._guard_key = _guard_key(schema)
        self._kwargs: dict[str, Any] = {
            "options": options,
            "autocommit": False,
            "application_name": self.application_name,
        }
        self._pool_min, self._pool_max = pool_min, pool_max
        self._timeout = connect_timeout_s
        self.pool: ConnectionPool[Any] | None = None

    def open(self) -> None:
        if self.schema:
            with psycopg.connect(
                self.dsn, autocommit=True, connect_timeout=int(self._timeout)
            ) as conn:
                conn.execute(
                    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema))
                )
        self.pool = ConnectionPool(
            self.dsn,
            min_size=self._pool_min,
            max_size=self._pool_max,
            kwargs=self._kwargs,
            timeout=self._timeout,
            open=False,
            check=ConnectionPool.check_connection,
        )
        self.pool.open(wait=True, timeout=self._timeout)
        with self.pool.connection() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute(CREATE_VERSION_TABLE)
            applied = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
            for version, description, statements in pending_migrations(applied, "postgres"):
                for stmt in statements:
                    conn.execute(stmt)  # type: ignore[arg-type]
                conn.execute(
                    "INSERT INTO schema_migrations VALUES (%s, %s, %s)",
                    (version, description, int(time.time() * 1e6)),
                )
            conn.commit()
            fsync = conn.execute("SHOW fsync").fetchone()
            conn.rollback()
        if fsync and fsync[0] != "on":
            # synchronous_commit=on means nothing if the server never flushes.
            log.warning("ledger: PostgreSQL runs with fsync=%s: commits are not durable", fsync[0])

    def apply(self, groups: Sequence[Group], now_us: int) -> list[Sequence[Result]]:
        assert self.pool is not None, "backend not open"
        last: Exception | None = None
        exclusive = False
        for attempt in range(_RETRIES):
            try:
                with self.pool.connection() as conn:
                    try:
                        store = _PgStore(conn, self._guard_key)
                        results = apply_batch(store, groups, now_us, exclusive)
                        conn.commit()
                        return results
                    except BaseException:
                        if not conn.closed:
                            conn.rollback()
                        raise
            except NeedsExclusiveGuard as exc:
                # A reversal whose original is not on record: it may tombstone
                # it, which is decided holding the guard exclusively. Nothing
                # conflicted, so no backoff.
                last = exc
                exclusive = True
            except _RETRYABLE as exc:
                last = exc
                # Jittered backoff so two processes do not collide again in step.
                time.sleep(random.uniform(0, 0.002 * 2**attempt))
            except psycopg.Error as exc:
                raise CommitFailed(
                    f"postgres: batch of {len(groups)} not committed ({type(exc).__name__}: "
                    f"{exc}); if the connection was lost during COMMIT the outcome is unknown:"
                    " resubmit the same ids"
                ) from exc
            except Exception as exc:  # pool timeout, connection refused
                raise CommitFailed(
                    f"postgres: batch of {len(groups)} not committed: {exc}"
                ) from exc
        raise CommitFailed(
            f"postgres: batch of {len(groups)} not committed after {_RETRIES} attempts: {last}"
        )

    def read(self, fn: Callable[[Any, Dialect], T]) -> T:
        assert self.pool is not None, "backend not open"
        with self.pool.connection() as conn:
            try:
                return fn(conn, self.dialect)
            finally:
                conn.rollback()  # end the read's snapshot before the pool takes it back

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None
