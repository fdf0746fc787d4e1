"""`python -m hsm serve --listen 127.0.0.1:1500 --lmk FILE|test [--header-len 4]`."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from functools import partial

import trio

from hsm.lmk import LmkError, load_lmk
from hsm.pool import parse_address
from hsm.server import serve_hsm


class _JsonFormatter(logging.Formatter):
    """One JSON object per line, as the rest of switchd logs."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hsm", description="software Thales HSM")
    sub = parser.add_subparsers(dest="cmd", required=True)
    serve = sub.add_parser("serve", help="serve the host command protocol")
    serve.add_argument("--listen", default="127.0.0.1:1500", help="host:port (port 0 = any)")
    serve.add_argument("--lmk", required=True, help="LMK file, or 'test' for the Thales test LMKs")
    serve.add_argument("--header-len", type=int, default=4, help="message header length")
    args = parser.parse_args(argv)

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    try:
        lmk = load_lmk(args.lmk)
        host, port = parse_address(args.listen)
    except (LmkError, ValueError) as exc:
        print(f"python -m hsm: {exc}", file=sys.stderr)
        return 2
    if args.lmk == "test":
        logging.getLogger("hsm.server").warning("using the published Thales TEST LMKs")
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(partial(serve_hsm, lmk, host, port, args.header_len))
    return 0


if __name__ == "__main__":
    sys.exit(main())
