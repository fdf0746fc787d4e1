"""A fleet of simulated POS terminals on asyncio + uvloop: the load generator's engine.

Each terminal is one TCP connection and one task. It signs on (real key
exchange under the demo TMK), waits until the whole fleet has signed on,
then runs a mix of transactions until the run's time is up, closed-loop (the
next request as soon as the answer arrives, as a busy terminal does) or at a
target rate shared by the fleet; at the end it settles its batch. Every
answer is checked the way a terminal checks it: MAC under the session MAK,
MTI, STAN echo, and the response code against what the step expects;
anything else is counted as an error, never silently accepted.

Why asyncio on uvloop with a bare ``asyncio.Protocol`` (no streams): the
generator shares the machine with the switch and must cost as little CPU
per request as possible; the frame splitter, codec, MAC and PIN block are
the compiled ``fastpath`` ones. Sales, the bulk of any mix, run from the
connection's callbacks (``Worker.run_sales``): no future, timer or task
wake-up per request; their timeouts come from one fleet watchdog and, at a
target rate, their start from one millisecond-tick pacer.

Bounds: every loop ends by itself. A terminal stops starting steps at the
end of the run, every receive has a timeout, reconnects back off and stop at
the end of the run, and the fleet waits a bounded time for its terminals.

Money: the fleet keeps its own tally of what the switch approved per card
(``Tally``), so a soak can compare it with the ledger. A request whose
outcome is unknown (no answer) is settled as a terminal settles it: a
reversible one (sale, void, pre-authorization, completion) is reversed
after reconnecting, a refund (an 0220 advice) is sent again, the same STAN,
until it is answered (store and forward); its card is uncertain meanwhile.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import heapq
import itertools
import random
import resource
import sys
import time
from bisect import bisect
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.sim import Response, Terminal, TerminalError
from bench.stats import Stats
from fastpath import requests as rq
from fastpath.codec import Message
from fastpath.crypto import DesKey, pin_block_format0
from fastpath.errors import CodecError, FrameError
from fastpath.framing import FrameSplitter
from switchd.demo import demo_pan

MERCHANTS = ("898100012340001", "898100012340002")
#: First TID of each demo merchant (switchd.demo.MERCHANTS).
FIRST_TID = (10_000_001, 20_000_001)
PIN = "123456"
EXPIRY = "3012"
START_BALANCE = 100_000_00  # every demo card from sequence 4 on
DEFAULT_MIX = {"sale": 70, "balance": 5, "void": 6, "refund": 6, "preauth": 7, "reversal": 6}
KINDS = ("sale", "balance", "void", "refund", "preauth", "reversal")
#: Keys of the ceiling mode (bench.ceiling signs its fixed answer with this MAK).
CEILING_PIK = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
CEILING_MAK = bytes.fromhex("89ABCDEF01234567")
#: Approved sales a terminal keeps for later voids and refunds.
OPEN_SALES = 16
#: Settlement counts are n3 (PROTOCOL.md §3): a terminal settles before its batch
#: holds more, as real terminals do when their batch is full.
BATCH_FULL = 990
#: What a run of sales returns when the batch is full: settle before the next step.
FULL = "full"
#: How often the fleet looks for sales whose answer is overdue (one timer for the fleet).
WATCHDOG_S = 0.25
#: The answer's MTI to each request's (the request's + 10).
ANSWER_MTI = {m: f"{int(m) + 10:04d}" for m in ("0100", "0200", "0220", "0400", "0500", "0800")}


@functools.lru_cache(maxsize=65536)
def demo_card(seq: int) -> tuple[rq.Card, str, bytes]:
    """A demo card, its track 2 and its clear PIN block, made once per card.

    A format 0 block is the PIN field XOR the PAN field: it depends on the card
    only (every demo card has the same PIN), so the fleet keeps it and each
    request pays one 3DES encryption under the terminal's session PIK.
    """
    pan = demo_pan(seq)
    card = rq.Card(pan, EXPIRY)
    return card, card.track2, pin_block_format0(PIN, pan)


def parse_mix(text: str) -> dict[str, float]:
    """``sale=70,void=10`` -> weights; unknown kinds are refused by name."""
    mix: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, weight = part.partition("=")
        if name not in KINDS:
            raise ValueError(f"unknown kind {name!r} in the mix (known: {', '.join(KINDS)})")
        mix[name] = float(weight or 1)
    if not mix or sum(mix.values()) <= 0:
        raise ValueError("the mix needs at least one kind with a positive weight")
    return mix


def terminal_ids(index: int, per_merchant: int) -> tuple[str, str]:
    """(TID, MID) of the fleet's terminal ``index``: the first merchant's, then the second's."""
    m, k = divmod(index, per_merchant)
    if m >= len(MERCHANTS):
        raise ValueError(f"only {len(MERCHANTS) * per_merchant} demo terminals exist")
    return f"{FIRST_TID[m] + k:08d}", MERCHANTS[m]


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


