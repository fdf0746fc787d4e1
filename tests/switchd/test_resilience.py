"""Bad input, overload, timeouts, restarts: the switch keeps serving everyone else."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest
import trio

from bench.sim import Terminal
from fastpath import requests as rq
from switchd import connection
from switchd.config import Terminals, Transactions
from switchd.daemon import Switch
from switchd.demo import demo_pan
from switchd.ledger import CommitFailed, card_account_id

from .conftest import Conn, connect, small_config, switch_behind_relay
from .test_transactions import available

CARD = rq.Card(demo_pan(30), "3012")


async def test_undecodable_frame_gets_30_and_the_connection_lives(switch: Switch) -> None:
    c = await connect(switch)
    await c.sign_on()
    t = c.term
    good = t.frame(*rq.echo_test(t.ident, t.next_stan()))
    # a 0200 whose bitmap names field 5 (not in the CUP field set)
    iso = bytes.fromhex("0200") + (1 << 59).to_bytes(8, "big") + bytes(12)
    bad = rq.DEFAULT_TPDU + rq.DEFAULT_HEADER + iso
    r = await c.call(len(bad).to_bytes(2, "big") + bad)
    assert r.msg.mti == "0210" and r.rc == "30"
    assert (await c.call(good)).rc == "00"


async def test_an_undecodable_request_is_answered_30_echoing_what_could_be_read(
    switch: Switch,
) -> None:
    """An answer echoes the request's 3, 4, 11, 25, 41, 42, 49, 60 (PROTOCOL.md
    §3), and a terminal matches an answer to its request by them: a 30 with
    F39 alone matches nothing. The fields that decoded before the bad one are
    echoed; the answer is unsigned (no MAC was checked). Nothing is posted."""
    c = await connect(switch, "10000009")
    await c.sign_on()
    t = c.term
    before = await available(switch, 30)
    mti, fields = rq.sale(t.ident, CARD, t.next_stan(), 5_00)
    body = t.frame(mti, fields, sign=False)[2:-1]  # F60, the last field, a byte short
    r = await c.call(len(body).to_bytes(2, "big") + body)
    assert r.msg.mti == "0210" and r.rc == "30" and r.mac_ok is None
    assert r.msg.fields == (3, 4, 11, 25, 39, 41, 42, 49)
    assert (r.msg.stan, r.msg.amount, r.msg.tid) == (fields[11], 5_00, t.tid)
    assert r.msg.tpdu == t.tpdu[:1] + t.tpdu[3:5] + t.tpdu[1:3]  # swapped, as configured
    mti, fields = rq.sale(t.ident, CARD, t.next_stan(), 6_00)
    body = t.frame(mti, fields)[2:] + b"\x00"  # every field whole, a byte after them
    r = await c.call(len(body).to_bytes(2, "big") + body)
    assert r.rc == "30" and r.msg.fields == (3, 4, 11, 25, 39, 41, 42, 49, 60)
    assert r.msg.stan == fields[11] and r.msg.batch == t.batch
    assert await available(switch, 30) == before
    r = await c.call(t.frame(*rq.echo_test(t.ident, t.next_stan())))
    assert r.rc == "00" and r.mac_ok  # the connection lives


async def test_a_refund_whose_original_cannot_be_read_gets_96(
    switch: Switch, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = await connect(switch, "10000007")
    await c.sign_on()
    t = c.term
    card = rq.Card(demo_pan(31), "3012")
    stan = t.next_stan()
    r = await c.call(t.frame(*rq.sale(t.ident, card, stan, 20_00, "123456", t.pik)))
    assert r.rc == "00"
    orig = t.remember("sale", r, stan)
    # Settled: batch 1 leaves memory, and a refund of its sale must read it back.
    totals = rq.settlement_totals(20_00, 1, 0, 0)
    assert (await c.call(t.frame(*rq.settlement(t.ident, t.next_stan(), totals)))).rc == "00"
    assert (await c.sign_on()).msg.batch == "000002"
    r = await c.call(t.frame(*rq.sale(t.ident, card, t.next_stan(), 1_00, "123456", t.pik)))
    assert r.rc == "00"  # batch 2 is in memory; only batch 1 must be read
    assert switch.services is not None
    journal = switch.services.journal

    async def unreadable(keys: object) -> list[tuple[object, ...]]:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(journal, "_fetch", unreadable)
    r = await c.call(t.frame(*rq.refund(t.ident, card, t.next_stan(), 5_00, orig)))
    assert r.rc == "96" and r.mac_ok
    assert not [rec for rec in caplog.records if rec.exc_info]  # a clear line, no traceback
    assert any("not looked up" in rec.getMessage() for rec in caplog.records)
    monkeypatch.undo()
    r = await c.call(t.frame(*rq.refund(t.ident, card, t.next_stan(), 5_00, orig)))
    assert r.rc == "00" and r.mac_ok  # readable again: the refund goes through

async def test_a_reversal_refused_96_is_done_when_repeated(
    switch: Switch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 96 is not kept as the answer: the terminal's repeated 0400 gets its undo."""
    c = await connect(switch, "10000008")
    await c.sign_on()
    t = c.term
    card = rq.Card(demo_pan(32), "3012")
    mti, fields = rq.sale(t.ident, card, t.next_stan(), 15_00, "123456", t.pik)
    assert (await c.call(t.frame(mti, fields))).rc == "00"
    assert switch.services is not None
    ledger = switch.services.ledger
    account = card_account_id(card.pan, switch.services.pan_key)

    async def failing(ops: object) -> list[object]:
        raise CommitFailed("disk full")

    monkeypatch.setattr(ledger, "submit_linked", failing)
    r = await c.call(t.frame(*rq.reversal(fields, "98")))
    assert r.rc == "96" and r.mac_ok
    monkeypatch.undo()
    acct = await ledger.account(account)
    assert acct is not None and acct.available == 100_000_00 - 15_00
    r = await c.call(t.frame(*rq.reversal(fields, "98")))
    assert r.rc == "00" and r.mac_ok
    acct = await ledger.account(account)
    assert acct is not None and acct.available == 100_000_00


