"""CPU per PIN verification (DC) through the embedded software HSM, as the switch makes it.

    python -m bench.hsm_local [--calls 20000] [--terminals 1000] [--json]

Builds what switchd/daemon.py builds for `[hsm] embedded = true`: an
`HsmServer` reached through the pool's in-process link (hsm/local.py), the
pool, and the typed client; then one caller makes `--calls` sequential
`verify_pin_pvv` calls (a real PIN block under one of `--terminals` TPKs,
each checked to verify) and prints the CPU time (time.process_time) per
call. The key caches are warmed first with every terminal, as in a switch
that has been running. Baseline, in the same run: the same DC commands
handed to the HSM's core directly; the ratio is what the layers above it
(typed client, pool, link, metrics) cost on top.

CPU time still moves with what else the machine runs (caches, frequency).
For a figure that does not, count instructions with callgrind, twice with
different call counts, and divide the difference:

    valgrind --tool=callgrind --callgrind-out-file=a.out \\
        python -m bench.hsm_local --calls 200
    valgrind --tool=callgrind --callgrind-out-file=b.out \\
        python -m bench.hsm_local --calls 2200
    # (summary of b.out - summary of a.out) / 2000 = instructions per call

That figure is the client path and the baseline together. `--part link` runs
only the calls through the client, pool and link, `--part core` only the
baseline (after warming the key caches the same way), to count each alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import trio

from bench.hsm import ACCOUNT, PVKI, Workload
from hsm import codec
from hsm.client import HsmClient, open_hsm_client
from hsm.lmk import thales_test_lmk
from hsm.server import HsmServer


async def verify(hsm: HsmClient, work: Workload, calls: int) -> None:
    terminals = work.terminals
    for i in range(calls):
        tpk, block = terminals[i % len(terminals)]
        if not await hsm.verify_pin_pvv(tpk, work.pvk, block, ACCOUNT, PVKI, work.pvv):
            raise AssertionError("a PIN that should verify did not")


PARTS = ("both", "link", "core")


async def bench(calls: int, terminals: int, part: str = "both") -> dict[str, object]:
    """`part`: both (the default), or only the calls through the link, or only the core."""
    # The same keys as bench.hsm's, made under an LMK of their own: the
    # server's LMK starts with an empty decrypted-key cache, as a switch's
    # does, and the handlers fill it.
    work = Workload(terminals)
    server = HsmServer(thales_test_lmk())
    cpu = core = None
    if part != "core":
        async with open_hsm_client([server], timeout=5.0) as hsm:
            await verify(hsm, work, terminals)  # warm the caches
            start = time.process_time()
            await verify(hsm, work, calls)
            cpu = time.process_time() - start
    if part != "link":
        if part == "core":
            core_only(server, work, terminals)  # warm the caches
        core = core_only(server, work, calls)
    return {
        "calls": calls,
        "terminals": terminals,
        "cpu_s": None if cpu is None else round(cpu, 4),
        "cpu_us_per_call": round(cpu / calls * 1e6, 2) if cpu is not None and calls else None,
        "core_us_per_call": round(core / calls * 1e6, 2) if core is not None and calls else None,
        "client_over_core": round(cpu / core, 2) if cpu is not None and core else None,
    }


def core_only(server: HsmServer, work: Workload, calls: int) -> float:
    """The baseline: CPU seconds for the same DC commands handed to the HSM's
    core directly (no client, pool or link), each reply checked."""
    header = b"0000"
    requests = [header + codec.dc(tpk, work.pvk, block, ACCOUNT, PVKI, work.pvv)
                for tpk, block in work.terminals]  # fmt: skip
    handle, n = server.core.handle, len(requests)
    start = time.process_time()
    for i in range(calls):
        if handle(requests[i % n]) != b"0000DD00":
            raise AssertionError("a PIN that should verify did not (core)")
    return time.process_time() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.hsm_local", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--calls", type=int, default=20000, help="verify_pin_pvv calls")
    parser.add_argument("--terminals", type=int, default=1000, help="distinct TPKs used")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--part", choices=PARTS, default="both",
        help="both; or only the calls through the client, pool and link; or only the core",
    )  # fmt: skip
    args = parser.parse_args(argv)
    result = trio.run(bench, args.calls, args.terminals, args.part)
    if args.json:
        print(json.dumps(result))
    elif args.part == "link":
        print(f"{result['calls']} DC calls: {result['cpu_us_per_call']} us CPU per call through"
              " the client, pool and link")
    elif args.part == "core":
        print(f"{result['calls']} DC calls: {result['core_us_per_call']} us CPU per call,"
              " the HSM core alone")
    else:
        print(f"{result['calls']} DC calls: {result['cpu_us_per_call']} us CPU per call through"
              f" the client, pool and link; baseline, the HSM core alone:"
              f" {result['core_us_per_call']} us (ratio {result['client_over_core']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
