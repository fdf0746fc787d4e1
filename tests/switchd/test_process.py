"""The switch as a process: SIGTERM drains without losing money, SIGHUP reloads."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import trio

from fastpath import requests as rq
from switchd.config import load
from switchd.daemon import ledger_config
from switchd.demo import demo_pan
from switchd.ledger import open_ledger, transfer_id

from .conftest import Conn, connect_to

CONFIG = """
data_dir = "{data}"
[[listeners]]
port = 0
[admin]
port = 0
[demo]
terminals_per_merchant = 20
cards = 40
[limits]
max_amount = {max_amount}
"""


def write_config(path: Path, max_amount: int = 500_000_00) -> Path:
    path.write_text(CONFIG.format(data=path.parent / "var", max_amount=max_amount))
    return path


async def start(
    cfg: Path, stderr: int = subprocess.DEVNULL
) -> tuple[trio.Process, tuple[str, int]]:
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "switchd.cli", "run", "--config", str(cfg)],
        stdout=subprocess.PIPE, stderr=stderr,
    )  # fmt: skip
    assert proc.stdout is not None
    buf = b""
    with trio.fail_after(60):
        while b"terminals on" not in buf:
            chunk = await proc.stdout.receive_some(4096)
            assert chunk, "switchd exited before listening"
            buf += chunk
    line = next(ln for ln in buf.decode().splitlines() if "terminals on" in ln)
    host, port = line.rsplit(" ", 1)[1].rsplit(":", 1)
    return proc, (host, int(port))


async def test_sigterm_drains_in_flight_transactions(tmp_path: Path) -> None:
    cfg_path = write_config(tmp_path / "switchd.toml")
    proc, addr = await start(cfg_path)
    sent: list[tuple[str, int, int, str | None]] = []  # tid, batch, stan, answer

    async def terminal(i: int) -> None:
        c = await connect_to(addr, f"{10000001 + i}", "898100012340001")
        await c.sign_on()
        await drive(c, i)

    async def drive(c: Conn, i: int) -> None:
        t = c.term
        card = rq.Card(demo_pan(4 + i), "3012")
        while True:
            stan = t.next_stan()
            entry = [t.tid, int(t.batch), int(stan), None]
            try:
                await c.send(t.frame(*rq.sale(t.ident, card, stan, 1_00, "123456", t.pik)))
                r = await c.recv()
                entry[3] = r.rc
            except (EOFError, trio.BrokenResourceError, trio.ClosedResourceError):
                sent.append(tuple(entry))  # type: ignore[arg-type]
                return
            sent.append(tuple(entry))  # type: ignore[arg-type]

    async with trio.open_nursery() as nursery:
        for i in range(10):
            nursery.start_soon(terminal, i)
        await trio.sleep(1.5)
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            code = await proc.wait()
    assert code == 0
    answered = [s for s in sent if s[3] is not None]
    assert len(answered) > 20 and {s[3] for s in answered} == {"00"}
    async with open_ledger(ledger_config(load(cfg_path))) as ledger:
        for tid, batch, stan, rc in sent:
            posted = await ledger.transfer(transfer_id(tid, batch, stan, "sale", 0))
            # answered 00 <=> posted; unanswered requests never posted
            assert (posted is not None) == (rc == "00"), (tid, stan, rc)
        assert await ledger.audit() == []


async def test_sighup_reloads_limits_without_dropping_connections(tmp_path: Path) -> None:
    cfg_path = write_config(tmp_path / "switchd.toml")
    proc, addr = await start(cfg_path)
    try:
        c = await connect_to(addr, "10000001", "898100012340001")
        await c.sign_on()
        t = c.term
        card = rq.Card(demo_pan(5), "3012")
        assert (await c.call(t.frame(*rq.sale(t.ident, card, t.next_stan(), 50_00)))).rc == "00"
        write_config(cfg_path, max_amount=10_00)
        proc.send_signal(signal.SIGHUP)
        await trio.sleep(0.5)
        assert (await c.call(t.frame(*rq.sale(t.ident, card, t.next_stan(), 50_00)))).rc == "61"
    finally:
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            assert await proc.wait() == 0


async def test_a_log_reader_that_stops_reading_does_not_stop_the_switch(tmp_path: Path) -> None:
    # The switch's stderr is a pipe that nobody reads (a stalled log shipper):
    # its 64 KiB fill within a few hundred transaction lines.
    proc, addr = await start(write_config(tmp_path / "switchd.toml"), stderr=subprocess.PIPE)
    assert proc.stderr is not None
    try:
        c = await connect_to(addr, "10000001", "898100012340001")
        await c.sign_on()
        t = c.term
        card = rq.Card(demo_pan(4), "3012")
        with trio.fail_after(60):
            for _ in range(1_000):  # about 250 KB of transaction log
                r = await c.call(t.frame(*rq.sale(t.ident, card, t.next_stan(), 1_00)))
                assert r.rc == "00" and r.mac_ok
        # The reader comes back: the lines were kept (well under the sink's
        # bound), whole and in order.
        log = b""
        with trio.move_on_after(5):
            while log.count(b'"kind":"sale"') < 1_000:
                log += await proc.stderr.receive_some(65536)
        sales = [orjson.loads(ln) for ln in log.splitlines() if b'"kind":"sale"' in ln]
        assert len(sales) == 1_000
        stans = [int(s["stan"]) for s in sales]
        assert stans == sorted(stans) and len(set(stans)) == 1_000
    finally:
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            while await proc.stderr.receive_some(65536):
                pass  # drain, so that the last lines do not hold up the exit
            assert await proc.wait() == 0


def test_bad_configuration_names_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[hsm]\npool_size = "four"\n')
    out = subprocess.run(
        [sys.executable, "-m", "switchd.cli", "run", "--config", str(bad)],
        capture_output=True, text=True, timeout=60, env={**os.environ},
    )  # fmt: skip
    assert out.returncode == 2
    assert "$.hsm.pool_size" in out.stderr
