"""The `switchd` command line."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="switchd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start the switch (embedded defaults without --config)")
    run.add_argument("--config", help="TOML configuration file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        print("switchd: the daemon is not built yet", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
