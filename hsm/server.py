"""The software HSM's TCP server (trio): standalone or embedded in the switch.

    port = await nursery.start(serve_hsm, lmk, "127.0.0.1", 0)

binds (port 0 = any free port), reports the bound port through
`task_status`, and serves until cancelled.

Pipelining: each connection may send many requests without waiting. The
server reads whatever arrived, answers every complete frame in it in order,
and writes all those replies with one send, so a burst of N pipelined
requests costs one read and one write instead of N of each. Commands are
pure CPU work of a few microseconds, so they run inline on the event loop.

Resource handling: one task per connection, all in the listener's nursery;
closing a connection is the handler's job (the `async with` on the stream).

Error handling:
- a malformed command gets a Thales error reply from `HsmCore.handle` and
  the connection carries on;
- a frame whose length is above `max_frame` cannot be resynchronised: the
  connection is closed with a log line;
- an exception escaping a connection handler would, in trio, stop the
  listener and so every connection; `_serve_connection` therefore catches
  everything and logs it;
- accept errors that mean overload (EMFILE, ENFILE, ENOMEM, ENOBUFS) are
  handled by `trio.serve_listeners`, which logs and retries after 100 ms.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

import trio

from hsm import metrics
from hsm.context import HsmContext
from hsm.core import COMMANDS, HsmCore
from hsm.crypto import RandomSource
from hsm.framing import DEFAULT_MAX_FRAME, FrameSplitter, FrameTooLarge, encode_frame
from hsm.lmk import LmkSet

log = logging.getLogger("hsm.server")

# Big enough to take a burst of a few hundred pipelined PIN commands in one read.
RECEIVE_SIZE = 65536


class HsmServer:
    """The per-process state: the core (LMKs, handlers) and the framing limits."""

    def __init__(
        self,
        lmk: LmkSet,
        header_len: int = 4,
        *,
        max_frame: int = DEFAULT_MAX_FRAME,
        random_bytes: RandomSource | None = None,
    ) -> None:
        ctx = HsmContext(lmk, random_bytes=random_bytes or secrets.token_bytes)
        self.core = HsmCore(ctx, header_len)
        self.header_len = header_len
        self.max_frame = max_frame

    async def serve_connection(self, stream: trio.abc.Stream) -> None:
        try:
            async with stream:
                await self._serve(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the peer went away: nothing to answer
        except Exception:
            log.exception("HSM connection handler failed")

    async def _serve(self, stream: trio.abc.Stream) -> None:
        splitter = FrameSplitter(self.max_frame)
        handle = self.core.handle
        hl = self.header_len
        while True:
            data = await stream.receive_some(RECEIVE_SIZE)
            if not data:
                return
            splitter.feed(data)
            replies: list[bytes] = []
            try:
                while (frame := splitter.next_frame()) is not None:
                    reply = handle(frame)
                    count_command(frame[hl : hl + 2], reply[hl + 2 : hl + 4])
                    replies.append(encode_frame(reply))
            except FrameTooLarge as exc:
                log.warning("closing HSM connection: frame length %d is absurd", exc.length)
                if replies:
                    await stream.send_all(b"".join(replies))
                return
            if replies:
                await stream.send_all(b"".join(replies))


# (command, code) as sent and answered -> its labelled counter. Only pairs
# with a known command and a two-digit code are kept (at most 16 x 100), so
# a peer sending junk cannot grow it.
_COUNTERS: dict[tuple[bytes, bytes], Any] = {}


def count_command(command: bytes, code: bytes) -> None:
    """Count one answered command in the server's metrics."""
    command_counter(command, code).inc()


def command_counter(command: bytes, code: bytes) -> Any:
    """The counter child of a command answered with `code` (its `inc()` counts one)."""
    counter = _COUNTERS.get((command, code))
    if counter is None:
        # Unknown command codes are folded into "other" so a peer sending junk
        # cannot create unbounded label values.
        known = command in COMMANDS
        name = command.decode("ascii") if known else "other"
        code_label = code.decode("latin-1") if code.isdigit() else "xx"
        counter = metrics.labelled(metrics.SERVER_COMMANDS, name, code_label)
        if known and len(code) == 2 and code.isdigit():
            _COUNTERS[(command, code)] = counter
    return counter


async def serve_hsm(
    lmk: LmkSet,
    host: str = "127.0.0.1",
    port: int = 1500,
    header_len: int = 4,
    *,
    max_frame: int = DEFAULT_MAX_FRAME,
    random_bytes: RandomSource | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the host-command protocol on host:port until cancelled.

    Reports the bound port via `task_status.started(port)` (use port 0 to
    let the OS choose, e.g. in tests or when embedded in the switch).
    """
    server = HsmServer(lmk, header_len, max_frame=max_frame, random_bytes=random_bytes)
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    log.info("software HSM listening on %s:%d (header length %d)", host, bound, header_len)
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, server.serve_connection, listeners)
        task_status.started(bound)