@dataclass
class FleetConfig:
    host: str = "127.0.0.1"
    port: int = 5800
    terminals: int = 100
    duration: float = 10.0
    # Seconds of running the mix before the measured window opens (caches, sessions,
    # TCP windows; at a low rate per terminal, its first requests after sign-on).
    warmup: float = 0.0
    # Steps per second across the fleet; None: closed loop.
    rate: float | None = None
    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    cards: tuple[int, int] = (4, 10_000)
    per_merchant: int = 5000
    first: int = 0  # index of the fleet's first terminal (keeps fleets on distinct TIDs)
    settle: bool = True
    # Transactions of one kind (debits or credits) after which a terminal settles mid-run.
    batch_full: int = BATCH_FULL
    timeout: float = 10.0
    connect_concurrency: int = 256
    sign_on_timeout: float = 180.0
    # Against bench.ceiling: no sign-on, fixed keys, sales only, no STAN check.
    ceiling: bool = False
    # Codes and failures expected while faults are injected (soak): counted apart.
    tolerate: frozenset[str] = frozenset()
    tolerate_failures: bool = False
    # When set, `tolerate` codes count as tolerated only while this returns True
    # (the fault's window) and as errors otherwise.
    tolerate_while: Callable[[], bool] | None = None
    seed: int = 1
    progress: bool = True


@dataclass
class Tally:
    """What the fleet saw approved, per card sequence: the net amount taken.

    ``doubts``: the requests whose outcome is not known yet, by terminal and
    STAN, each with its card. Kept per request, not per card: two terminals
    may leave the same card in doubt at once, and the first one's answer
    must not clear the other's.
    """

    net: dict[int, int] = field(default_factory=dict)
    doubts: dict[tuple[object, object], int] = field(default_factory=dict)

    def add(self, seq: int, amount: int) -> None:
        self.net[seq] = self.net.get(seq, 0) + amount

    def doubt(self, fields: dict[int, object], seq: int) -> None:
        """The request (its F41 and F11) may or may not have moved card seq's money."""
        self.doubts[(fields[41], fields[11])] = seq

    def resolved(self, fields: dict[int, object]) -> None:
        self.doubts.pop((fields[41], fields[11]), None)

    @property
    def uncertain(self) -> set[int]:
        """The cards some request left in doubt."""
        return set(self.doubts.values())


class Unanswered(Exception):
    """No answer: timeout, connection lost, or an answer that is not a frame."""


