"""HSM benchmark: PIN translations (CA) and verifications (DC) through the pooled client.

    python -m bench.hsm [--callers 200] [--pool-size 4] [--duration 3] [--json]

Starts the software HSM as a subprocess (`python -m hsm serve --lmk test`,
port 0) unless `--connect HOST:PORT` names one already running with the test
LMKs, then measures, in the same run:

- pool: N concurrent callers through the pool (pipelined connections);
- baseline: one caller, one connection, no pipelining (each request waits
  for the previous reply);

and prints commands/s and p50/p99 latency for each, and the ratio pool /
baseline. `--json` prints one JSON object instead (keys `ca_per_s`,
`dc_per_s`, ...). Every reply is checked (a DC that does not verify, or a CA
that fails, stops the run), so the figures are for correct work.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from hsm.client import TPK, HsmClient, open_hsm_client
from hsm.lmk import thales_test_lmk
from hsm.testing import key_under_lmk, pin_block, pvv

ACCOUNT = "400000123456"
PIN = "4321"
PVKI = "1"


@dataclass
class Phase:
    count: int
    seconds: float
    latencies: list[float]

    @property
    def per_s(self) -> float:
        return self.count / self.seconds

    def pct(self, q: float) -> float:
        lat = sorted(self.latencies)
        return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000.0


class Workload:
    """`terminals` distinct TPKs (one per terminal), one zone ZPK, one PVK.

    Distinct TPKs keep the HSM's decrypted-key cache honest: a switch serves
    thousands of terminals, each with its own PIN key.
    """

    def __init__(self, terminals: int) -> None:
        lmk = thales_test_lmk()
        rng = random.Random(7)
        self.zpk = key_under_lmk(lmk, "001", bytes.fromhex("89ABCDEF01234567FEDCBA9876543210"))
        self.pvk = key_under_lmk(lmk, "002", bytes.fromhex("FEDCBA9876543210FEDCBA9876543210"))
        self.pvv = pvv(lmk, self.pvk, ACCOUNT, PVKI, PIN)
        self.terminals = []
        for _ in range(terminals):
            tpk = key_under_lmk(lmk, "002", rng.randbytes(16))
            self.terminals.append((tpk, pin_block(lmk, TPK, tpk, PIN, ACCOUNT)))
        self._next = 0

    def terminal(self) -> tuple[str, str]:
        self._next = (self._next + 1) % len(self.terminals)
        return self.terminals[self._next]

    async def ca(self, hsm: HsmClient) -> None:
        tpk, block = self.terminal()
        out = await hsm.translate_pin(tpk, self.zpk, block, ACCOUNT)
        if out.pin_length != len(PIN):
            raise RuntimeError("CA returned a wrong PIN length")

    async def dc(self, hsm: HsmClient) -> None:
        tpk, block = self.terminal()
        if not await hsm.verify_pin_pvv(tpk, self.pvk, block, ACCOUNT, PVKI, self.pvv):
            raise RuntimeError("DC did not verify")


async def run_phase(
    hsm: HsmClient, op: Callable[[HsmClient], Awaitable[None]], callers: int, duration: float
) -> Phase:
    latencies: list[float] = []
    stop = trio.current_time() + duration
    perf = time.perf_counter

    async def caller() -> None:
        while trio.current_time() < stop:
            t0 = perf()
            await op(hsm)
            latencies.append(perf() - t0)

    start = perf()
    async with trio.open_nursery() as nursery:
        for _ in range(callers):
            nursery.start_soon(caller)
    return Phase(len(latencies), perf() - start, latencies)


def start_server() -> tuple[subprocess.Popen[str], str]:
    """The software HSM in its own process (its own core), on a free port."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "hsm", "serve", "--listen", "127.0.0.1:0", "--lmk", "test"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert proc.stderr is not None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        found = re.search(r"listening on ([\d.]+:\d+)", line)
        if found:
            # Keep draining its log so a chatty server can never block on a full pipe.
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return proc, found.group(1)
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError("software HSM did not start")


async def bench(args: argparse.Namespace, address: str) -> dict[str, object]:
    work = Workload(args.terminals)
    result: dict[str, object] = {
        "callers": args.callers, "pool_size": args.pool_size, "duration_s": args.duration,
        "terminals": args.terminals, "hsm": address,
    }  # fmt: skip
    async with open_hsm_client([address], pool_size=args.pool_size, timeout=10.0) as hsm:
        await run_phase(hsm, work.ca, args.callers, 0.3)  # warm-up: caches, TCP windows
        for name, op in (("ca", work.ca), ("dc", work.dc)):
            p = await run_phase(hsm, op, args.callers, args.duration)
            result[f"{name}_per_s"] = round(p.per_s)
            result[f"{name}_p50_ms"] = round(p.pct(0.50), 3)
            result[f"{name}_p99_ms"] = round(p.pct(0.99), 3)
    async with open_hsm_client([address], pool_size=1, timeout=10.0) as hsm:
        for name, op in (("ca", work.ca), ("dc", work.dc)):
            p = await run_phase(hsm, op, 1, args.duration)
            result[f"baseline_{name}_per_s"] = round(p.per_s)
            result[f"baseline_{name}_p50_ms"] = round(p.pct(0.50), 3)
            result[f"baseline_{name}_p99_ms"] = round(p.pct(0.99), 3)
    for name in ("ca", "dc"):
        base = result[f"baseline_{name}_per_s"]
        assert isinstance(base, int)
        result[f"{name}_ratio_vs_baseline"] = round(int(result[f"{name}_per_s"]) / max(base, 1), 2)
    return result


def report(r: dict[str, object]) -> str:
    lines = [
        f"software HSM at {r['hsm']}; pool: {r['callers']} callers, {r['pool_size']} connections;"
        f" baseline: 1 caller, 1 connection, no pipelining; {r['duration_s']} s per phase;"
        f" {r['terminals']} terminal TPKs",
        f"{'':10}{'cmd/s':>10}{'p50 ms':>10}{'p99 ms':>10}",
    ]
    for name in ("ca", "dc"):
        for label, prefix in (("pool", ""), ("baseline", "baseline_")):
            lines.append(
                f"{name.upper() + ' ' + label:10}{r[prefix + name + '_per_s']:>10}"
                f"{r[prefix + name + '_p50_ms']:>10}{r[prefix + name + '_p99_ms']:>10}"
            )
        lines.append(f"{name.upper()} pool / baseline: {r[name + '_ratio_vs_baseline']}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hsm", description=__doc__.split("\n")[0])
    parser.add_argument("--callers", type=int, default=200, help="concurrent callers (pool)")
    parser.add_argument("--pool-size", type=int, default=4, help="connections in the pool")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per phase")
    parser.add_argument("--terminals", type=int, default=1000, help="distinct TPKs used")
    parser.add_argument("--connect", help="HOST:PORT of a running HSM with the test LMKs")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    proc = None
    address = args.connect
    if address is None:
        proc, address = start_server()
    try:
        result = trio.run(bench, args, address)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(5)
    print(json.dumps(result) if args.json else report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
