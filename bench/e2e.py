"""End-to-end benchmark: the switch against the transport ceiling, same generator, same run.

    python -m bench.e2e [--levels 100,1000,5000] [--duration 10] [--profile]
        [--out bench/results] [--json] [--quick]

Starts a fresh switch (``switchd run`` on embedded defaults in a new data
directory: SQLite ledger with synchronous=FULL, software HSM in-process,
demo data) and the ceiling (``bench.ceiling``: a bare trio server answering
each frame with one fixed frame of the same framing), each in its own
process, then:

1. memory: signs on ``--idle`` terminals that then stay idle, and reports
   the switch's RSS growth per 1,000 connections;
2. for each level of concurrent terminals: closed-loop approved sales
   (real PIN blocks and MACs, every answer checked) against the switch,
   then the same fleet against the ceiling; approved sales/s, latency
   percentiles, and the ratio switch / ceiling; the switch's peak RSS and
   the CPU each process used;
3. at the highest level, a run at 50 % of that level's peak rate, for the
   latency at a sustainable load;
4. with ``--profile``, py-spy samples the switch during the 1,000-terminal
   run (or the level nearest to it) and the top functions are reported.

Writes ``e2e-<time>.json`` and ``e2e-<time>.md`` under ``--out`` and prints
the markdown. ``--quick`` is a seconds-long smoke run (small demo data,
levels 10 and 40).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import psutil

from bench import procs, report
from bench.fleet import Fleet, FleetConfig, Worker, raise_fd_limit
from bench.report import add_run_options
from bench.stats import Stats

TARGETS = {
    "sales_per_s_at_1000": 8000,
    "p99_ms_at_5000_half_rate": 25,
    "ratio": 0.4,
    "mb_per_1000_idle": 50,
}


class Sampler:
    """The switch's peak RSS and CPU while a phase runs (a thread, 4 samples/s).

    Counts the process and its children (the workers of ``--workers N``).
    CPU is reported per wall second of the whole phase (sign-on, warm-up,
    window and settlement), the time the CPU seconds were spent in."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.cpu0 = self._cpu()
        self.wall0 = time.monotonic()
        self.cpu = 0.0
        self.wall = 0.0

    def _family(self) -> list[psutil.Process]:
        return [self.proc, *self.proc.children(recursive=True)]

    def _cpu(self) -> float:
        total = 0.0
        for p in self._family():
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def _rss(self) -> int:
        total = 0
        for p in self._family():
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            try:
                self.peak = max(self.peak, self._rss())
            except psutil.Error:
                return

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.wall = time.monotonic() - self.wall0
        with contextlib.suppress(psutil.Error):
            self.cpu = self._cpu() - self.cpu0


def fleet_run(cfg: FleetConfig) -> tuple[Stats, float]:
    """One fleet on uvloop; also returns the CPU seconds the generator used."""
    import uvloop

    cpu0 = time.process_time()

    async def go() -> Stats:
        return await Fleet(cfg).run(None)

    stats = uvloop.run(go())
    return stats, time.process_time() - cpu0


async def _idle(cfg: FleetConfig, switch: procs.Proc, hold_s: float) -> dict[str, object]:
    fleet = Fleet(cfg)
    workers = [Worker(fleet, i) for i in range(cfg.terminals)]
    await asyncio.sleep(1.0)
    before = switch.rss()
    results = await asyncio.gather(*(w.connect() for w in workers), return_exceptions=True)
    ok = sum(1 for r in results if not isinstance(r, BaseException))
    await asyncio.sleep(hold_s)  # let the switch settle: buffers, caches, GC
    during = switch.rss()
    for w in workers:
        if w.link is not None:
            w.link.close()
    await asyncio.sleep(1.0)
    after = switch.rss()
    per_1000 = (during - before) / max(ok, 1) * 1000 / 2**20
    errors = Counter(type(r).__name__ for r in results if isinstance(r, BaseException))
    return {
        "connections": ok, "rss_before_mb": round(before / 2**20, 1),
        "rss_idle_mb": round(during / 2**20, 1), "rss_after_close_mb": round(after / 2**20, 1),
        "mb_per_1000": round(per_1000, 2), "connect_errors": dict(errors),
    }  # fmt: skip


def idle_memory(cfg: FleetConfig, switch: procs.Proc, hold_s: float) -> dict[str, object]:
    import uvloop

    return uvloop.run(_idle(cfg, switch, hold_s))


def profile_top(raw_path: Path, n: int = 15) -> dict[str, list[tuple[str, float]]]:
    """Top functions by self samples, and self samples by file, from py-spy's raw output.

    Frames are ``function (file:line)``; lines are dropped so that a
    function's samples add up wherever in it they fell.
    """
    own: Counter[str] = Counter()
    by_file: Counter[str] = Counter()
    samples = 0
    for line in raw_path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        samples += c
        leaf = re.sub(r":\d+\)$", ")", stack.split(";")[-1])
        own[leaf] += c
        by_file[leaf.rpartition("(")[2].rstrip(")") or leaf] += c
    if not samples:
        return {"self": [], "by_file": []}

    def top(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(f, round(100 * c / samples, 1)) for f, c in counter.most_common(n)]

    return {"self": top(own), "by_file": top(by_file)}


def start_profile(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print("e2e: py-spy not found; no profile", file=sys.stderr)
        return None
    return subprocess.Popen(
        [spy, "record", "-p", str(pid), "-d", str(max(1, int(seconds))), "-r", "200",
         "-f", "raw", "-o", str(out), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def level_row(n: int, sw: Stats, ceil: Stats, sample: Sampler, gen_cpu: float,
              ceil_gen_cpu: float, ceil_wall: float) -> dict[str, object]:  # fmt: skip
    s, c = sw.summary(), ceil.summary()
    ratio = float(s["approved_sales_per_s"]) / max(float(c["responses_per_s"]), 1e-9)  # type: ignore[arg-type]
    secs = max(sample.wall, 1e-9)
    return {
        "terminals": n,
        "approved_sales_per_s": s["approved_sales_per_s"],
        "p50_ms": s["p50_ms"], "p90_ms": s["p90_ms"], "p99_ms": s["p99_ms"],
        "p999_ms": s["p999_ms"], "max_ms": s["max_ms"],
        "errors": s["errors"], "error_kinds": s["error_kinds"], "codes": s["codes"],
        "settlements_balanced": f"{s['settlements_balanced']}/{s['settlements']}",
        "ceiling_per_s": c["responses_per_s"], "ceiling_p50_ms": c["p50_ms"],
        "ceiling_p99_ms": c["p99_ms"], "ceiling_errors": c["errors"],
        "ratio": round(ratio, 3),
        "switch_cpu_pct": round(100 * sample.cpu / secs, 1),
        "generator_cpu_pct": round(100 * gen_cpu / secs, 1),
        "generator_cpu_pct_vs_ceiling": round(100 * ceil_gen_cpu / max(ceil_wall, 1e-9), 1),
        "switch_peak_rss_mb": round(sample.peak / 2**20, 1),
    }  # fmt: skip


def markdown(result: dict[str, object]) -> str:
    rows: list[dict[str, object]] = result["levels"]  # type: ignore[assignment]
    out = [
        f"# bench.e2e {result['started']}",
        "",
        f"Machine: {result['cpus']} CPUs; generator, switch ({result.get('workers', 1)}"
        " worker process(es)) and ceiling share them. "
        f"Closed-loop approved sales (PIN + MAC) for {result['duration_s']} s per level "
        f"after {result['warmup_s']} s of warm-up; "
        "ceiling = bare trio server answering each frame with a fixed frame, same generator.",
        "",
        "| terminals | approved sales/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms "
        "| ceiling/s | switch/ceiling | switch CPU % | generator CPU % | switch peak RSS MB "
        "| errors |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r['terminals']} | {r['approved_sales_per_s']} | {r['p50_ms']} | {r['p90_ms']} "
            f"| {r['p99_ms']} | {r['p999_ms']} | {r['max_ms']} | {r['ceiling_per_s']} "
            f"| {r['ratio']} | {r['switch_cpu_pct']} | {r['generator_cpu_pct']} "
            f"| {r['switch_peak_rss_mb']} | {r['errors']} |"
        )
    half = result.get("half_rate")
    if isinstance(half, dict):
        out += ["", f"At {half['terminals']} terminals and 50 % of that level's peak "
                f"({half['target_per_s']} sales/s): achieved {half['approved_sales_per_s']}/s, "
                f"p50 {half['p50_ms']} ms, p99 {half['p99_ms']} ms, p99.9 {half['p999_ms']} ms, "
                f"max {half['max_ms']} ms, errors {half['errors']}."]  # fmt: skip
    mem = result["idle_memory"]
    assert isinstance(mem, dict)
    out += ["", f"Idle memory: {mem['connections']} signed-on idle connections grew the switch "
            f"from {mem['rss_before_mb']} MB to {mem['rss_idle_mb']} MB: "
            f"**{mem['mb_per_1000']} MB per 1,000 connections**."]  # fmt: skip
    out += ["", "| target | goal | measured | met |", "|---|---:|---:|---|"]
    for name, (goal, got, ok) in dict(result["targets"]).items():  # type: ignore[call-overload]
        out.append(f"| {name} | {goal} | {got} | {'yes' if ok else 'NO'} |")
    prof = result.get("profile")
    if isinstance(prof, dict) and prof.get("self"):
        out += ["", f"py-spy, switch during the {prof['terminals']}-terminal run "
                "(% of samples, self):", ""]  # fmt: skip
        out += [f"- {pct} % {fn}" for fn, pct in prof["self"][:10]]
        out += ["", "Self samples by file:", ""]
        out += [f"- {pct} % {fn}" for fn, pct in prof["by_file"][:10]]
    return "\n".join(out) + "\n"


def targets(result: dict[str, object]) -> dict[str, tuple[object, object, bool]]:
    rows = {r["terminals"]: r for r in result["levels"]}  # type: ignore[union-attr,index]
    out: dict[str, tuple[object, object, bool]] = {}
    if 1000 in rows:
        v = rows[1000]["approved_sales_per_s"]
        out["approved sales/s at 1,000 terminals"] = (">= 8000", v, v >= 8000)
    half = result.get("half_rate")
    if isinstance(half, dict):
        v = half["p99_ms"]
        out[f"p99 at {half['terminals']} terminals, 50 % of peak"] = ("<= 25 ms", v, v <= 25)
    worst = min(float(r["ratio"]) for r in rows.values())
    out["switch/ceiling (worst level)"] = (">= 0.4", worst, worst >= 0.4)
    mem = result["idle_memory"]["mb_per_1000"]  # type: ignore[index]
    out["MB per 1,000 idle connections"] = ("<= 50", mem, mem <= 50)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.e2e", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--levels", default="100,1000,5000", help="concurrent terminals per level")
    add_run_options(p)
    p.add_argument("--idle", type=int, default=5000, help="idle connections for the memory figure")
    p.add_argument("--profile", action="store_true", help="py-spy the switch at ~1,000 terminals")
    p.add_argument("--keep", action="store_true", help="keep the switch's data directory")
    p.add_argument("--workers", type=int, default=1,
                   help="switch worker processes (switchd run --workers N); 1 = the default")
    args = p.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",")]
    per_merchant, cards = 5000, 10_000
    if args.quick:
        levels, args.duration, args.idle, per_merchant, cards = [10, 40], 1.5, 50, 40, 100
        args.warmup = 0.5
    raise_fd_limit()
    started = report.stamp()
    work = Path(tempfile.mkdtemp(prefix="switchd-e2e-"))
    conf = procs.write_switch_config(work / "var", terminals_per_merchant=per_merchant,
                                     cards=cards, workers=args.workers)  # fmt: skip
    base = FleetConfig(per_merchant=per_merchant, cards=(4, cards), duration=args.duration,
                       mix={"sale": 1}, progress=False, timeout=30.0,
                       warmup=args.warmup)  # fmt: skip
    result: dict[str, object] = {
        "started": started, "cpus": psutil.cpu_count(), "workers": args.workers,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "levels_requested": levels,
    }  # fmt: skip
    say = (lambda s: None) if args.json else (lambda s: print(s, file=sys.stderr, flush=True))
    say(f"e2e: starting the switch (fresh data in {work})")
    switch = procs.start_switch(conf, work / "switch.log", workers=args.workers)
    ceiling = procs.start_ceiling(work / "ceiling.log")
    try:
        base.port = switch.port
        say(f"e2e: idle memory with {args.idle} signed-on connections")
        result["idle_memory"] = idle_memory(
            _with(base, terminals=args.idle), switch, 3.0 if not args.quick else 0.5
        )
        rows = []
        prof_level = min(levels, key=lambda n: abs(n - 1000)) if args.profile else None
        for n in levels:
            say(f"e2e: {n} terminals against the switch")
            spy = None
            if n == prof_level:
                spy = start_profile(switch.pid, args.duration - 1, work / "pyspy.raw")
            with Sampler(switch.pid) as sample:
                sw, gen_cpu = fleet_run(_with(base, terminals=n, port=switch.port))
            if spy is not None:
                spy.wait(60)
                raw = work / "pyspy.raw"
                top = profile_top(raw) if raw.exists() else {"self": [], "by_file": []}
                result["profile"] = {"terminals": n, **top}
            say(f"e2e: {n} terminals against the ceiling")
            ceil_start = time.monotonic()
            ceil, ceil_cpu = fleet_run(_with(base, terminals=n, port=ceiling.port, ceiling=True,
                                             settle=False))  # fmt: skip
            ceil_wall = time.monotonic() - ceil_start
            rows.append(level_row(n, sw, ceil, sample, gen_cpu, ceil_cpu, ceil_wall))
            say(f"e2e:   {rows[-1]['approved_sales_per_s']} sales/s, p99 {rows[-1]['p99_ms']} ms,"
                f" ceiling {rows[-1]['ceiling_per_s']}/s, ratio {rows[-1]['ratio']}")  # fmt: skip
        result["levels"] = rows
        top_n = max(levels)
        peak = float(next(r for r in rows if r["terminals"] == top_n)["approved_sales_per_s"])  # type: ignore[arg-type]
        if peak > 0:
            say(f"e2e: {top_n} terminals at 50 % of peak ({peak / 2:.0f}/s)")
            # Long enough a warm-up that every terminal has sent a few requests at this
            # rate: the window must not consist of each session's first request.
            warm = min(30.0, 2 * top_n / (peak / 2) + args.warmup)
            half, _ = fleet_run(_with(base, terminals=top_n, port=switch.port, rate=peak / 2,
                                      warmup=warm))  # fmt: skip
            h = half.summary()
            result["half_rate"] = {"terminals": top_n, "target_per_s": round(peak / 2),
                                   "warmup_s": round(warm, 1), **{
                k: h[k] for k in ("approved_sales_per_s", "p50_ms", "p90_ms", "p99_ms",
                                  "p999_ms", "max_ms", "errors", "error_kinds")}}  # fmt: skip
    finally:
        ceiling.stop(5)
        rc = switch.stop()
        result["switch_exit_code"] = rc
    result["targets"] = targets(result)
    report.publish(args.out, "e2e", result, markdown(result), args.json, say)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    errors = sum(int(r["errors"]) + int(r["ceiling_errors"]) for r in rows)  # type: ignore[arg-type]
    return 1 if errors else 0


def _with(cfg: FleetConfig, **changes: object) -> FleetConfig:
    from dataclasses import replace

    return replace(cfg, **changes)  # type: ignore[arg-type]


if __name__ == "__main__":
    sys.exit(main())