async def test_absurd_length_closes_only_that_connection(switch: Switch) -> None:
    victim = await connect(switch, "10000003")
    other = await connect(switch, "10000004")
    await other.sign_on()
    await victim.send(b"\xff\xff" + bytes(10))
    with trio.fail_after(5):
        assert await victim.stream.receive_some(100) == b""
    t = other.term
    assert (await other.call(t.frame(*rq.echo_test(t.ident, t.next_stan())))).rc == "00"


async def test_a_client_that_stops_reading_is_dropped_and_others_are_served(
    switch: Switch, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(connection, "WRITE_TIMEOUT_S", 0.5)
    # A small receive window, so that what the switch cannot send piles up on its side.
    sock = trio.socket.socket()
    sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4096)
    await sock.connect(switch.addresses[0])
    victim = Conn(trio.SocketStream(sock), Terminal("10000005", "898100012340001"))
    await victim.sign_on()
    other = await connect(switch, "10000006")
    await other.sign_on()
    t = victim.term
    flood = b"".join(t.frame(*rq.echo_test(t.ident, t.next_stan())) for _ in range(4000))

    async def send_flood() -> None:
        # Blocks once the switch stops reading; fails once it has hung up.
        with contextlib.suppress(trio.BrokenResourceError):
            await victim.send(flood)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_flood)
        with trio.fail_after(5):
            while not any("not reading its answers" in r.getMessage() for r in caplog.records):
                # Everyone else is answered while that connection is stuck.
                o = other.term
                assert (await other.call(o.frame(*rq.echo_test(o.ident, o.next_stan())))).rc == "00"
                await trio.sleep(0.1)
        # The switch hung up before answering the flood: what the victim
        # reads now ends early, in an EOF or a reset.
        answers = 0
        with trio.fail_after(5):
            try:
                while data := await victim.stream.receive_some(65536):
                    victim.splitter.feed(data)
                    while victim.splitter.next_frame() is not None:
                        answers += 1
            except trio.BrokenResourceError:
                pass
        nursery.cancel_scope.cancel()
    assert answers < 4000
    o = other.term
    assert (await other.call(o.frame(*rq.echo_test(o.ident, o.next_stan())))).rc == "00"


