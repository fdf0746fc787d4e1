"""Worker scaling: the same fleet against 1, 2, ... worker processes, same run.

    python -m bench.scaling [--workers 1,2] [--terminals 1000] [--duration 10]
        [--out bench/results] [--json] [--quick]

For each worker count a fresh switch (``switchd run --workers N``, embedded
defaults, new data directory) takes, from the same generator:

1. closed-loop approved sales at ``--terminals`` terminals: sales/s and
   latency percentiles;
2. a run at one fixed rate for every worker count, half the first count's
   peak: the latency each gives at the same offered load;
3. a run at half its own peak (bench.e2e's sustainable-load figure).

During the closed-loop window it reads the CPU each of the switch's
processes used, by role: the workers (terminals, checks, HSM, answers),
the ledger writer and the journal writer (each one for all workers) and the
supervisor. From those it says what the design gives on a machine with
more cores: the workers scale with the cores; the one ledger writer does
not, and its CPU per sale bounds the whole machine (so does the one journal
writer's, at one core's worth of it; short of that it shares the workers'
cores). A projection, and a cautious one: it takes the writers' CPU per
sale at this run's batch sizes (a busier writer commits larger batches,
which cost less per sale), and it leaves out the generator (on other
machines there) and contention for the memory bus and the disk.

The first worker count is the baseline every ratio is against. Writes
``scaling-<time>.json`` and ``.md`` under ``--out`` and prints the markdown.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from bench import procs, report
from bench.e2e import _with, fleet_run
from bench.fleet import FleetConfig, raise_fd_limit
from bench.report import add_run_options
from bench.stats import Stats

#: Core counts the projection is written for.
PROJECT_CORES = (4, 16)
#: Seconds between two CPU readings of the switch's processes.
SAMPLE_EVERY_S = 0.2


def role(cmdline: list[str], is_root: bool, workers: int) -> str:
    """What a switch process does, from its command line."""
    line = " ".join(cmdline)
    if "journal_writer" in line:
        return "journal"
    if "writer_process" in line:
        return "ledger"
    if "--worker" in cmdline or (is_root and workers == 1):
        return "worker"
    return "supervisor"


class RoleCpu:
    """CPU seconds per role of the switch's processes, read every SAMPLE_EVERY_S
    (a thread), so that a window's share can be cut out afterwards."""

    def __init__(self, pid: int, workers: int) -> None:
        self.root = psutil.Process(pid)
        self.workers = workers
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def read(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for p in (self.root, *self.root.children(recursive=True)):
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                r = role(p.cmdline(), p.pid == self.root.pid, self.workers)
                out[r] = out.get(r, 0.0) + t.user + t.system
        return out

    def _run(self) -> None:
        while True:
            self.samples.append((time.perf_counter(), self.read()))
            if self._stop.wait(SAMPLE_EVERY_S):
                return

    def __enter__(self) -> RoleCpu:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def between(self, start: float, end: float) -> tuple[float, dict[str, float]]:
        """The seconds between the samples nearest to start and end, and each
        role's CPU seconds in them (a restarted process's CPU is lost: the
        role's total can only be read from the processes alive)."""
        first = min(self.samples, key=lambda s: abs(s[0] - start))
        last = min(self.samples, key=lambda s: abs(s[0] - end))
        cpu = {r: max(0.0, v - first[1].get(r, 0.0)) for r, v in last[1].items()}
        return last[0] - first[0], cpu


def _summary(stats: Stats) -> dict[str, object]:
    s = stats.summary()
    return {k: s[k] for k in ("approved_sales_per_s", "p50_ms", "p90_ms", "p99_ms", "p999_ms",
                              "max_ms", "errors", "error_kinds")}  # fmt: skip


def measure(workers: int, base: FleetConfig, work: Path, fixed_rate: float | None,
            say: Callable[[str], None]) -> dict[str, object]:  # fmt: skip
    """One worker count: a fresh switch, closed loop, then the rate runs."""
    data = work / f"workers-{workers}"
    conf = procs.write_switch_config(data / "var", terminals_per_merchant=base.per_merchant,
                                     cards=base.cards[1], workers=workers)  # fmt: skip
    switch = procs.start_switch(conf, data / "switch.log", workers=workers)
    row: dict[str, object] = {"workers": workers}
    try:
        cfg = _with(base, port=switch.port)
        say(f"scaling: {workers} worker(s), {cfg.terminals} terminals, closed loop")
        with RoleCpu(switch.pid, workers) as cpu:
            stats, _ = fleet_run(cfg)
        closed = _summary(stats)
        assert stats.window_start is not None and stats.window_end is not None
        seconds, by_role = cpu.between(stats.window_start, stats.window_end)
        sales = float(closed["approved_sales_per_s"]) * seconds  # type: ignore[arg-type]
        row["closed_loop"] = closed
        row["cpu_us_per_sale"] = {r: round(v / max(sales, 1e-9) * 1e6, 1)
                                  for r, v in sorted(by_role.items())}  # fmt: skip
        row["switch_cpu_pct"] = round(100 * sum(by_role.values()) / max(seconds, 1e-9), 1)
        peak = float(closed["approved_sales_per_s"])  # type: ignore[arg-type]
        rates = {"fixed_rate": fixed_rate or peak / 2, "half_own_peak": peak / 2}
        for name, rate in rates.items():
            if rate <= 0:
                continue
            say(f"scaling: {workers} worker(s) at {rate:.0f} sales/s ({name})")
            # Every terminal sends a few requests at this rate before the window.
            warm = min(30.0, 2 * cfg.terminals / rate + cfg.warmup)
            run, _ = fleet_run(_with(cfg, rate=rate, warmup=warm))
            row[name] = {"target_per_s": round(rate), **_summary(run)}
    finally:
        row["switch_exit_code"] = switch.stop()
    return row


def projection(row: dict[str, object]) -> dict[str, object]:
    """Sales/s on more cores from one run's CPU per sale by role (see the docstring)."""
    per = row["cpu_us_per_sale"]
    assert isinstance(per, dict)
    serial = float(per.get("ledger", 0.0))
    journal = float(per.get("journal", 0.0))
    parallel = sum(float(v) for r, v in per.items() if r != "ledger")
    out: dict[str, object] = {
        "ledger_writer_us_per_sale": serial,
        "rest_us_per_sale": round(parallel, 1),
        "ledger_writer_cap_per_s": round(1e6 / serial) if serial else None,
        # One process too, but light: it shares the workers' cores (it is in
        # `rest`), and bounds the machine only at its one core's worth.
        "journal_writer_cap_per_s": round(1e6 / journal) if journal else None,
    }
    for cores in PROJECT_CORES:
        # Cores left to the workers once the ledger writer has its own.
        out[f"cores_{cores}_per_s"] = round(min(
            (cores - 1) * 1e6 / max(parallel, 1e-9),
            1e6 / serial if serial else float("inf"),
            1e6 / journal if journal else float("inf"),
        ))  # fmt: skip
    return out


def markdown(result: dict[str, object]) -> str:
    rows: list[dict[str, object]] = result["rows"]  # type: ignore[assignment]
    baseline = rows[0]
    base_rate = float(baseline["closed_loop"]["approved_sales_per_s"])  # type: ignore[index]
    out = [
        f"# bench.scaling {result['started']}",
        "",
        f"Machine: {result['cpus']} CPUs, shared by the generator and the switch. "
        f"{result['terminals']} terminals, closed-loop approved sales (PIN + MAC) for "
        f"{result['duration_s']} s after {result['warmup_s']} s of warm-up. "
        f"Baseline: {baseline['workers']} worker(s).",
        "",
        "| workers | sales/s | vs baseline | p50 ms | p99 ms | switch CPU % "
        "| CPU µs/sale by role | errors |",
        "|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        c = r["closed_loop"]
        assert isinstance(c, dict)
        roles = ", ".join(f"{k} {v}" for k, v in r["cpu_us_per_sale"].items())  # type: ignore[attr-defined]
        out.append(
            f"| {r['workers']} | {c['approved_sales_per_s']} "
            f"| {float(c['approved_sales_per_s']) / max(base_rate, 1e-9):.2f}x "
            f"| {c['p50_ms']} | {c['p99_ms']} | {r['switch_cpu_pct']} | {roles} | {c['errors']} |"
        )
    for name, title in (("fixed_rate", "the same rate for all (half the baseline's peak)"),
                        ("half_own_peak", "half of each one's own peak")):  # fmt: skip
        out += ["", f"At {title}:", "", "| workers | target/s | achieved/s | p50 ms | p99 ms "
                "| p99.9 ms | errors |", "|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for r in rows:
            h = r.get(name)
            if isinstance(h, dict):
                out.append(
                    f"| {r['workers']} | {h['target_per_s']} | {h['approved_sales_per_s']} "
                    f"| {h['p50_ms']} | {h['p99_ms']} | {h['p999_ms']} | {h['errors']} |"
                )
    last = rows[-1]
    proj = last["projection"]
    assert isinstance(proj, dict)
    cores = ", ".join(f"{c} cores ~{proj[f'cores_{c}_per_s']}/s" for c in PROJECT_CORES)
    out += ["", f"Projection from the {last['workers']}-worker run: the ledger writer spends "
            f"{proj['ledger_writer_us_per_sale']} µs of CPU per sale (one process for all "
            f"workers: at most ~{proj['ledger_writer_cap_per_s']} sales/s on one core); "
            f"everything else {proj['rest_us_per_sale']} µs, which spreads over the other "
            f"cores (of it, the one journal writer's share caps the machine at "
            f"~{proj['journal_writer_cap_per_s']} sales/s). "
            f"With the generator on other machines: {cores}."]  # fmt: skip
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--workers", default="1,2", help="worker counts; the first is the baseline")
    p.add_argument("--terminals", type=int, default=1000, help="concurrent terminals")
    add_run_options(p)
    args = p.parse_args(argv)
    counts = [int(x) for x in args.workers.split(",")]
    per_merchant, cards = 5000, 10_000
    if args.quick:
        args.terminals, args.duration, args.warmup, per_merchant, cards = 20, 1.5, 0.5, 40, 100
    raise_fd_limit()
    started = report.stamp()
    work = Path(tempfile.mkdtemp(prefix="switchd-scaling-"))
    base = FleetConfig(terminals=args.terminals, per_merchant=per_merchant, cards=(4, cards),
                       duration=args.duration, warmup=args.warmup, mix={"sale": 1},
                       progress=False, timeout=30.0)  # fmt: skip
    say = (lambda s: None) if args.json else (lambda s: print(s, file=sys.stderr, flush=True))
    rows: list[dict[str, object]] = []
    fixed: float | None = None
    try:
        for n in counts:
            row = measure(n, base, work, fixed, say)
            row["projection"] = projection(row)
            if fixed is None:
                fixed = float(row["closed_loop"]["approved_sales_per_s"]) / 2  # type: ignore[index]
            rows.append(row)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result: dict[str, object] = {
        "started": started, "cpus": psutil.cpu_count(), "terminals": args.terminals,
        "duration_s": args.duration, "warmup_s": args.warmup, "rows": rows,
    }  # fmt: skip
    report.publish(args.out, "scaling", result, markdown(result), args.json, say)
    errors = 0
    for r in rows:
        for k in ("closed_loop", "fixed_rate", "half_own_peak"):
            part = r.get(k)
            errors += int(part["errors"]) if isinstance(part, dict) else 0
        errors += int(r["switch_exit_code"] != 0)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
