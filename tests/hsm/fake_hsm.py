"""A misbehaving HSM for client tests: answers like the software HSM until told otherwise."""

from __future__ import annotations

import os

import trio

from hsm.context import HsmContext
from hsm.core import HsmCore
from hsm.framing import FrameSplitter, encode_frame
from hsm.lmk import LmkSet

NORMAL = "normal"
SILENT = "silent"  # reads requests, never answers
GARBAGE = "garbage"  # well-framed random bytes
HUGE = "huge"  # a length prefix no HSM would send
WRONG_HEADER = "wrong_header"  # echoes a header that was never sent
WRONG_CODE = "wrong_code"  # answers with a reply code for another command
SLOW = "slow"  # answers correctly after `delay` seconds
CLOSE = "close"  # accepts connections and closes them at once (an HSM still booting)


class FakeHsm:
    def __init__(self, lmk: LmkSet) -> None:
        self.core = HsmCore(HsmContext(lmk))
        self.mode = NORMAL
        self.requests = 0
        self.delay = 0.2
        self.cancel = trio.CancelScope()

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        with self.cancel:
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            port = listeners[0].socket.getsockname()[1]
            async with trio.open_nursery() as n:
                await n.start(trio.serve_listeners, self._conn, listeners)
                task_status.started(port)

    async def _conn(self, stream: trio.SocketStream) -> None:
        splitter = FrameSplitter()
        try:
            async with stream:
                if self.mode == CLOSE:
                    return
                while data := await stream.receive_some(65536):
                    splitter.feed(data)
                    for frame in splitter.frames():
                        self.requests += 1
                        if self.mode == SLOW:
                            await trio.sleep(self.delay)
                        out = self._answer(frame)
                        if out:
                            await stream.send_all(out)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    def _answer(self, frame: bytes) -> bytes:
        mode = self.mode
        if mode == SILENT:
            return b""
        if mode == GARBAGE:
            return encode_frame(os.urandom(12))
        if mode == HUGE:
            return b"\xff\xff" + os.urandom(10)
        reply = self.core.handle(frame)
        if mode == WRONG_HEADER:
            return encode_frame(b"ZZZZ" + reply[4:])
        if mode == WRONG_CODE:
            return encode_frame(reply[:4] + b"QQ" + reply[6:])
        return encode_frame(reply)