async def test_max_connections_refuses_cleanly(tmp_path: Path) -> None:
    cfg = small_config(tmp_path, terminals=Terminals(max_connections=3))
    sw = Switch(cfg)
    async with trio.open_nursery() as nursery:
        await nursery.start(sw.run)
        conns = [await connect(sw, f"1000000{i}") for i in range(1, 4)]
        await conns[0].sign_on()
        extra = await connect(sw, "10000009")
        with trio.fail_after(5):
            data = b"x"
            try:
                data = await extra.stream.receive_some(100)
            except trio.BrokenResourceError:
                data = b""
            assert data == b""
        t = conns[0].term
        assert (await conns[0].call(t.frame(*rq.echo_test(t.ident, t.next_stan())))).rc == "00"
        sw.stop()


async def test_idle_and_stalled_connections_are_closed(tmp_path: Path) -> None:
    cfg = small_config(tmp_path, terminals=Terminals(idle_timeout_s=0.5, frame_timeout_s=0.5))
    sw = Switch(cfg)
    async with trio.open_nursery() as nursery:
        await nursery.start(sw.run)
        idle = await connect(sw)
        stalled = await connect(sw, "10000002")
        frame = stalled.term.sign_on_frame()
        await stalled.send(frame[:10])  # half a frame, then nothing
        with trio.fail_after(5):
            assert await idle.stream.receive_some(10) == b""
            assert await stalled.stream.receive_some(10) == b""
        sw.stop()


async def test_keys_survive_a_restart(tmp_path: Path) -> None:
    cfg = small_config(tmp_path)
    sw = Switch(cfg)
    async with trio.open_nursery() as nursery:
        await nursery.start(sw.run)
        c = await connect(sw)
        await c.sign_on()
        term = c.term
        sw.stop()
    sw2 = Switch(cfg)
    async with trio.open_nursery() as nursery:
        await nursery.start(sw2.run)
        c2 = await connect(sw2)
        c2.term = term  # same terminal, same keys, after the restart
        r = await c2.call(term.frame(*rq.sale(term.ident, CARD, term.next_stan(), 1_00, "123456",
                                              term.pik)))  # fmt: skip
        assert r.rc == "00" and r.mac_ok
        sw2.stop()


async def test_a_silent_hsm_gives_96_and_posts_nothing(tmp_path: Path) -> None:
    stall = trio.Event()
    async with trio.open_nursery() as nursery:
        sw = await switch_behind_relay(nursery, tmp_path, stall, 0.5, Transactions(timeout_s=1.0))
        c = await connect(sw)
        await c.sign_on()
        t = c.term
        stall.set()
        with trio.fail_after(5):
            r = await c.call(t.frame(*rq.sale(t.ident, CARD, t.next_stan(), 5_00, "123456", t.pik)))
        assert r.rc == "96" and r.mac_ok
        assert sw.services is not None
        acct = await sw.services.ledger.account(card_account_id(CARD.pan, sw.services.pan_key))
        assert acct is not None and acct.available == 100_000_00
        sw.stop()
        nursery.cancel_scope.cancel()


async def test_a_thousand_terminals_at_once(tmp_path: Path) -> None:
    cfg = small_config(tmp_path)
    cfg.demo.terminals_per_merchant = 500
    cfg.demo.cards = 200
    sw = Switch(cfg)
    results: list[str] = []

    async def terminal(tid: str, mid: str, seq: int) -> None:
        c = await connect(sw, tid, mid)
        await c.sign_on()
        t = c.term
        card = rq.Card(demo_pan(seq), "3012")
        r = await c.call(t.frame(*rq.sale(t.ident, card, t.next_stan(), 1_00, "123456", t.pik)))
        results.append(r.rc if r.mac_ok else "bad-mac")
        await c.stream.aclose()

    async with trio.open_nursery() as nursery:
        await nursery.start(sw.run)
        with trio.fail_after(120):
            async with trio.open_nursery() as fleet:
                for i in range(500):
                    fleet.start_soon(terminal, f"{10000001 + i}", "898100012340001", 4 + i % 196)
                    fleet.start_soon(terminal, f"{20000001 + i}", "898100012340002", 4 + i % 196)
        assert results.count("00") == 1000
        assert sw.services is not None
        total = 0
        for seq in range(4, 200):
            acct = await sw.services.ledger.account(
                card_account_id(demo_pan(seq), sw.services.pan_key)
            )
            assert acct is not None
            total += 100_000_00 - acct.available
        assert total == 1000 * 1_00
        assert await sw.services.ledger.audit() == []
        sw.stop()
