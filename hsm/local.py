"""A link to a software HSM in the same process: the host-command bytes, no socket.

The switch's embedded HSM (``[hsm] embedded = true``) used to be reached
over loopback TCP from the same event loop: every PIN verification then
cost a send and a receive on each side of the socket and a pass through the
scheduler for the server's task (about a sixth of the switch's CPU per sale
under load). Through this link the pool hands the same request bytes
(header, command, fields) to the server's `HsmCore` and takes its reply
bytes back, so everything above the link (the pool's rotation, health
checks with NC, timeouts, metrics, the reply-code check, the typed client)
is the code that talks to a real payShield. Only the framing and the
socket are skipped; those are covered by the TCP server's own tests.

A command is pure CPU work of a few microseconds, run inline. A request
honours its caller's cancellation but does not yield to the scheduler: a
yield per PIN verification cost ~5 % of the switch's CPU, and every switch
flow yields anyway at its next I/O (the ledger, the socket).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from hsm.codec import HsmProtocolError, expected_reply_code
from hsm.connection import HsmLinkError
from hsm.core import COMMANDS
from hsm.server import HsmServer, command_counter

#: The header the link sends: one request at a time, so one value serves.
_HEADER_CHAR = b"L"

# The reply code each known command expects, made once rather than per request.
_EXPECTED = {command: expected_reply_code(command) for command in COMMANDS}

# Reply code + error code as answered (b"DD00") -> the command it answers and
# its counter child: one lookup checks and counts the usual reply. Filled by
# the replies that passed the full check; known commands and two-digit codes
# only, so at most 16 x 100 entries.
_ANSWERS: dict[bytes, tuple[bytes, Any]] = {}


class LocalHsmConnection:
    """Same interface as `HsmConnection`, for the pool: request, run, close."""

    def __init__(
        self,
        server: HsmServer,
        name: str,
        on_close: Callable[[LocalHsmConnection, str], None] | None = None,
    ) -> None:
        self._server = server
        self._core = server.core
        self._header = _HEADER_CHAR * server.header_len
        self._hl = server.header_len
        self.name = name
        self._on_close = on_close
        self.closed = False
        self._stop = trio.Event()

    @property
    def in_flight(self) -> int:
        return 0  # nothing waits on the link: a command completes inside request()

    async def request(self, body: bytes, timeout: float) -> bytes:
        """Run `body` (command code + fields); return the reply after the header."""
        if self.closed:
            raise HsmLinkError(f"connection to {self.name} is closed")
        await trio.lowlevel.checkpoint_if_cancelled()
        header = self._header
        hl = self._hl
        command = body[:2]
        reply = self._core.handle(header + body)
        answer = _ANSWERS.get(reply[hl : hl + 4])
        if answer is not None and answer[0] == command and reply.startswith(header):
            answer[1].inc()
            return reply[hl:]
        counter = command_counter(command, reply[hl + 2 : hl + 4])
        counter.inc()
        expected = _EXPECTED.get(command) or expected_reply_code(command)
        if not reply.startswith(header) or reply[hl : hl + 2] != expected:
            raise HsmProtocolError(f"reply {reply[: hl + 2]!r} does not answer {command!r}")
        code = reply[hl + 2 : hl + 4]
        if command in _EXPECTED and len(code) == 2 and code.isdigit():
            _ANSWERS[reply[hl : hl + 4]] = (command, counter)
        return reply[hl:]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Stay open until closed or cancelled (the pool owns this task)."""
        try:
            task_status.started()
            await self._stop.wait()
        finally:
            self._shutdown("closed")

    def close(self) -> None:
        self._shutdown("closed by the pool")

    def _shutdown(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self._stop.set()
        if self._on_close is not None:
            self._on_close(self, reason)
