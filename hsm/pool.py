"""A pool of pipelined connections to one or more HSMs, with health checks and failover.

Each HSM address has a supervisor task that opens `pool_size` connections,
checks them with NC before putting the HSM in rotation, repeats NC every
`health_interval`, and on any failure takes the HSM out of rotation, closes
its connections and tries again after an exponential backoff (with jitter,
so several switches do not reconnect in step).

`request` sends a command on the least busy connection of the next HSM in
rotation. A request that hits a dead link, a protocol error or a timeout
takes that HSM out of rotation and is retried on another one (every command
the switch uses is safe to repeat: key generation, PIN translation and
verification, MAC). A request never waits longer than `attempts x timeout`
plus, when no HSM is in rotation, one `timeout` to wait for one to return.

Task ownership: `run` owns one supervisor per HSM; each supervisor owns its
connections' tasks; `open_hsm_pool` owns `run`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TypeVar

import trio

from hsm import codec, metrics
from hsm.cheap_metrics import count_and_observe
from hsm.codec import HsmCommandError, HsmProtocolError
from hsm.connection import HsmConnection, HsmLinkError, HsmTimeout
from hsm.local import LocalHsmConnection
from hsm.server import HsmServer

#: Where an HSM is: "host:port", (host, port), or a software HSM in this process.
Address = str | tuple[str, int] | HsmServer
Link = HsmConnection | LocalHsmConnection

log = logging.getLogger("hsm.client")

T = TypeVar("T")


_NODE_FAILURES = (
    OSError, trio.TooSlowError, HsmLinkError, HsmTimeout, HsmProtocolError, HsmCommandError,
)


# Commands that may be sent again after a failure that left their fate
# unknown (sent, no reply): none of them changes state in the HSM, so a repeat
# is harmless (A0 makes a second key and the first is never stored). A
# command not listed fails at once instead of being repeated.
SAFE_TO_RETRY = frozenset(
    {"NC", "B2", "A0", "A6", "A8", "BU", "BA", "CA", "CC", "DC", "EC", "DG", "JE", "JG",
     "M6", "M8"}
)  # fmt: skip


class _Command:
    """What a request needs of its command code, made once per code: its name,
    whether it may be retried, and `ok(seconds)`, which counts a request that
    succeeded and observes its latency. Codes are the client's own (see
    SAFE_TO_RETRY), so few. The metric children are made by the first request
    that ends, as before, so that no series shows on /metrics before a
    command has been counted in it."""

    __slots__ = ("name", "ok", "retry")

    def __init__(self, code: bytes) -> None:
        self.name = code.decode("ascii")
        self.retry = self.name in SAFE_TO_RETRY
        self.ok: Callable[[float], None] | None = None

    def count(self, result: str, seconds: float) -> None:
        """Count a request that did not succeed, or the first one that did."""
        record = count_and_observe(
            metrics.labelled(metrics.REQUESTS, self.name, result),
            metrics.labelled(metrics.LATENCY, self.name),
        )
        if result == "ok":
            self.ok = record
        record(seconds)


_COMMANDS: dict[bytes, _Command] = {}


class HsmUnavailable(Exception):
    """No HSM answered the request (all out of rotation, or every attempt failed)."""


def parse_address(address: Address) -> tuple[str, int] | HsmServer:
    if isinstance(address, tuple | HsmServer):
        return address
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"HSM address {address!r} is not host:port")
    return host, int(port)


class HsmNode:
    """One HSM: its connections and whether it is in rotation."""

    def __init__(self, pool: HsmPool, address: tuple[str, int] | HsmServer) -> None:
        self.pool = pool
        self.address = address
        self.name = "in-process" if isinstance(address, HsmServer) else f"{address[0]}:{address[1]}"
        self.up = False
        self.conns: list[Link] = []
        self._down = trio.Event()
        self._gauge_conns = metrics.POOL_CONNECTIONS.labels(self.name)
        self._gauge_up = metrics.HSM_UP.labels(self.name)
        self._gauge_up.set(0)
        self._gauge_conns.set(0)

    def pick(self) -> Link | None:
        best = None
        for conn in self.conns:
            if not conn.closed and (best is None or conn.in_flight < best.in_flight):
                best = conn
        return best

    def mark_down(self, reason: str, *, quiet: bool = False) -> None:
        if self.up and not quiet:
            log.warning("HSM %s out of rotation: %s", self.name, reason)
        self.up = False
        self._gauge_up.set(0)
        self._down.set()
        for conn in list(self.conns):
            conn.close()
        self.pool.changed()

    def _conn_closed(self, conn: Link, reason: str) -> None:
        if conn in self.conns:
            self.conns.remove(conn)
            self._gauge_conns.set(len(self.conns))
        if self.up:
            # "closed" is a cancellation (pool shutting down): not worth a warning.
            self.mark_down(reason, quiet=reason == "closed")

    async def supervise(self) -> None:
        pool = self.pool
        backoff = pool.backoff_min
        while True:
            self._down = trio.Event()
            async with trio.open_nursery() as nursery:
                # Failures are caught inside the nursery body: the connection
                # tasks never raise, so nothing arrives as an exception group.
                try:
                    await self._connect(nursery)
                    self.up = True
                    self._gauge_up.set(1)
                    log.info("HSM %s in rotation with %d connections", self.name, len(self.conns))
                    backoff = pool.backoff_min
                    pool.changed()
                    await self._health_loop()
                except _NODE_FAILURES as exc:
                    reason = str(exc) or type(exc).__name__
                    if self.up:
                        self.mark_down(reason)
                    else:
                        log.warning("HSM %s unavailable: %s", self.name, reason)
                nursery.cancel_scope.cancel()
            self.mark_down("supervisor restarting", quiet=True)
            self.conns.clear()
            self._gauge_conns.set(0)
            await trio.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, pool.backoff_max)

    async def _connect(self, nursery: trio.Nursery) -> None:
        pool = self.pool
        address = self.address
        # In process, a command runs inside its request: one link is enough.
        for _ in range(1 if isinstance(address, HsmServer) else pool.pool_size):
            conn: Link
            if isinstance(address, HsmServer):
                conn = LocalHsmConnection(address, self.name, self._conn_closed)
            else:
                with trio.fail_after(pool.connect_timeout):
                    stream = await trio.open_tcp_stream(*address)
                conn = HsmConnection(stream, pool.header_len, self.name, self._conn_closed)
            await nursery.start(conn.run)
            self.conns.append(conn)
            self._gauge_conns.set(len(self.conns))
        await self._probe()

    async def _probe(self) -> None:
        conn = self.pick()
        if conn is None:
            raise HsmLinkError("no open connection")
        reply = await conn.request(codec.nc(), self.pool.health_timeout)
        codec.decode_nc(reply)

    async def _health_loop(self) -> None:
        while True:
            with trio.move_on_after(self.pool.health_interval):
                await self._down.wait()
            if not self.up:
                return
            await self._probe()  # failures propagate to supervise()


class HsmPool:
    def __init__(
        self,
        addresses: Sequence[Address],
        *,
        header_len: int = 4,
        pool_size: int = 4,
        timeout: float = 5.0,
        command_timeouts: dict[str, float] | None = None,
        attempts: int | None = None,
        connect_timeout: float = 2.0,
        health_interval: float = 2.0,
        health_timeout: float | None = None,
        backoff_min: float = 0.1,
        backoff_max: float = 10.0,
    ) -> None:
        if not addresses:
            raise ValueError("at least one HSM address is needed")
        if header_len < 1:
            raise ValueError("header_len must be at least 1 to match pipelined replies")
        self.header_len = header_len
        self.pool_size = pool_size
        self.timeout = timeout
        self.command_timeouts = dict(command_timeouts or {})
        self.attempts = attempts if attempts is not None else max(2, len(addresses))
        self.connect_timeout = connect_timeout
        self.health_interval = health_interval
        # NC is answered at once by a healthy HSM: give it the command timeout.
        self.health_timeout = health_timeout if health_timeout is not None else timeout
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.nodes = [HsmNode(self, parse_address(a)) for a in addresses]
        self._rr = 0
        # trio's clock; run() replaces this with the clock's own method, which
        # skips the run-context lookup of trio.current_time (two per request).
        self._now: Callable[[], float] = trio.current_time
        self._changed = trio.Event()

    def changed(self) -> None:
        """Wake requests waiting for an HSM to come into rotation."""
        self._changed.set()
        self._changed = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._now = trio.lowlevel.current_clock().current_time
        async with trio.open_nursery() as nursery:
            for node in self.nodes:
                nursery.start_soon(node.supervise)
            task_status.started()

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until at least one HSM is in rotation (raises TooSlowError on timeout)."""
        with trio.fail_after(timeout if timeout is not None else self.timeout):
            while self._choose(()) is None:
                await self._changed.wait()

    def _choose(self, tried: Sequence[HsmNode]) -> HsmNode | None:
        nodes = self.nodes
        n = len(nodes)
        rr = self._rr
        node = nodes[rr]
        # The usual case, the loop's first turn without the loop: the next HSM
        # in turn is in rotation and not tried yet.
        if node.up and node.conns and node not in tried:
            self._rr = (rr + 1) % n
            return node
        fallback = None
        for i in range(n):
            node = nodes[(self._rr + i) % n]
            if node.up and node.conns:
                if node not in tried:
                    self._rr = (self._rr + i + 1) % n
                    return node
                fallback = fallback or node
        return fallback  # every HSM in rotation was tried already: use one again

    async def _node(self, tried: Sequence[HsmNode], timeout: float) -> HsmNode | None:
        node = self._choose(tried)
        if node is not None:
            return node
        with trio.move_on_after(timeout):
            while (node := self._choose(tried)) is None:
                await self._changed.wait()
        return node

    async def request(self, body: bytes, decode: Callable[[bytes], T]) -> T:
        """Send a command (code + fields) and decode its reply, with failover."""
        code = body[:2]
        command = _COMMANDS.get(code) or _COMMANDS.setdefault(code, _Command(code))
        name = command.name
        timeout = self.command_timeouts.get(name, self.timeout)
        now = self._now
        start = now()
        tried: tuple[HsmNode, ...] = ()  # a tuple: made anew only after a failure
        last: Exception | None = None
        result = "unavailable"
        try:
            for _ in range(self.attempts):
                # An HSM in rotation is the usual case: take it without the
                # coroutine of _node, which is only needed to wait for one.
                node = self._choose(tried)
                if node is None:
                    node = await self._node(tried, timeout)
                    if node is None:
                        break
                conn = node.pick()
                if conn is None:
                    continue
                try:
                    reply = await conn.request(body, timeout)
                    value = decode(reply)
                except HsmTimeout as exc:
                    result, last = "timeout", exc
                    node.mark_down(f"{name} timed out")
                except HsmLinkError as exc:
                    result, last = "link_error", exc
                    if not conn.closed:
                        node.mark_down(str(exc))
                except HsmProtocolError as exc:
                    result, last = "link_error", exc
                    node.mark_down(f"bad reply: {exc}")
                except HsmCommandError:
                    result = "hsm_error"
                    raise
                else:
                    result = "ok"
                    return value
                tried = (*tried, node)
                if not command.retry:
                    break
            raise HsmUnavailable(f"{name}: no HSM answered ({last})") from last
        finally:
            ok = command.ok
            if ok is not None and result == "ok":
                ok(now() - start)
            else:
                command.count(result, now() - start)


@asynccontextmanager
async def open_hsm_pool(
    addresses: Sequence[Address], *, wait: bool = True, **options: object
) -> AsyncIterator[HsmPool]:
    """Run a pool for the duration of the block; with `wait`, until an HSM is in rotation."""
    pool = HsmPool(addresses, **options)  # type: ignore[arg-type]
    failure: BaseException | None = None
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        try:
            if wait:
                await pool.wait_ready()
            yield pool
        except BaseException as exc:
            # Re-raised below, outside the nursery, so that the caller sees
            # its own exception and not an exception group around it.
            failure = exc
        finally:
            nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure
