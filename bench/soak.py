"""Soak: the fleet's mix for a long run while misbehaving clients and an HSM cut hit the switch.

    python -m bench.load --soak 10m [--terminals 100] [--rate STEPS_PER_S] [--json]

Starts the software HSM as its own process and a fresh switch (demo data,
SQLite ledger) whose ``[hsm]`` points at it (``embedded = false``; the KEK
and demo TMK under the LMK are computed once here, as a key ceremony
would). Then, all at once, for the duration:

- the fleet: ``--terminals`` well-behaved terminals running the default mix;
  answers 91/96/98 while the HSM is cut (until ``HSM_GRACE_S`` after it is
  back) and lost answers are *tolerated* (counted apart), and every lost
  answer is reversed as a terminal does; anything else unexpected, and a
  91/96/98 outside the HSM's cut, is an error;
- garbage: connections sending random bodies, impossible lengths, bad TPDUs;
- wrong MACs: a signed-on terminal whose sales carry a corrupted MAC, which
  must each be answered A0 and move no money;
- stalls: batches of connections that send half a frame and stop; the
  switch must close each within its frame timeout;
- storms: thousands of connects and disconnects in a burst;
- the HSM process is SIGKILLed at 30 % of the run and started again on the
  same port some seconds later;
- with ``--workers N`` (2 or more): one worker process is SIGKILLed at 60 %
  of the run; the supervisor must start another within WORKER_BACK_S, and
  the killed worker's terminals reconnect to the others (their lost
  answers are tolerated and settled as for any lost answer: reversed, or a
  refund advice sent again).

At the end: the switch must still serve (sign-on and a PIN-verified
balance inquiry), its memory must have levelled off (RSS growth over the
second half at most 20 % of the midpoint or 50 MB), it is stopped
(SIGTERM, must exit 0), and the ledger is opened read-only: every card's
available balance must equal 100,000.00 minus what the fleet saw approved
for it (cards with an unresolved outcome are listed apart), and the
ledger's own audit must be clean. Exit code 0 only when all of this holds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench import procs
from bench.fleet import (
    EXPIRY,
    PIN,
    START_BALANCE,
    Fleet,
    FleetConfig,
    Link,
    Tally,
    Unanswered,
    Worker,
    raise_fd_limit,
)  # fmt: skip
from bench.sim import Terminal
from bench.stats import format_summary
from fastpath import requests as rq
from switchd.config import Config
from switchd.demo import demo_pan
from switchd.ledger import card_account_id
from switchd.ledger import queries as lq

CARDS = 10_000
#: First fleet index of the misbehaving clients: the second merchant's terminals.
ROGUE_FIRST = 5000
STALL_BATCH = 50
STALL_EVERY_S = 10.0
STORM_SIZE = 3000
FRAME_TIMEOUT_S = Config().terminals.frame_timeout_s
HSM_DOWN_S = 10.0
#: After the HSM is back: the pool's reconnect backoff (up to 10 s) plus a
#: transaction timeout (5 s) and some slack, during which 91/96/98 may still come.
HSM_GRACE_S = 20.0
#: RSS the switch may still gain over the second half of a soak without it counting as growth.
MEMORY_SLACK_MB = 50.0
#: Longest the supervisor may take to replace a killed worker (its restart
#: backoff starts at once; a worker's start opens the databases and the HSM pool).
WORKER_BACK_S = 30.0


@dataclass
class Findings:
    garbage: Counter[str] = field(default_factory=Counter)
    wrong_mac: Counter[str] = field(default_factory=Counter)
    stalls: Counter[str] = field(default_factory=Counter)
    stall_close_s: list[float] = field(default_factory=list)
    storms: Counter[str] = field(default_factory=Counter)
    hsm: list[str] = field(default_factory=list)
    worker: list[str] = field(default_factory=list)
    memory: list[tuple[float, float]] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Soak:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.duration = float(args.soak)
        self.found = Findings()
        self.hsm_port = free_port()
        self.hsm: procs.Proc | None = None
        self.switch: procs.Proc | None = None
        self.end = 0.0
        self.hsm_cut_at: float | None = None
        self.hsm_back_at: float | None = None

    def running(self) -> bool:
        return time.monotonic() < self.end

    async def connect(self) -> Link:
        loop = asyncio.get_running_loop()
        _, link = await asyncio.wait_for(
            loop.create_connection(Link, "127.0.0.1", self.switch.port), 10  # type: ignore[union-attr]
        )
        return link

    # -- misbehaving clients -------------------------------------------------------

    async def garbage(self) -> None:
        """Frames the switch cannot use; it must answer or close, and keep serving."""
        rng = os.urandom
        kinds = ("random body", "too long", "too short", "bad TPDU", "bad bitmap")
        i = 0
        while self.running():
            kind = kinds[i % len(kinds)]
            i += 1
            if kind == "random body":
                body = rng(60)
                data = len(body).to_bytes(2, "big") + body
            elif kind == "too long":
                data = b"\xff\xff" + rng(100)
            elif kind == "too short":
                data = b"\x00\x05" + rng(5)
            elif kind == "bad TPDU":
                body = b"\x99" + rng(4) + rq.DEFAULT_HEADER + b"\x02\x00" + rng(30)
                data = len(body).to_bytes(2, "big") + body
            else:
                body = rq.DEFAULT_TPDU + rq.DEFAULT_HEADER + b"\x02\x00" + b"\xff" * 8 + rng(20)
                data = len(body).to_bytes(2, "big") + body
            try:
                link = await self.connect()
                link.send(data)
                try:
                    await link.recv(5)
                    self.found.garbage[f"{kind}: answered"] += 1
                except Unanswered as exc:
                    self.found.garbage[f"{kind}: {exc}"] += 1
                link.close()
            except (OSError, TimeoutError) as exc:
                self.found.garbage[f"{kind}: connect {type(exc).__name__}"] += 1
            await asyncio.sleep(0.05)

    async def wrong_macs(self, fleet: Fleet) -> None:
        """A signed-on terminal whose sales carry a bad MAC: A0 each time, no money moved."""
        w = Worker(fleet, ROGUE_FIRST)
        while self.running():
            try:
                if w.link is None or w.link.closed or w.term.mak is None:
                    await w.connect()
                t = w.term
                _, card = w.card()
                frame = bytearray(t.frame(*rq.sale(t.ident, card, t.next_stan(), 5_00, PIN, t.pik)))
                frame[-1] ^= 0x01
                w.link.send(bytes(frame))  # type: ignore[union-attr]
                resp = t.read(await w.link.recv(10))  # type: ignore[union-attr]
                self.found.wrong_mac[f"rc {resp.rc}"] += 1
                if resp.rc != "A0":
                    self.found.errors[f"wrong MAC answered {resp.rc}, not A0"] += 1
                t.mak = None  # A0 asks to sign on again: do so
            except Exception as exc:
                self.found.wrong_mac[f"{type(exc).__name__}"] += 1
                w.link = None
                await asyncio.sleep(0.5)
            await asyncio.sleep(0.1)
        if w.link is not None:
            w.link.close()

    async def stalls(self) -> None:
        """Batches of half-sent frames: the switch must close each in its frame timeout."""
        frame = Terminal("20000999", "898100012340002").sign_on_frame()
        pending: list[asyncio.Task[None]] = []

        async def one() -> None:
            try:
                link = await self.connect()
            except (OSError, TimeoutError) as exc:
                self.found.stalls[f"connect {type(exc).__name__}"] += 1
                return
            t0 = time.monotonic()
            link.send(frame[: len(frame) // 2])
            try:
                await link.recv(FRAME_TIMEOUT_S + 15)
                self.found.stalls["answered a half frame"] += 1
                self.found.errors["switch answered a half frame"] += 1
            except Unanswered as exc:
                if str(exc) == "timeout":
                    self.found.stalls["not closed in frame timeout + 15 s"] += 1
                    self.found.errors["stalled connection not closed"] += 1
                else:
                    self.found.stalls["closed by the switch"] += 1
                    self.found.stall_close_s.append(time.monotonic() - t0)
            link.close()

        while time.monotonic() < self.end - FRAME_TIMEOUT_S - 20:
            pending += [asyncio.create_task(one()) for _ in range(STALL_BATCH)]
            await asyncio.sleep(STALL_EVERY_S)
        if pending:
            await asyncio.wait(pending, timeout=FRAME_TIMEOUT_S + 30)

    async def storms(self) -> None:
        """Bursts of connects and immediate disconnects."""
        gate = asyncio.Semaphore(500)

        async def one() -> None:
            async with gate:
                try:
                    link = await self.connect()
                    self.found.storms["connected"] += 1
                    link.close()
                except (OSError, TimeoutError) as exc:
                    self.found.storms[type(exc).__name__] += 1

        at = 0.15
        while at < 0.9:
            await self._sleep_until(at)
            if not self.running():
                return
            await asyncio.gather(*(one() for _ in range(STORM_SIZE)))
            self.found.storms["bursts"] += 1
            at += 0.2

    async def hsm_cut(self) -> None:
        await self._sleep_until(0.3)
        assert self.hsm is not None
        self.hsm_cut_at = time.monotonic()
        self.hsm.kill()
        t = time.monotonic() - self.start
        self.found.hsm.append(f"HSM killed at {t:.0f} s")
        await asyncio.sleep(HSM_DOWN_S)
        self.hsm = await asyncio.to_thread(procs.start_hsm, self.hsm_port,
                                           self.work / "hsm.log")  # fmt: skip
        self.found.hsm.append(f"HSM restarted at {time.monotonic() - self.start:.0f} s")
        self.hsm_back_at = time.monotonic()

    def _workers(self) -> list[psutil.Process]:
        assert self.switch is not None
        kids = psutil.Process(self.switch.pid).children()
        return [p for p in kids if p.is_running() and "--worker" in p.cmdline()]

    async def worker_kill(self) -> None:
        """SIGKILL one worker; the supervisor must have all N running again soon."""
        if self.args.workers < 2:
            return
        await self._sleep_until(0.6)
        workers = await asyncio.to_thread(self._workers)
        if not workers:
            self.found.errors["no worker process found to kill"] += 1
            return
        victim = workers[0]
        victim.kill()
        killed = time.monotonic()
        self.found.worker.append(f"worker {victim.pid} killed at {killed - self.start:.0f} s")
        while time.monotonic() - killed < WORKER_BACK_S:
            await asyncio.sleep(0.5)
            now = await asyncio.to_thread(self._workers)
            if len(now) == self.args.workers and victim.pid not in {p.pid for p in now}:
                self.found.worker.append(
                    f"{len(now)} workers again after {time.monotonic() - killed:.1f} s"
                )
                return
        self.found.errors[f"killed worker not replaced within {WORKER_BACK_S:.0f} s"] += 1

    def hsm_fault_window(self) -> bool:
        """True from the HSM's kill until the pool has surely taken it back:
        91/96/98 are expected then, and errors at any other time."""
        if self.hsm_cut_at is None or time.monotonic() < self.hsm_cut_at:
            return False
        return self.hsm_back_at is None or time.monotonic() < self.hsm_back_at + HSM_GRACE_S

    async def memory(self) -> None:
        while self.running():
            assert self.switch is not None
            self.found.memory.append((round(time.monotonic() - self.start, 1),
                                      round(self.switch.rss() / 2**20, 1)))  # fmt: skip
            await asyncio.sleep(5)

    async def _sleep_until(self, fraction: float) -> None:
        delay = self.start + fraction * self.duration - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    # -- the run ----------------------------------------------------------------------

    async def still_serves(self, fleet: Fleet) -> dict[str, object]:
        w = Worker(fleet, ROGUE_FIRST + 1)
        try:
            await w.connect()
            t = w.term
            card = rq.Card(demo_pan(4), EXPIRY)
            w.link.send(t.frame(*rq.balance(t.ident, card, t.next_stan(), PIN, t.pik)))  # type: ignore[union-attr]
            resp = t.read(await w.link.recv(10))  # type: ignore[union-attr]
            return {"sign_on": "00", "balance_rc": resp.rc, "mac_ok": resp.mac_ok}
        except Exception as exc:
            return {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            if w.link is not None:
                w.link.close()

    async def run(self, fleet_cfg: FleetConfig, tally: Tally) -> dict[str, object]:
        fleet = Fleet(fleet_cfg, tally=tally)
        fleet_task = asyncio.create_task(fleet.run(None))
        await fleet.go.wait()  # the fleet has signed on: the faults start now
        self.start = time.monotonic()
        self.end = self.start + self.duration
        side = [asyncio.create_task(c) for c in (
            self.garbage(), self.wrong_macs(fleet), self.stalls(), self.storms(),
            self.hsm_cut(), self.worker_kill(), self.memory(),
        )]  # fmt: skip
        progress = asyncio.create_task(self._progress(fleet))
        stats = await fleet_task
        progress.cancel()
        await asyncio.wait(side, timeout=FRAME_TIMEOUT_S + 60)
        for task in side:
            if not task.done():
                task.cancel()
                self.found.errors[f"side task did not end: {task.get_coro().__name__}"] += 1
            elif task.exception() is not None:
                self.found.errors[f"side task failed: {task.exception()!r}"] += 1
        serves = await self.still_serves(fleet)
        return {"fleet": stats.summary(), "still_serves": serves}

    async def _progress(self, fleet: Fleet) -> None:
        if self.args.quiet:
            return
        while True:
            await asyncio.sleep(10)
            s = fleet.stats
            mem = self.found.memory[-1][1] if self.found.memory else 0
            print(f"soak {time.monotonic() - self.start:6.0f}s  responses {len(s.latencies)}"
                  f"  errors {sum(s.errors.values()) + sum(self.found.errors.values())}"
                  f"  tolerated {sum(s.tolerated.values())}  switch RSS {mem} MB",
                  file=sys.stderr, flush=True)  # fmt: skip


def check_ledger(ledger_path: Path, tally: Tally, cards: int) -> dict[str, object]:
    """Every card's available balance against the fleet's tally; the ledger's audit."""
    conn = sqlite3.connect(f"file:{ledger_path}?mode=ro", uri=True)
    d = lq.Dialect("sqlite")
    pan_key = Config().security.pan_key.encode()
    mismatched: list[dict[str, object]] = []
    checked = 0
    uncertain = tally.uncertain
    try:
        for seq in range(4, cards + 1):
            if seq in uncertain:
                continue
            acct = lq.get_account(conn, d, card_account_id(demo_pan(seq), pan_key))
            want = START_BALANCE - tally.net.get(seq, 0)
            checked += 1
            if acct is None or acct.available != want:
                mismatched.append({"card_seq": seq, "ledger": acct.available if acct else None,
                                   "expected": want})  # fmt: skip
        audit = lq.audit(conn, d)
    finally:
        conn.close()
    return {
        "cards_checked": checked, "cards_uncertain": sorted(uncertain),
        "cards_moved": sum(1 for v in tally.net.values() if v),
        "net_approved": sum(tally.net.values()),
        "mismatched": mismatched[:50], "mismatched_count": len(mismatched),
        "audit_problems": audit[:20],
    }  # fmt: skip


def run_soak(args: argparse.Namespace) -> int:
    import uvloop

    raise_fd_limit()
    work = Path(tempfile.mkdtemp(prefix="switchd-soak-"))
    soak = Soak(args, work)
    say = (lambda s: None) if args.json else (lambda s: print(s, file=sys.stderr, flush=True))
    say(f"soak: {soak.duration:.0f} s, {args.terminals} terminals, {args.workers} worker(s);"
        f" work directory {work}")
    soak.hsm = procs.start_hsm(soak.hsm_port, work / "hsm.log")
    conf = procs.write_switch_config(work / "var", cards=CARDS, hsm_port=soak.hsm_port,
                                     workers=args.workers)  # fmt: skip
    soak.switch = procs.start_switch(conf, work / "switch.log", workers=args.workers)
    say(f"soak: switch on port {soak.switch.port}, HSM on port {soak.hsm_port}")
    tally = Tally()
    cfg = FleetConfig(
        port=soak.switch.port, terminals=args.terminals, duration=soak.duration, rate=args.rate,
        cards=(4, CARDS), timeout=args.timeout, progress=False,
        tolerate=frozenset({"91", "96", "98"}), tolerate_failures=True,
        tolerate_while=soak.hsm_fault_window,
    )  # fmt: skip
    try:
        result = uvloop.run(soak.run(cfg, tally))
    finally:
        exit_code = soak.switch.stop(60)
        if soak.hsm is not None:
            soak.hsm.stop(5)
    result["switch_exit_code"] = exit_code
    result["ledger"] = check_ledger(work / "var" / "ledger.sqlite", tally, CARDS)
    f = soak.found
    mem = [m for _, m in f.memory]
    # Bounded memory: after the first half (caches warm, batches settling, the
    # journal's open batches at their steady size) RSS must level off.
    mid = mem[len(mem) // 2] if mem else 0.0
    growth = (mem[-1] - mid) if mem else 0.0
    bounded = growth <= max(MEMORY_SLACK_MB, 0.2 * mid)
    result["memory_mb"] = {
        "first": mem[0] if mem else None, "mid": mid, "max": max(mem) if mem else None,
        "last": mem[-1] if mem else None, "second_half_growth": round(growth, 1),
        "bounded": bounded, "series": f.memory[:: max(1, len(f.memory) // 40)],
    }  # fmt: skip
    result["misbehaving"] = {
        "garbage": dict(f.garbage), "wrong_mac": dict(f.wrong_mac), "stalls": dict(f.stalls),
        "stall_close_s_max": round(max(f.stall_close_s), 1) if f.stall_close_s else None,
        "storms": dict(f.storms), "hsm": f.hsm, "worker": f.worker,
    }  # fmt: skip
    result["errors"] = dict(f.errors)
    result["work_dir"] = str(work)
    ledger = result["ledger"]
    serves = result["still_serves"]
    ok = (
        not f.errors and not result["fleet"]["errors"]  # type: ignore[index]
        and exit_code == 0 and serves.get("balance_rc") == "00"  # type: ignore[union-attr]
        and bounded
        and not ledger["mismatched_count"] and not ledger["audit_problems"]  # type: ignore[index]
    )
    result["ok"] = ok
    if args.json:
        print(json.dumps(result))
    else:
        print(format_summary(result["fleet"]))  # type: ignore[arg-type]
        for key in ("still_serves", "switch_exit_code", "memory_mb", "misbehaving", "ledger",
                    "errors"):  # fmt: skip
            value = result[key]
            if key == "memory_mb":
                value = {k: v for k, v in value.items() if k != "series"}  # type: ignore[union-attr]
            print(f"{key}: {value}")
        print("soak: OK" if ok else "soak: FAILED")
    return 0 if ok else 1
