"""switchd: a payment switch for CUP-style POS terminals.

Commands:
  run     start the switch (embedded defaults without --config: SQLite ledger
          under ./var, the software HSM in-process, the demo data, the admin
          API on 127.0.0.1:8580)
  admin   serve only the admin API against the switch's databases
"""

from __future__ import annotations

import argparse
import logging
import sys

import trio

from switchd import jsonlog
from switchd.config import ConfigError, load


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="switchd", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser(
        "run",
        help="start the switch",
        description="Start the switch: terminal listeners, HSM link, ledger. SIGTERM drains "
        "and exits 0; SIGHUP reloads routing, issuers, limits and parameters.",
    )
    run.add_argument("--config", help="TOML configuration file (default: embedded defaults)")
    run.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    run.add_argument(
        "--workers", type=int, default=1,
        help="worker processes sharing the terminal ports (SO_REUSEPORT); default 1",
    )  # fmt: skip
    run.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    admin = sub.add_parser(
        "admin",
        help="serve the admin API on its own",
        description="Serve the admin API (merchants, terminals, cards, ERP, reports, /metrics) "
        "against the databases of the configuration; [admin] port must differ from a "
        "running switch's.",
    )
    admin.add_argument("--config", help="TOML configuration file (default: embedded defaults)")
    admin.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    jsonlog.setup(getattr(logging, str(args.log_level).upper(), logging.INFO))
    try:
        cfg = load(args.config)
    except ConfigError as exc:
        print(f"switchd: bad configuration: {exc}", file=sys.stderr)
        return 2
    if args.command == "admin":
        from admin_api import standalone

        async def admin_task() -> None:
            async with trio.open_nursery() as nursery:
                port = await nursery.start(standalone.run, cfg)
                print(f"switchd: admin API on {cfg.admin.host}:{port}", flush=True)

        trio.run(admin_task)
        return 0
    if args.command == "run" and args.workers > 1:
        from switchd.supervisor import run_workers

        return run_workers(cfg, args.config, args.workers)
    if args.command == "run":
        from switchd.daemon import Switch

        switch = Switch(cfg, args.config, worker=args.worker)

        async def main_task() -> None:
            async with trio.open_nursery() as nursery:
                await nursery.start(switch.run)
                if args.worker:
                    from switchd.supervisor import tell_ready

                    tell_ready()
                else:
                    for host, port in switch.addresses:
                        print(f"switchd: terminals on {host}:{port}", flush=True)
                print(f"switchd: HSM at {switch.hsm_address}", flush=True)
                if switch.admin_port is not None:
                    print(f"switchd: admin API on {cfg.admin.host}:{switch.admin_port}",
                          flush=True)  # fmt: skip

        try:
            trio.run(main_task)
        except ConfigError as exc:
            print(f"switchd: bad configuration: {exc}", file=sys.stderr)
            return 2
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
