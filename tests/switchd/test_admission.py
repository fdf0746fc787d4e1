"""At most max_in_flight transactions in progress; the rest wait in order or are turned away."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing
from prometheus_client import REGISTRY

from fastpath import requests as rq
from switchd.admission import Admission
from switchd.config import Transactions, load
from switchd.daemon import Switch
from switchd.demo import demo_pan
from switchd.ledger import card_account_id

from .conftest import Stall, connect, switch_behind_relay

CARD_A = rq.Card(demo_pan(31), "3012")
CARD_B = rq.Card(demo_pan(32), "3012")


async def test_waiters_are_admitted_in_arrival_order() -> None:
    gate = Admission(1)
    order: list[int] = []
    assert await gate.enter(1.0)  # a free slot: taken without waiting

    async def waiter(i: int) -> None:
        assert await gate.enter(10.0)
        order.append(i)
        gate.leave()

    async with trio.open_nursery() as nursery:
        for i in range(5):
            nursery.start_soon(waiter, i)
            await trio.testing.wait_all_tasks_blocked()
        assert gate.waiting == 5 and order == []
        gate.leave()
    assert order == [0, 1, 2, 3, 4]
    assert gate.in_progress == 0 and gate.waiting == 0


async def test_a_wait_that_times_out_holds_nothing(autojump_clock: trio.testing.MockClock
                                                   ) -> None:  # fmt: skip
    gate = Admission(1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(gate.run)  # the sweeper that turns waiters away
        assert await gate.enter(1.0)
        start = trio.current_time()
        assert not await gate.enter(0.5)
        assert trio.current_time() - start == pytest.approx(0.5)
        gate.leave()
        assert gate.in_progress == 0
        assert await gate.enter(0.5)  # the slot is free again: nobody kept it
        nursery.cancel_scope.cancel()


async def test_waiters_time_out_in_arrival_order(autojump_clock: trio.testing.MockClock
                                                 ) -> None:  # fmt: skip
    # One sweeper serves every waiter: each is turned away at its own deadline.
    gate = Admission(1)
    assert await gate.enter(1.0)
    turned_away: list[tuple[int, float]] = []

    async def waiter(i: int) -> None:
        assert not await gate.enter(1.0)
        turned_away.append((i, trio.current_time()))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(gate.run)
        start = trio.current_time()
        for i in range(3):
            nursery.start_soon(waiter, i)
            await trio.sleep(0.25)
        await trio.sleep(2)
        assert [(i, t - start) for i, t in turned_away] == [
            (0, pytest.approx(1.0)), (1, pytest.approx(1.25)), (2, pytest.approx(1.5))
        ]
        assert gate.waiting == 0 and gate.in_progress == 1  # only the first holder
        nursery.cancel_scope.cancel()


async def test_a_cancelled_waiter_holds_nothing() -> None:
    gate = Admission(1)
    assert await gate.enter(1.0)
    with trio.move_on_after(0.05):
        await gate.enter(10.0)
    assert gate.waiting == 0
    gate.leave()
    assert gate.in_progress == 0


async def test_raising_the_limit_admits_waiters_and_lowering_lets_slots_lapse() -> None:
    gate = Admission(1)
    assert await gate.enter(1.0)
    admitted: list[int] = []

    async def waiter(i: int) -> None:
        assert await gate.enter(10.0)
        admitted.append(i)

    async with trio.open_nursery() as nursery:
        for i in range(3):
            nursery.start_soon(waiter, i)
            await trio.testing.wait_all_tasks_blocked()  # parked in this order
        gate.limit = 3  # as after a SIGHUP: two more slots, two waiters in
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(admitted) == [0, 1] and gate.waiting == 1  # the first two to park
        gate.limit = 1  # three in progress, one allowed: two leaves lapse
        gate.leave()
        gate.leave()
        await trio.testing.wait_all_tasks_blocked()
        assert len(admitted) == 2 and gate.waiting == 1
        gate.leave()  # down to the limit: this one passes on
        await trio.testing.wait_all_tasks_blocked()
        assert admitted[2] == 2
    assert gate.in_progress == 1


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError):
        Admission(0)


def _shed() -> float:
    return REGISTRY.get_sample_value("switchd_transactions_shed_total") or 0.0


def _hsm_up() -> bool:
    return any(
        s.value == 1
        for m in REGISTRY.collect() if m.name == "hsm_client_hsm_up"
        for s in m.samples
    )  # fmt: skip


async def test_a_request_with_no_slot_in_time_is_answered_96_signed_and_retried_afresh(
    tmp_path: Path,
) -> None:
    """One slot, held by a sale stuck on a silent HSM: another terminal's sale
    is answered 96, signed, well before the stuck one, and nothing is posted;
    once the HSM answers again, the same request (same STAN) is approved."""
    stall = Stall()
    async with trio.open_nursery() as nursery:
        one_slot = Transactions(timeout_s=1.5, max_in_flight=1, queue_timeout_s=0.3)
        sw = await switch_behind_relay(nursery, tmp_path, stall, 1.0, one_slot)
        a = await connect(sw, "10000001")
        b = await connect(sw, "10000002")
        await a.sign_on()
        await b.sign_on()
        ta, tb = a.term, b.term
        shed_before = _shed()

        stall.on = True
        start = trio.current_time()
        await a.send(ta.frame(*rq.sale(ta.ident, CARD_A, ta.next_stan(), 7_00, "123456", ta.pik)))
        await trio.sleep(0.1)  # A is admitted and waits on the HSM, holding the slot
        stan_b = tb.next_stan()
        sale_b = tb.frame(*rq.sale(tb.ident, CARD_B, stan_b, 9_00, "123456", tb.pik))
        await b.send(sale_b)
        rb = await b.recv(timeout=5)
        waited_b = trio.current_time() - start
        ra = await a.recv(timeout=5)
        assert rb.rc == "96" and rb.mac_ok
        assert waited_b < 1.0  # turned away after 0.3 s, not once A's slot frees (1 s and later)
        assert ra.rc == "96" and ra.mac_ok
        assert _shed() == shed_before + 1
        assert sw.services is not None
        # Not journaled: a retry of this STAN is a new request, not a replay of the 96.
        assert await sw.services.journal.lookup(tb.tid, int(tb.batch), int(stan_b), False) is None
        assert (await b.call(tb.frame(*rq.echo_test(tb.ident, tb.next_stan())))).rc == "00"

        ledger, key = sw.services.ledger, sw.services.pan_key
        for card in (CARD_A, CARD_B):
            acct = await ledger.account(card_account_id(card.pan, key))
            assert acct is not None and acct.available == 100_000_00

        stall.on = False
        # Past the HSM timeout, every request swallowed during the stall has
        # failed and taken the HSM out of rotation; then wait for it to return.
        await trio.sleep(1.2)
        with trio.fail_after(15):
            while not _hsm_up():
                await trio.sleep(0.05)
        with trio.fail_after(10):
            again = await b.call(sale_b)  # the very same frame: it was never journaled
        assert again.rc == "00" and again.mac_ok
        acct = await ledger.account(card_account_id(CARD_B.pan, key))
        assert acct is not None and acct.available == 100_000_00 - 9_00
        sw.stop()
        nursery.cancel_scope.cancel()


async def test_a_reload_changes_the_number_of_slots(tmp_path: Path) -> None:
    path = tmp_path / "switchd.toml"
    body = (
        f'data_dir = "{tmp_path / "var"}"\n[[listeners]]\nport = 0\n[admin]\nenabled = false\n'
        "[demo]\nterminals_per_merchant = 2\ncards = 4\n[transactions]\nmax_in_flight = {}\n"
    )
    path.write_text(body.format(8))
    sw = Switch(load(str(path)), str(path))
    async with trio.open_nursery() as nursery:
        await nursery.start(sw.run)
        assert sw.processor is not None and sw.processor.admission.limit == 8
        path.write_text(body.format(3))
        sw.reload()  # what SIGHUP does
        assert sw.processor.admission.limit == 3
        c = await connect(sw)
        assert (await c.sign_on()).rc == "00"  # and it still serves
        sw.stop()
