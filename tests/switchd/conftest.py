"""A real switch per test module: embedded HSM, SQLite ledger, small demo data."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from bench.sim import Response, Terminal
from fastpath.framing import FrameSplitter
from hsm.lmk import load_lmk
from hsm.server import serve_hsm
from hsm.testing import key_under_lmk
from switchd.config import (
    Admin,
    Config,
    Demo,
    Hsm,
    Listener,
    Security,
    Transactions,
    kek_bytes,
)  # fmt: skip
from switchd.daemon import Switch
from switchd.demo import DEMO_TMK


def small_config(data_dir: Path, **overrides: object) -> Config:
    cfg = Config(
        data_dir=str(data_dir),
        listeners=[Listener(port=0)],
        admin=Admin(port=0),
        demo=Demo(terminals_per_merchant=20, cards=40),
    )
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


@pytest.fixture
async def switch(tmp_path: Path) -> AsyncIterator[Switch]:
    sw = Switch(small_config(tmp_path / "var"))
    async with trio.open_nursery() as nursery:
        await nursery.start(sw.run)
        yield sw
        sw.stop()


class Conn:
    """A terminal's TCP connection in a test: send frames, read answers."""

    def __init__(self, stream: trio.SocketStream, term: Terminal) -> None:
        self.stream = stream
        self.term = term
        self.splitter = FrameSplitter()

    async def recv(self, timeout: float = 10) -> Response:
        with trio.fail_after(timeout):
            while True:
                body = self.splitter.next_frame()
                if body is not None:
                    return self.term.read(body)
                data = await self.stream.receive_some(65536)
                if not data:
                    raise EOFError("switch closed the connection")
                self.splitter.feed(data)

    async def send(self, frame: bytes) -> None:
        await self.stream.send_all(frame)

    async def call(self, frame: bytes) -> Response:
        await self.send(frame)
        return await self.recv()

    async def sign_on(self, netcode: str = "003") -> Response:
        resp = await self.call(self.term.sign_on_frame(netcode))
        self.term.install_keys(resp, netcode)
        return resp


async def connect(sw: Switch, tid: str = "10000001", mid: str = "898100012340001") -> Conn:
    return await connect_to(sw.addresses[0], tid, mid)


async def connect_to(addr: tuple[str, int], tid: str, mid: str) -> Conn:
    stream = await trio.open_tcp_stream(*addr)
    return Conn(stream, Terminal(tid, mid))


class Stall:
    """A switch for ``hsm_relay`` that, unlike a trio.Event, can be turned off again."""

    def __init__(self) -> None:
        self.on = False

    def is_set(self) -> bool:
        return self.on


async def hsm_relay(
    listen_port_box: list[int],
    target: int,
    stall: trio.Event | Stall,
    *,
    task_status=trio.TASK_STATUS_IGNORED,
) -> None:  # type: ignore[no-untyped-def]
    """A TCP relay to the HSM that swallows requests while `stall` is set."""

    async def pipe(src: trio.SocketStream, dst: trio.SocketStream, gated: bool) -> None:
        while data := await src.receive_some(65536):
            if gated and stall.is_set():
                continue  # swallow: the HSM 'stops answering'
            await dst.send_all(data)

    async def handle(client: trio.SocketStream) -> None:
        upstream = await trio.open_tcp_stream("127.0.0.1", target)
        async with trio.open_nursery() as n:
            n.start_soon(pipe, client, upstream, True)
            n.start_soon(pipe, upstream, client, False)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    listen_port_box.append(listeners[0].socket.getsockname()[1])
    task_status.started()
    await trio.serve_listeners(handle, listeners)


async def switch_behind_relay(
    nursery: trio.Nursery, data_dir: Path, stall: trio.Event | Stall, hsm_timeout_s: float,
    transactions: Transactions,
) -> Switch:  # fmt: skip
    """A running switch whose HSM (a software one, external) is reached through
    ``hsm_relay``: setting ``stall`` makes the HSM go silent."""
    lmk = load_lmk("test")
    hsm_port = await nursery.start(serve_hsm, lmk, "127.0.0.1", 0)
    box: list[int] = []
    await nursery.start(hsm_relay, box, hsm_port, stall)
    cfg = small_config(
        data_dir,
        hsm=Hsm(embedded=False, addresses=[f"127.0.0.1:{box[0]}"], timeout_s=hsm_timeout_s),
        transactions=transactions,
    )
    cfg.security = Security(kek_lmk=key_under_lmk(lmk, "000", kek_bytes(cfg)))
    cfg.demo.tmk_lmk = key_under_lmk(lmk, "002", DEMO_TMK)
    sw = Switch(cfg)
    await nursery.start(sw.run)
    return sw
