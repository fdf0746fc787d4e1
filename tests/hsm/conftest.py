"""Fixtures for the HSM tests: a software HSM on 127.0.0.1 (port 0) and raw socket helpers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import trio

from hsm.framing import FrameSplitter, encode_frame
from hsm.lmk import LmkSet, thales_test_lmk
from hsm.server import serve_hsm

LOCALHOST = "127.0.0.1"


@pytest.fixture(scope="session")
def lmk() -> LmkSet:
    return thales_test_lmk()


@pytest.fixture
async def hsm_port(nursery: trio.Nursery, lmk: LmkSet) -> int:
    return await nursery.start(serve_hsm, lmk, LOCALHOST, 0)


class RawClient:
    """A bare socket client: send frames, read frames, nothing clever."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.splitter = FrameSplitter()

    async def send(self, *messages: bytes) -> None:
        await self.stream.send_all(b"".join(encode_frame(m) for m in messages))

    async def recv(self, count: int = 1, timeout: float = 5.0) -> list[bytes]:
        out: list[bytes] = []
        with trio.fail_after(timeout):
            while len(out) < count:
                out += self.splitter.frames()
                if len(out) >= count:
                    break
                data = await self.stream.receive_some(65536)
                if not data:
                    raise EOFError("server closed the connection")
                self.splitter.feed(data)
        return out

    async def ask(self, message: bytes) -> bytes:
        await self.send(message)
        return (await self.recv())[0]


Connect = Callable[..., Awaitable[RawClient]]


@pytest.fixture
def raw_client(hsm_port: int) -> Connect:
    async def connect(port: int | None = None) -> RawClient:
        return RawClient(await trio.open_tcp_stream(LOCALHOST, port or hsm_port))

    return connect
