"""CPU per PIN verification (DC) through the embedded software HSM, as the switch makes it.

    python -m bench.hsm_local [--calls 20000] [--terminals 1000] [--json]

Builds what switchd/daemon.py builds for `[hsm] embedded = true`: an
`HsmServer` reached through the pool's in-process link (hsm/local.py), the
pool, and the typed client; then one caller makes `--calls` sequential
`verify_pin_pvv` calls (a real PIN block under one of `--terminals` TPKs,
each checked to verify) and prints the CPU time (time.process_time) per
call. The key caches are warmed first with every terminal, as in a switch
that has been running.

CPU time still moves with what else the machine runs (caches, frequency).
For a figure that does not, count instructions with callgrind, twice with
different call counts, and divide the difference:

    valgrind --tool=callgrind --callgrind-out-file=a.out \\
        python -m bench.hsm_local --calls 200
    valgrind --tool=callgrind --callgrind-out-file=b.out \\
        python -m bench.hsm_local --calls 2200
    # (summary of b.out - summary of a.out) / 2000 = instructions per call
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time

import trio

from hsm.client import TPK, HsmClient, open_hsm_client
from hsm.lmk import LmkSet, thales_test_lmk
from hsm.server import HsmServer
from hsm.testing import key_under_lmk, pin_block, pvv

ACCOUNT = "400000123456"
PIN = "4321"
PVKI = "1"


class Cards:
    """One PVK and card; `terminals` TPKs (distinct keys, as a switch's terminals have)."""

    def __init__(self, lmk: LmkSet, terminals: int) -> None:
        rng = random.Random(7)
        self.pvk = key_under_lmk(lmk, "002", bytes.fromhex("FEDCBA9876543210FEDCBA9876543210"))
        self.pvv = pvv(lmk, self.pvk, ACCOUNT, PVKI, PIN)
        self.terminals = []
        for _ in range(terminals):
            tpk = key_under_lmk(lmk, "002", rng.randbytes(16))
            self.terminals.append((tpk, pin_block(lmk, TPK, tpk, PIN, ACCOUNT)))


async def verify(hsm: HsmClient, cards: Cards, calls: int) -> None:
    terminals = cards.terminals
    for i in range(calls):
        tpk, block = terminals[i % len(terminals)]
        if not await hsm.verify_pin_pvv(tpk, cards.pvk, block, ACCOUNT, PVKI, cards.pvv):
            raise AssertionError("a PIN that should verify did not")


async def bench(calls: int, terminals: int) -> dict[str, object]:
    lmk = thales_test_lmk()
    cards = Cards(lmk, terminals)
    # Making the test keys filled the LMK's decrypted-key cache; a switch's
    # cache is filled by the handlers themselves: start from an empty one.
    lmk.decrypt_key.cache_clear()
    async with open_hsm_client([HsmServer(lmk)], timeout=5.0) as hsm:
        await verify(hsm, cards, terminals)  # warm the caches
        start = time.process_time()
        await verify(hsm, cards, calls)
        cpu = time.process_time() - start
    return {
        "calls": calls,
        "terminals": terminals,
        "cpu_s": round(cpu, 4),
        "cpu_us_per_call": round(cpu / calls * 1e6, 2) if calls else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.hsm_local", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--calls", type=int, default=20000, help="verify_pin_pvv calls")
    parser.add_argument("--terminals", type=int, default=1000, help="distinct TPKs used")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    result = trio.run(bench, args.calls, args.terminals)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['calls']} DC calls: {result['cpu_us_per_call']} us CPU per call")
    return 0


if __name__ == "__main__":
    sys.exit(main())