class Link(asyncio.Protocol):
    """One terminal's connection: frames in, frames out, no streams layer."""

    def __init__(self) -> None:
        self.splitter = FrameSplitter(max_length=4096)
        self.frames: deque[bytes] = deque()
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.closed = False
        # While its worker runs sales from callbacks (Worker.run_sales), every
        # frame goes straight to it: no queue, no future, no task wake-up per answer.
        self.hot: Worker | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.splitter.feed(data)
            while (body := self.splitter.next_frame()) is not None:
                if (hot := self.hot) is not None:
                    hot.on_frame(body)
                else:
                    self.frames.append(body)
        except FrameError:
            self.closed = True
            if self.transport is not None:
                self.transport.close()
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.hot is not None:
            self.hot.fail(Unanswered("connection closed"))
        self._wake()

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def send(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            raise Unanswered("connection closed")
        self.transport.write(data)

    async def recv(self, timeout: float) -> bytes:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.frames:
            if self.closed:
                raise Unanswered("connection closed")
            fut = loop.create_future()
            self.waiter = fut
            handle = loop.call_at(deadline, _expire, fut)
            try:
                await fut
            finally:
                handle.cancel()
                self.waiter = None
        return self.frames.popleft()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _expire(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_exception(Unanswered("timeout"))


class OpenSale:
    """An approved sale kept for a later void or refund.

    What they quote of it is read from its answer only when one does (most
    sales are never voided nor refunded).
    """

    __slots__ = ("amount", "batch", "msg", "seq", "stan")

    def __init__(self, msg: Message, batch: str, stan: str, seq: int, amount: int) -> None:
        self.msg, self.batch, self.stan, self.seq, self.amount = msg, batch, stan, seq, amount

    @property
    def orig(self) -> rq.Original:
        m = self.msg
        return rq.Original(batch=self.batch, stan=self.stan, date=m.local_date or "",
                           rrn=m.rrn or "", auth_code=(m.auth_code or "").strip())  # fmt: skip


class Worker:
    """One simulated terminal of the fleet."""

    def __init__(self, fleet: Fleet, index: int) -> None:
        self.fleet = fleet
        self.cfg = fleet.cfg
        self.stats = fleet.stats
        tid, mid = terminal_ids(self.cfg.first + index, self.cfg.per_merchant)
        # STANs start at a random point: a fleet that did not settle leaves its
        # batch open, and a STAN reused in a batch would be answered 94.
        self.term = Terminal(tid, mid, stan=fleet.stan_rng.randrange(900_000))
        self.rng = random.Random(self.cfg.seed * 1_000_003 + index)
        self.link: Link | None = None
        self.open_sales: deque[OpenSale] = deque(maxlen=OPEN_SALES)
        self.debits = [0, 0]  # amount, count of this batch
        self.credits = [0, 0]
        # The request whose outcome is unknown, to reverse after reconnecting:
        # (its fields, card sequence, amount already in the tally to take back).
        self.to_reverse: tuple[dict[int, object], int, int] | None = None
        # The refund advice left unanswered, to send again after reconnecting:
        # (its MTI, its fields, card sequence, amount).
        self.to_resend: tuple[str, dict[int, object], int, int] | None = None
        # A sale's constant fields (TID, MID, codes, F60 of the batch), made once per batch.
        self._sale_batch = ""
        self._sale_template: dict[int, object] = {}
        self.kinds = list(self.cfg.mix)
        self._card_lo = self.cfg.cards[0]
        self._card_span = self.cfg.cards[1] - self.cfg.cards[0] + 1
        # Pacing and the run of sales driven from callbacks (run_sales).
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop_at = 0.0
        self.interval = 0.0
        self.next_t = 0.0
        self.deadline = 0.0  # when the sale in flight is overdue (0: none in flight)
        self._run: asyncio.Future[tuple[str, float | None] | None] | None = None
        self._inflight: tuple[dict[int, object], int, int, str, float] | None = None
        self._cum_weights = list(itertools.accumulate(self.cfg.mix.values()))

    # -- connection ----------------------------------------------------------

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        async with self.fleet.connect_gate:
            _, link = await asyncio.wait_for(
                loop.create_connection(Link, self.cfg.host, self.cfg.port), self.cfg.timeout
            )
        self.link = link
        if self.cfg.ceiling:
            self.term.pik, self.term.mak = DesKey(CEILING_PIK), DesKey(CEILING_MAK)
            return
        await self.sign_on()

    async def sign_on(self) -> None:
        assert self.link is not None
        t0 = time.perf_counter()
        self.link.send(self.term.sign_on_frame())
        resp = self.term.read(await self.link.recv(self.cfg.timeout))
        self.term.install_keys(resp)  # raises TerminalError on a refusal or bad keys
        self.stats.sign_ons += 1
        self.stats.sign_on_latencies.append(time.perf_counter() - t0)

    async def reconnect(self, stop_at: float) -> bool:
        """After a lost answer: a new connection, a new sign-on, then the reversal
        (or the advice sent again)."""
        if self.link is not None:
            self.link.close()
        delay = 0.05
        while time.perf_counter() < stop_at + self.cfg.timeout:
            try:
                await self.connect()
                if self.to_reverse is not None:
                    await self.reverse_unknown()
                if self.to_resend is not None:
                    await self.resend_advice()
                return True
            except Exception as exc:  # refused sign-on, reset, timeout: all retried
                self.failure(f"reconnect: {type(exc).__name__}")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
        return False

    def failure(self, reason: str) -> None:
        if self.cfg.tolerate_failures:
            self.stats.tolerated[reason] += 1
        else:
            self.stats.error(reason)

    # -- one request -----------------------------------------------------------

    async def call(self, kind: str, mti: str, fields: dict[int, object],
                   t0: float | None = None) -> Response:  # fmt: skip
        """Send one request, wait for its answer, check it as a terminal does."""
        assert self.link is not None
        start = time.perf_counter() if t0 is None else t0
        self.link.send(self.term.frame(mti, fields))
        return self.check(kind, mti, fields, await self.link.recv(self.cfg.timeout), start)

    def check(self, kind: str, mti: str, fields: dict[int, object], body: bytes,
              start: float) -> Response:  # fmt: skip
        """Decode an answer and check it as a terminal does: MAC, MTI, STAN; record it."""
        now = time.perf_counter()
        try:
            resp = self.term.read(body)
        except CodecError as exc:
            self.stats.error(f"{kind}: undecodable answer ({type(exc).__name__})")
            raise Unanswered("undecodable answer") from None
        rc = resp.rc
        self.stats.record(kind, rc, now - start, now)
        want_mti = ANSWER_MTI.get(mti) or f"{int(mti) + 10:04d}"
        if resp.msg.mti != want_mti:
            self.stats.error(f"{kind}: MTI {resp.msg.mti}, expected {want_mti}")
        if not self.cfg.ceiling and resp.msg.stan != fields[11]:
            self.stats.error(f"{kind}: STAN not echoed")
        if resp.mac_ok is False or (rc == "00" and resp.mac_ok is None):
            # An answer that does not verify is no answer: the terminal reverses.
            self.stats.error(f"{kind}: bad or missing MAC")
            raise Unanswered("bad MAC")
        return resp

    def expect(self, kind: str, resp: Response, want: str = "00") -> bool:
        if resp.rc == want:
            return True
        window = self.cfg.tolerate_while
        if resp.rc in self.cfg.tolerate and (window is None or window()):
            self.stats.tolerated[f"{kind}:{resp.rc}"] += 1
        else:
            self.stats.error(f"{kind}: rc {resp.rc}, expected {want}")
        return False

    def card_seq(self) -> int:
        """A demo card's sequence, uniform over ``cfg.cards`` (both ends included)."""
        # From random() directly: randint's rejection sampling cost twice as
        # much, and the callback path draws a card for every sale.
        return self._card_lo + int(self.rng.random() * self._card_span)

    def card(self) -> tuple[int, rq.Card]:
        seq = self.card_seq()
        return seq, demo_card(seq)[0]

    def pick(self) -> str:
        """The next kind by the mix's weights: ``rng.choices`` without its set-up per call."""
        cum = self._cum_weights
        return self.kinds[bisect(cum, self.rng.random() * cum[-1], 0, len(cum) - 1)]

    def sale_request(self, seq: int, amount: int, stan: str) -> dict[int, object]:
        """The fields of ``rq.sale`` for a demo card: the batch's template plus four fields."""
        t = self.term
        if self._sale_batch != t.batch:
            _, self._sale_template = rq.sale(t.ident, demo_card(seq)[0], stan, amount, PIN, t.pik)
            self._sale_batch = t.batch
        _, track2, clear_block = demo_card(seq)
        fields = self._sale_template.copy()
        fields[4] = amount
        fields[11] = stan
        fields[35] = track2
        fields[52] = t.pik.encrypt(clear_block)  # type: ignore[union-attr]
        return fields

    def amount(self) -> int:
        """1.00 to 99.99, uniform (as card_seq: from random() directly)."""
        return 1_00 + int(self.rng.random() * 99_00)

    # -- steps -------------------------------------------------------------------

    async def sale(self, t0: float | None, then_reverse: bool = False) -> None:
        t, tally = self.term, self.fleet.tally
        seq = self.card_seq()
        amount = self.amount()
        stan = t.next_stan()
        fields = self.sale_request(seq, amount, stan)
        self.to_reverse = (fields, seq, 0)
        resp = await self.call("sale", "0200", fields, t0)
        self.to_reverse = None
        if not self.expect("sale", resp) or self.cfg.ceiling:
            return
        tally.add(seq, amount)
        if then_reverse:
            self.to_reverse = (fields, seq, amount)
            rev = await self.call("reversal", *rq.reversal(fields, "96"))
            self.to_reverse = None
            if self.expect("reversal", rev):
                tally.add(seq, -amount)
                return
        self._keep_sale(resp, stan, seq, amount)

    def _keep_sale(self, resp: Response, stan: str, seq: int, amount: int) -> None:
        """An approved sale stays: in the batch's debits, and open for a void or refund."""
        self.debits[0] += amount
        self.debits[1] += 1
        self.open_sales.append(OpenSale(resp.msg, self.term.batch, stan, seq, amount))

    # -- sales from callbacks ------------------------------------------------------
    #
    # The bulk of any mix is sales, one after another. A coroutine per request
    # cost a future, a timer, a task wake-up and five generator frames resumed
    # per answer; so a run of sales is driven from the connection's callbacks:
    # each answer is checked (the same ``check`` and ``expect``) and the next
    # sale sent from ``data_received``. The run ends, resolving one future,
    # when the mix picks another kind (the task runs it as before), the batch
    # is full, the time is up, or on a failure (the task reconnects and
    # reverses ``to_reverse`` as before). Overdue answers are found by the
    # fleet's watchdog from ``deadline``, instead of a timer per request.

    def run_sales(self) -> asyncio.Future[tuple[str, float | None] | None]:
        """Sales until the mix picks another kind: then ``(kind, t0)``; FULL; None at the end."""
        assert self.link is not None and self.loop is not None
        self._run = fut = self.loop.create_future()
        self.link.hot = self
        self._safely(self._next_step)
        return fut

    def _safely(self, step: Callable[[], None]) -> None:
        try:
            step()
        except Exception as exc:  # a callback must not raise into the event loop
            self.fail(exc)

    def _next_step(self) -> None:
        if not self.interval:
            if time.perf_counter() >= self.stop_at:
                self._finish(None)
            else:
                self._start(None)
            return
        if self.next_t >= self.stop_at:
            self._finish(None)
            return
        if self.next_t > time.perf_counter():
            self.fleet.pacer.add(self, self._run, self.next_t)
        else:
            self._due()

    def wake(self, run: object) -> None:
        """The pacer: this worker's next step is due, if ``run`` is still its run."""
        if run is self._run and run is not None and not self._run.done():  # type: ignore[union-attr]
            self._safely(self._due)

    def _due(self) -> None:
        # Latency from the scheduled moment (see main).
        t0, self.next_t = min(self.next_t, time.perf_counter()), self.next_t + self.interval
        self._start(t0)

    def _start(self, t0: float | None) -> None:
        if self._run is None or self._run.done():  # the task was cancelled: stop sending
            self._end_run()
            return
        kind = "sale" if self.cfg.ceiling else self.pick()
        if kind != "sale":
            self._finish((kind, t0))
            return
        seq = self.card_seq()
        amount = self.amount()
        stan = self.term.next_stan()
        fields = self.sale_request(seq, amount, stan)
        self.to_reverse = (fields, seq, 0)
        start = time.perf_counter() if t0 is None else t0
        self._inflight = (fields, seq, amount, stan, start)
        self.deadline = time.perf_counter() + self.cfg.timeout
        self.link.send(self.term.frame("0200", fields))  # type: ignore[union-attr]

    def on_frame(self, body: bytes) -> None:
        """An answer while a run of sales is on (from ``Link.data_received``)."""
        inflight = self._inflight
        if inflight is None:
            self.stats.error("sale: a frame with no request in flight")
            return
        self._inflight = None
        self.deadline = 0.0
        fields, seq, amount, stan, start = inflight
        try:
            resp = self.check("sale", "0200", fields, body, start)
            self.to_reverse = None
            if self.expect("sale", resp) and not self.cfg.ceiling:
                self.fleet.tally.add(seq, amount)
                self._keep_sale(resp, stan, seq, amount)
                if self.debits[1] >= self.cfg.batch_full:
                    self._finish((FULL, None))
                    return
            self._next_step()
        except Exception as exc:
            self.fail(exc)

    def _end_run(self) -> asyncio.Future[tuple[str, float | None] | None] | None:
        if self.link is not None:
            self.link.hot = None
        self._inflight = None
        self.deadline = 0.0
        fut, self._run = self._run, None
        return fut if fut is not None and not fut.done() else None

    def _finish(self, result: tuple[str, float | None] | None) -> None:
        if (fut := self._end_run()) is not None:
            fut.set_result(result)

    def fail(self, exc: BaseException) -> None:
        """End the run with ``exc``; ``to_reverse`` still names a sale left unanswered."""
        if (fut := self._end_run()) is not None:
            fut.set_exception(exc)

    async def balance(self, t0: float | None) -> None:
        t = self.term
        _, card = self.card()
        resp = await self.call("balance", *rq.balance(t.ident, card, t.next_stan(), PIN, t.pik), t0)
        self.expect("balance", resp)

    async def void_or_refund(self, kind: str, t0: float | None) -> None:
        if not self.open_sales:
            await self.sale(t0)
            return
        t, tally = self.term, self.fleet.tally
        o = self.open_sales.popleft()
        card = demo_card(o.seq)[0]
        if kind == "void":
            amount = o.amount
            mti, fields = rq.void(t.ident, card, t.next_stan(), amount, o.orig)
        else:
            amount = self.rng.randint(1, o.amount)
            mti, fields = rq.refund(t.ident, card, t.next_stan(), amount, o.orig)
        # A void is reversible; a refund (0220 advice) is not: a lost one is sent again.
        self.to_reverse = (fields, o.seq, 0) if kind == "void" else None
        if kind == "refund":
            tally.doubt(fields, o.seq)
            self.to_resend = (mti, fields, o.seq, amount)
        resp = await self.call(kind, mti, fields, t0)
        self.to_reverse = self.to_resend = None
        tally.resolved(fields)
        self._credit(kind, resp, o.seq, amount)

    def _credit(self, kind: str, resp: Response, seq: int, amount: int) -> None:
        """An answered void or refund: the card's money back, in the batch's credits."""
        if self.expect(kind, resp):
            self.fleet.tally.add(seq, -amount)
            self.credits[0] += amount
            self.credits[1] += 1

    async def resend_advice(self) -> None:
        """Send the unanswered refund advice again, as it was (its first answer, or
        its first processing, comes back: a duplicate is never posted twice)."""
        assert self.to_resend is not None
        mti, fields, seq, amount = self.to_resend
        resp = await self.call("refund", mti, fields)
        self.to_resend = None
        self.fleet.tally.resolved(fields)
        self._credit("refund", resp, seq, amount)

    async def preauth(self, t0: float | None) -> None:
        """A hold, then its completion for at most the held amount."""
        t, tally = self.term, self.fleet.tally
        seq, card = self.card()
        held = self.amount()
        stan = t.next_stan()
        mti, fields = rq.preauth(t.ident, card, stan, held, PIN, t.pik)
        self.to_reverse = (fields, seq, 0)
        resp = await self.call("preauth", mti, fields, t0)
        self.to_reverse = None
        if not self.expect("preauth", resp):
            return
        tally.add(seq, held)
        hold = t.remember("preauth", resp, stan)
        amount = held - self.rng.randint(0, held // 2)
        cstan = t.next_stan()
        mti, fields = rq.completion(t.ident, card, cstan, amount, hold)
        # A lost completion is reversed: the hold then stands again, as counted.
        # The card is uncertain until one of them is answered.
        tally.doubt(fields, seq)
        self.to_reverse = (fields, seq, 0)
        resp = await self.call("completion", mti, fields)
        self.to_reverse = None
        tally.resolved(fields)
        if self.expect("completion", resp):
            tally.add(seq, amount - held)
            self.debits[0] += amount
            self.debits[1] += 1

    async def reverse_unknown(self) -> None:
        """Reverse the request whose answer never came (repeat until answered)."""
        assert self.to_reverse is not None
        fields, seq, counted = self.to_reverse
        tally = self.fleet.tally
        tally.doubt(fields, seq)
        resp = await self.call("reversal", *rq.reversal(fields, "98"))
        if self.expect("reversal", resp):
            tally.resolved(fields)
            tally.add(seq, -counted)
            self.to_reverse = None

    async def settle(self) -> bool:
        """Settle the open batch; True when the switch closed it (a new batch follows)."""
        t = self.term
        totals = rq.settlement_totals(self.debits[0], self.debits[1],
                                      self.credits[0], self.credits[1])  # fmt: skip
        resp = await self.call("settlement", *rq.settlement(t.ident, t.next_stan(), totals))
        self.stats.settlements += 1
        if not self.expect("settlement", resp):
            return False
        if resp.msg.settlement_totals().code == 1:
            self.stats.settlements_balanced += 1
        else:
            self.stats.error("settlement: not balanced")
        return True

    async def settle_full_batch(self) -> None:
        """Settle, then sign on for the next batch; what was open for voids is gone."""
        if await self.settle():
            self.debits, self.credits = [0, 0], [0, 0]
            self.open_sales.clear()
            await self.sign_on()

    # -- the terminal's life -----------------------------------------------------

    async def step(self, kind: str, t0: float | None) -> None:
        if kind == "sale" or self.cfg.ceiling:
            await self.sale(t0)
        elif kind == "balance":
            await self.balance(t0)
        elif kind in ("void", "refund"):
            await self.void_or_refund(kind, t0)
        elif kind == "preauth":
            await self.preauth(t0)
        else:
            await self.sale(t0, then_reverse=True)

    async def main(self) -> None:
        fleet = self.fleet
        try:
            await self.connect()
        except Exception as exc:
            self.stats.error(f"sign-on: {type(exc).__name__}: {exc}")
            fleet.signed_on(False)
            return
        fleet.signed_on(True)
        await fleet.go.wait()
        self.loop = asyncio.get_running_loop()
        self.stop_at = stop_at = fleet.stop_at
        self.interval = self.cfg.terminals / self.cfg.rate if self.cfg.rate else 0.0
        # Latency from the scheduled moment: a late start is the system's delay
        # too (no coordinated omission). uvloop's timers round to the
        # millisecond and may wake a little early: then from the send.
        self.next_t = fleet.window_start + self.rng.random() * self.interval
        while True:
            # Sales run from callbacks until the mix picks another kind (see run_sales).
            kind = "sale"
            try:
                picked = await self.run_sales()
                if picked is None:
                    break
                kind, t0 = picked
                if kind != FULL:
                    await self.step(kind, t0)
                full = max(self.debits[1], self.credits[1]) >= self.cfg.batch_full
                if full and not self.cfg.ceiling:
                    await self.settle_full_batch()
            except (Unanswered, OSError, TerminalError) as exc:
                # TerminalError: the sign-on after a full batch's settlement was
                # refused (96 while the soak's HSM is cut); it left the worker
                # dead, its terminal silent for the rest of the run.
                self.failure(f"{kind}: {exc}")
                if not await self.reconnect(stop_at):
                    break
        # The closing settlement comes after the window: at a target rate a
        # terminal whose next step falls past the end stops early, and 5,000
        # settlements inside the window were a storm charged to the sales'
        # percentiles. (Settlements of full batches mid-run stay in it.)
        wait = stop_at - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        try:
            if self.to_reverse is not None or self.to_resend is not None:
                await self.reconnect(stop_at)
            if self.cfg.settle and not self.cfg.ceiling:
                await self.settle()
        except (Unanswered, OSError) as exc:
            self.failure(f"settlement: {exc}")
        finally:
            if self.link is not None:
                self.link.close()


class Pacer:
    """Wakes paced workers on millisecond ticks: one timer per tick, not one per request.

    A uvloop timer per request cost ~3.7 us to make, arm and fire. Workers due
    in the same millisecond share a bucket; one timer is armed for the earliest.
    A bucket fires up to ~2 ms before its workers' moments (uvloop's timers
    round to the millisecond anyway): ``Worker._due`` then measures latency
    from the send, and the next moment is the schedule's, so the rate holds.
    """

    def __init__(self) -> None:
        self.buckets: dict[int, list[tuple[Worker, object]]] = {}
        self.ticks: list[int] = []  # heap of the buckets' ticks (ms of perf_counter)
        self.handle: asyncio.TimerHandle | None = None
        self.armed = 0

    def add(self, w: Worker, run: object, at: float) -> None:
        tick = int(at * 1000)
        bucket = self.buckets.get(tick)
        if bucket is None:
            self.buckets[tick] = bucket = []
            heapq.heappush(self.ticks, tick)
            if self.handle is None or tick < self.armed:
                self._arm(tick)
        bucket.append((w, run))

    def _arm(self, tick: int) -> None:
        if self.handle is not None:
            self.handle.cancel()
        self.armed = tick
        delay = max(0.0, tick / 1000 - time.perf_counter())
        self.handle = asyncio.get_running_loop().call_later(delay, self._fire)

    def _fire(self) -> None:
        self.handle = None
        # One tick of slack: uvloop may fire a little early, and a bucket left
        # for a re-arm of 0 ms would spin the loop until the clock turns.
        now = int(time.perf_counter() * 1000) + 1
        ticks = self.ticks
        while ticks and ticks[0] <= now:
            for w, run in self.buckets.pop(heapq.heappop(ticks)):
                w.wake(run)
        if ticks and self.handle is None:
            self._arm(ticks[0])

    def close(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
        self.buckets.clear()
        self.ticks.clear()


class Fleet:
    def __init__(self, cfg: FleetConfig, stats: Stats | None = None,
                 tally: Tally | None = None) -> None:  # fmt: skip
        self.cfg = cfg
        self.stats = stats if stats is not None else Stats()
        self.tally = tally if tally is not None else Tally()
        self.connect_gate = asyncio.Semaphore(cfg.connect_concurrency)
        self.stan_rng = random.SystemRandom()
        self.go = asyncio.Event()
        self.window_start = 0.0
        self.stop_at = 0.0
        self._pending = cfg.terminals
        self._all_signed_on = asyncio.Event()
        self.failed_sign_ons = 0
        self.pacer = Pacer()
        self.workers: list[Worker] = []

    def signed_on(self, ok: bool) -> None:
        if not ok:
            self.failed_sign_ons += 1
        self._pending -= 1
        if self._pending <= 0:
            self._all_signed_on.set()

    async def run(self, on_progress: Callable[[str], None] | None = None) -> Stats:
        """Sign the fleet on, open the window, run until the duration is over, settle."""
        raise_fd_limit()
        self.workers = workers = [Worker(self, i) for i in range(self.cfg.terminals)]
        tasks = [asyncio.create_task(w.main()) for w in workers]
        try:
            await asyncio.wait_for(self._all_signed_on.wait(), self.cfg.sign_on_timeout)
        except TimeoutError:
            self.stats.error("fleet: sign-on did not finish in time")
        # The generator's own collector must not show up as the switch's
        # latency: with thousands of connections a generation-1 collection
        # took 20-37 ms every ~3 s and a full one 169 ms, each charged to every
        # answer waiting behind it. So the fleet, signed on, is frozen out of
        # the collector's sight and automatic collection pauses for the run;
        # it finds little to collect anyway (a 15 s full-mix run at 1,000
        # terminals: 2,257 objects in 200 collections).
        gc_was_enabled = gc.isenabled()
        gc.collect()
        gc.freeze()
        gc.disable()
        self.window_start = time.perf_counter()
        self.stats.window_start = self.window_start + self.cfg.warmup
        self.stop_at = self.stats.window_start + self.cfg.duration
        self.stats.window_end = self.stop_at
        self.go.set()
        reporter = asyncio.create_task(self._progress(on_progress))
        watchdog = asyncio.create_task(self._watchdog(workers))
        try:
            # Bounded: the run, then time for the last answers, reconnects and settlement.
            _, late = await asyncio.wait(tasks, timeout=self.cfg.warmup + self.cfg.duration
                                         + 3 * self.cfg.timeout + 30)  # fmt: skip
            for task in late:
                task.cancel()
            if late:
                self.stats.error(f"fleet: {len(late)} terminals did not finish in time")
                await asyncio.wait(late)
        finally:
            reporter.cancel()
            watchdog.cancel()
            self.pacer.close()
            gc.unfreeze()
            if gc_was_enabled:
                gc.enable()
        return self.stats

    async def _watchdog(self, workers: list[Worker]) -> None:
        """Time out overdue sales of every worker's run (one timer instead of one per request)."""
        while True:
            await asyncio.sleep(WATCHDOG_S)
            now = time.perf_counter()
            for w in workers:
                if 0.0 < w.deadline <= now:
                    w.fail(Unanswered("timeout"))

    async def _progress(self, out: Callable[[str], None] | None) -> None:
        if out is None:
            return
        last_n, last_t = 0, time.perf_counter()
        while True:
            await asyncio.sleep(1.0)
            now = time.perf_counter()
            n = len(self.stats.latencies)
            recent = sorted(self.stats.latencies[last_n:])
            p99 = recent[int(0.99 * (len(recent) - 1))] * 1000 if recent else 0.0
            at = now - (self.stats.window_start or now)  # negative while warming up
            out(f"{at:6.1f}s  {(n - last_n) / (now - last_t):8.0f} resp/s"
                f"  p99 {p99:7.2f} ms  approved sales {self.stats.approved_sales}"
                f"  errors {sum(self.stats.errors.values())}")  # fmt: skip
            last_n, last_t = n, now


def progress_printer() -> Callable[[str], None]:
    """A live line on a terminal (rewritten in place), one line per update otherwise."""
    tty = sys.stderr.isatty()

    def out(line: str) -> None:
        sys.stderr.write(("\r" + line) if tty else (line + "\n"))
        sys.stderr.flush()

    return out


def install_uvloop() -> None:
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def run_fleet(cfg: FleetConfig, tally: Tally | None = None) -> Stats:
    """Run one fleet on a fresh uvloop event loop (the CLI entry points' helper)."""
    import uvloop

    async def go() -> Stats:
        fleet = Fleet(cfg, tally=tally)
        return await fleet.run(progress_printer() if cfg.progress else None)

    return uvloop.run(go())
