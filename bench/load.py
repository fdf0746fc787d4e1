"""The terminal fleet load generator.

    python -m bench.load [--terminals 100] [--duration 10] [--rate STEPS_PER_S]
        [--mix sale=70,balance=5,void=6,refund=6,preauth=7,reversal=6]
        [--host 127.0.0.1] [--port 5800] [--first 0] [--per-merchant 5000]
        [--cards 4-10000] [--no-settle] [--plot latency.png] [--json]
    python -m bench.load --soak 10m [...]        (see bench.soak)

N terminals, each its own TCP connection to the switch, sign on (real key
exchange), then run the mix until the duration is over: closed loop by
default, or at ``--rate`` steps per second shared by the fleet (latency is
then measured from each step's scheduled moment, so a switch that falls
behind is charged for the wait). ``preauth`` is a pre-authorization and its
completion; ``reversal`` a sale and its reversal; ``void`` and ``refund``
quote an earlier approved sale of the same terminal. Every terminal settles
its batch at the end and expects it balanced. Every answer is checked: MAC,
MTI, STAN, response code against the step's expectation; mismatches are
errors, and the exit code is 1 when there was any.

Prints a live progress line, then throughput, latency p50/p90/p99/p99.9/max
(of the measured window: from the moment the whole fleet has signed on),
response codes by kind, and errors; ``--json`` prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys

from bench.fleet import FleetConfig, parse_mix, run_fleet
from bench.stats import format_summary, plot_latency


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``10m``, ``1h`` -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    if text and text[-1] in units:
        return float(text[:-1]) * units[text[-1]]
    return float(text)


def parse_cards(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition("-")
    first, last = int(lo), int(hi or lo)
    if not 4 <= first <= last:
        raise argparse.ArgumentTypeError("cards are demo sequences from 4 up (2 and 3 are special)")
    return first, last


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5800)
    p.add_argument("--terminals", type=int, default=100)
    p.add_argument("--duration", type=parse_duration, default=10.0, help="e.g. 30, 30s, 2m")
    p.add_argument("--warmup", type=parse_duration, default=0.0,
                   help="seconds of load before the measured window opens")
    p.add_argument("--rate", type=float, default=None, help="steps/s for the fleet (default: "
                   "closed loop)")  # fmt: skip
    p.add_argument("--mix", type=parse_mix, default=None, help="kind=weight,...")
    p.add_argument("--first", type=int, default=0, help="index of the first terminal")
    p.add_argument("--per-merchant", type=int, default=5000, help="demo terminals per merchant")
    p.add_argument("--cards", type=parse_cards, default=(4, 10_000), help="e.g. 4-10000")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for an answer")
    p.add_argument("--no-settle", action="store_true", help="do not settle at the end")
    p.add_argument("--plot", metavar="PNG", help="latency over time to this PNG (matplotlib)")
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.add_argument("--soak", type=parse_duration, default=None, metavar="DURATION",
                   help="soak with misbehaving clients and an HSM cut (starts its own switch)")
    p.add_argument("--workers", type=int, default=1,
                   help="with --soak: the switch's worker processes; with 2 or more, one of "
                        "them is also SIGKILLed mid-run")  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.host.startswith("127."):
        print("bench.load: only loopback addresses are allowed", file=sys.stderr)
        return 2
    if args.workers < 1 or (args.workers > 1 and args.soak is None):
        print("bench.load: --workers is for --soak (which starts its own switch), 1 or more",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.soak is not None:
        from bench.soak import run_soak

        return run_soak(args)
    cfg = FleetConfig(
        host=args.host, port=args.port, terminals=args.terminals, duration=args.duration,
        warmup=args.warmup, rate=args.rate, first=args.first, per_merchant=args.per_merchant,
        cards=args.cards,
        timeout=args.timeout, settle=not args.no_settle, progress=not args.quiet,
    )  # fmt: skip
    if args.mix is not None:
        cfg.mix = args.mix
    stats = run_fleet(cfg)
    summary = stats.summary()
    summary.update(terminals=args.terminals, rate=args.rate, mix=cfg.mix)
    if not args.quiet:
        print(file=sys.stderr)
    if args.plot:
        plot_latency(stats, args.plot, f"{args.terminals} terminals, mix {cfg.mix}")
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{args.terminals} terminals, "
              + (f"target {args.rate:g} steps/s" if args.rate else "closed loop"))  # fmt: skip
        print(format_summary(summary))
    return 1 if summary["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
