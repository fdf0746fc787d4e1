"""Two processes committing to one SQLite file: SQLite's busy handler vs ours.

    python -m bench.sqlite_lock [--processes 2] [--duration 5] [--rows 200] [--json]

Each process loops: take the write lock (BEGIN IMMEDIATE), insert a batch
of rows, COMMIT with synchronous=FULL, pause 0-2 ms (a group commit's
gathering time). The baseline is SQLite's own handler (``timeout=5``);
the other run is ``switchd.sqlite_write_lock.begin_immediate``. Printed:
commits/s and the wait for the lock (p50, p99, max), and the ratios.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import sqlite3
import tempfile
import time
from pathlib import Path

from switchd.sqlite_write_lock import begin_immediate


def _worker(path: str, mode: str, duration: float, rows: int, out: mp.Queue) -> None:  # type: ignore[type-arg]
    conn = sqlite3.connect(path, isolation_level=None, timeout=5)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    waits: list[float] = []
    end = time.monotonic() + duration
    while time.monotonic() < end:
        t0 = time.perf_counter()
        if mode == "sqlite":
            conn.execute("BEGIN IMMEDIATE")
        else:
            begin_immediate(conn, 5.0)
        waits.append(time.perf_counter() - t0)
        conn.executemany(
            "INSERT INTO t VALUES (?, ?)", [(random.random(), "x" * 50) for _ in range(rows)]
        )
        conn.execute("COMMIT")
        time.sleep(random.random() * 0.002)
    conn.close()
    out.put(waits)


def run(mode: str, processes: int, duration: float, rows: int, where: Path) -> dict[str, float]:
    path = where / f"lock-{mode}.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (a REAL, b TEXT)")
    conn.close()
    out: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    procs = [
        mp.Process(target=_worker, args=(str(path), mode, duration, rows, out))
        for _ in range(processes)
    ]
    for p in procs:
        p.start()
    waits = sorted(w for _ in procs for w in out.get())
    for p in procs:
        p.join()
    n = len(waits)
    return {
        "commits_per_s": n / duration,
        "wait_p50_ms": waits[n // 2] * 1e3,
        "wait_p99_ms": waits[min(n - 1, int(n * 0.99))] * 1e3,
        "wait_max_ms": waits[-1] * 1e3,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = run("sqlite", args.processes, args.duration, args.rows, Path(tmp))
        ours = run("fine", args.processes, args.duration, args.rows, Path(tmp))
    if args.json:
        print(json.dumps({"sqlite_handler": base, "begin_immediate": ours,
                          "commits_ratio": ours["commits_per_s"] / base["commits_per_s"]}))
        return
    for name, r in (("sqlite busy handler (baseline)", base), ("begin_immediate", ours)):
        print(f"{name:32s} {r['commits_per_s']:7.0f} commits/s  lock wait p50 "
              f"{r['wait_p50_ms']:.2f} ms  p99 {r['wait_p99_ms']:.2f} ms  "
              f"max {r['wait_max_ms']:.1f} ms")  # fmt: skip
    print(f"ratio (ours / baseline): commits/s {ours['commits_per_s'] / base['commits_per_s']:.2f}"
          f"x, p99 wait {ours['wait_p99_ms'] / base['wait_p99_ms']:.2f}x, max wait "
          f"{ours['wait_max_ms'] / base['wait_max_ms']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
