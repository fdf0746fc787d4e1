"""The transport ceiling: a bare trio server that answers every frame with one fixed frame.

    python -m bench.ceiling [--port 0]

Same framing and the same connection shape as the switch's listener (one
task per connection, 64 KiB reads, the frame splitter, every answer of a
read sent in one write), but no decoding, no HSM, no ledger: what trio
sockets alone allow on this machine. ``bench.e2e`` drives it with the same
fleet (``FleetConfig.ceiling``), whose terminals check the fixed answer's
MAC as they check the switch's, so the generator does the same work per
request against both.

Prints ``ceiling: listening on HOST:PORT`` on stdout once it accepts, and
serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import sys

import trio

from bench.fleet import CEILING_MAK
from fastpath import requests as rq
from fastpath.codec import encode_frame
from fastpath.crypto import DesKey
from fastpath.errors import FrameError
from fastpath.framing import FrameSplitter

READ_SIZE = 65536


def fixed_answer() -> bytes:
    """An approved 0210 as the switch would send it, signed with the ceiling MAK."""
    fields: dict[int, object] = {
        3: "000000", 4: 10_00, 11: "000001", 12: "120000", 13: "1123", 15: "1123",
        25: "00", 32: "01020000", 37: "000000000001", 38: "123456", 39: "00",
        41: "10000001", 42: "898100012340001", 49: "156", 60: "22000001000",
    }  # fmt: skip
    tpdu = bytes.fromhex("6000000001")
    return encode_frame(tpdu, rq.DEFAULT_HEADER, "0210", fields, DesKey(CEILING_MAK))


async def serve_connection(stream: trio.SocketStream, answer: bytes) -> None:
    splitter = FrameSplitter()
    try:
        while True:
            data = await stream.receive_some(READ_SIZE)
            if not data:
                return
            splitter.feed(data)
            n = len(splitter.frames())
            if n:
                await stream.send_all(answer * n)
    except (trio.BrokenResourceError, trio.ClosedResourceError, FrameError):
        return
    finally:
        await stream.aclose()


async def main_async(port: int) -> None:
    answer = fixed_answer()
    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1", backlog=4096)
    host, bound = listeners[0].socket.getsockname()[:2]
    print(f"ceiling: listening on {host}:{bound}", flush=True)

    async def handler(stream: trio.SocketStream) -> None:
        await serve_connection(stream, answer)

    await trio.serve_listeners(handler, listeners)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ceiling", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args(argv)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(main_async, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
