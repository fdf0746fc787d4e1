"""Ledger benchmark: durable transfers per second, group commit against one commit each.

    python -m bench.ledger [--n 50000] [--tasks 1000] [--baseline-n 3000]
                           [--backends sqlite,postgres] [--json]

For each backend, on a fresh database (a temporary SQLite file; a temporary
PostgreSQL schema, dropped afterwards), `--tasks` trio tasks submit `--n`
transfers (cardholder → merchant, one `Ledger.execute` each) through the real
writer with real durable commits (SQLite WAL + synchronous=FULL; PostgreSQL
synchronous_commit=on). Commit latency is measured per transfer, from submit
to the result (which arrives only after the commit). The baseline is the same
writer with `max_batch=1`: one database transaction and one commit per
transfer, in the same run (half before the group-commit run, half after, so
that fsync latency drifting on a shared machine weighs on both sides of the
ratio alike). `group_commit_speedup` is the smaller of the backends' ratios.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
import uuid
from typing import Any

import trio

from switchd.ledger import (
    AccountKind,
    CreateAccount,
    LedgerConfig,
    PostgresConfig,
    Transfer,
    WireMeta,
    open_ledger,
)

CARDS = 1_000
MERCHANTS = 50
SUSPENSE = 9
FUNDS = 10**12
DEFAULT_PG_DSN = "host=127.0.0.1 port=5432 dbname=test"


async def _setup(ledger: Any) -> tuple[list[int], list[int]]:
    cards = [1_000_000 + i for i in range(CARDS)]
    merchants = [2_000_000 + i for i in range(MERCHANTS)]
    ops: list[Any] = [CreateAccount(SUSPENSE, AccountKind.SUSPENSE, "156")]
    ops += [CreateAccount(c, AccountKind.CARDHOLDER, "156") for c in cards]
    ops += [CreateAccount(m, AccountKind.MERCHANT, "156") for m in merchants]
    ops += [Transfer(3_000_000 + i, SUSPENSE, c, FUNDS, "deposit") for i, c in enumerate(cards)]
    assert all(r.ok for r in await ledger.submit(ops))
    return cards, merchants


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def run_one(config: LedgerConfig, n: int, tasks: int, first_id: int) -> dict[str, Any]:
    rng = random.Random(7)
    async with open_ledger(config) as ledger:
        cards, merchants = await _setup(ledger)
        # Each transfer carries wire metadata as the daemon's will, so the
        # settlement and report indexes are maintained as in production.
        plan = []
        for i in range(n):
            m = rng.randrange(MERCHANTS)
            meta = WireMeta(terminal_id=f"T{m:07d}", merchant_id=f"M{m:014d}", batch=1,
                            stan=i % 1_000_000, kind="sale", rrn=f"{i:012d}",
                            masked_pan="622202******1234")
            plan.append(Transfer(first_id + i, rng.choice(cards), merchants[m],
                                 rng.randint(1, 100_000), "sale", meta=meta))
        latencies: list[float] = []
        failures = 0
        commits_before = ledger.commits

        async def worker(k: int) -> None:
            nonlocal failures
            for op in plan[k::tasks]:
                t0 = time.perf_counter()
                result = await ledger.execute(op)
                latencies.append(time.perf_counter() - t0)
                if not result.ok:
                    failures += 1

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for k in range(tasks):
                nursery.start_soon(worker, k)
        elapsed = time.perf_counter() - start
        commits = ledger.commits - commits_before
        # The figures count only what really posted: check it before printing.
        total = 0
        for m in merchants:
            acct = await ledger.account(m)
            assert acct is not None
            total += acct.balance
        assert failures == 0 and total == sum(op.amount for op in plan), "lost or extra transfers"
    latencies.sort()
    return {
        "per_s": n / elapsed,
        "p50_ms": _percentile(latencies, 0.50) * 1e3,
        "p99_ms": _percentile(latencies, 0.99) * 1e3,
        "seconds": elapsed,
        "commits": commits,
        "avg_batch": n / max(commits, 1),
        "latencies": latencies,
    }


def _config(backend: str, where: str, max_batch: int, dsn: str, writer: str) -> LedgerConfig:
    if backend == "sqlite":
        return LedgerConfig(data_dir=where, max_batch=max_batch, expiry_interval_s=3600,
                            writer=writer)  # type: ignore[arg-type]
    return LedgerConfig(backend="postgres", max_batch=max_batch, expiry_interval_s=3600,
                        postgres=PostgresConfig(dsn=dsn, schema=where, pool_max=4),
                        writer=writer)  # type: ignore[arg-type]


def _drop_schema(dsn: str, schema: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def _measure(backend: str, args: argparse.Namespace, n: int, max_batch: int) -> dict[str, Any]:
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="ledger-bench-") as where:
            cfg = _config(backend, where, max_batch, args.pg_dsn, args.writer)
            return trio.run(run_one, cfg, n, args.tasks, 10_000_000)  # type: ignore[no-any-return]
    schema = f"ledger_bench_{uuid.uuid4().hex[:10]}"
    try:
        cfg = _config(backend, schema, max_batch, args.pg_dsn, args.writer)
        return trio.run(run_one, cfg, n, args.tasks, 10_000_000)  # type: ignore[no-any-return]
    finally:
        _drop_schema(args.pg_dsn, schema)


def bench_backend(backend: str, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    # The baseline runs in two halves, before and after the group-commit run,
    # so that a disk whose fsync latency drifts during the run (a shared
    # machine) affects both sides of the ratio alike.
    half = max(args.baseline_n // 2, 1)
    before = _measure(backend, args, half, 1)
    group = _measure(backend, args, args.n, args.max_batch)
    after = _measure(backend, args, half, 1)
    latencies = sorted(before["latencies"] + after["latencies"])
    seconds = before["seconds"] + after["seconds"]
    baseline = {
        "per_s": 2 * half / seconds,
        "p50_ms": _percentile(latencies, 0.50) * 1e3,
        "p99_ms": _percentile(latencies, 0.99) * 1e3,
        "seconds": seconds,
        "commits": before["commits"] + after["commits"],
        "avg_batch": 1.0,
    }
    return {"group": group, "baseline": baseline}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ledger", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50_000, help="transfers with group commit")
    parser.add_argument("--baseline-n", type=int, default=3_000,
                        help="transfers with one commit each (slow: keep it small)")
    parser.add_argument("--tasks", type=int, default=1_000, help="concurrent submitting tasks")
    parser.add_argument("--max-batch", type=int, default=4096,
                        help="most operations in one group commit")
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--writer", choices=("thread", "process"), default="thread",
                        help="where batches are applied (LedgerConfig.writer)")
    parser.add_argument("--pg-dsn", default=DEFAULT_PG_DSN)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    report: dict[str, Any] = {"n": args.n, "baseline_n": args.baseline_n, "tasks": args.tasks,
                              "writer": args.writer}
    speedups = []
    for backend in args.backends.split(","):
        res = bench_backend(backend, args)
        g, b = res["group"], res["baseline"]
        speedup = g["per_s"] / b["per_s"]
        speedups.append(speedup)
        report.update({
            f"{backend}_per_s": round(g["per_s"]),
            f"{backend}_p50_ms": round(g["p50_ms"], 2),
            f"{backend}_p99_ms": round(g["p99_ms"], 2),
            f"{backend}_avg_batch": round(g["avg_batch"], 1),
            f"{backend}_baseline_per_s": round(b["per_s"]),
            f"{backend}_baseline_p50_ms": round(b["p50_ms"], 2),
            f"{backend}_baseline_p99_ms": round(b["p99_ms"], 2),
            f"{backend}_speedup": round(speedup, 1),
        })
        if not args.json:
            print(f"{backend:9} group commit : {g['per_s']:9,.0f} transfers/s"
                  f"  p50 {g['p50_ms']:7.2f} ms  p99 {g['p99_ms']:7.2f} ms"
                  f"  ({args.n} transfers, {g['commits']:.0f} commits,"
                  f" {g['avg_batch']:.0f}/commit)")
            print(f"{backend:9} one per txn  : {b['per_s']:9,.0f} transfers/s"
                  f"  p50 {b['p50_ms']:7.2f} ms  p99 {b['p99_ms']:7.2f} ms"
                  f"  ({2 * max(args.baseline_n // 2, 1)} transfers, before and after)")
            print(f"{backend:9} speedup      : {speedup:.1f}x")
    report["group_commit_speedup"] = round(min(speedups), 1) if speedups else None
    if args.json:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
